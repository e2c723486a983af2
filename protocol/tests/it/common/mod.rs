//! Fixtures shared by the protocol integration tests: the fixed golden messages, messages
//! with every field full, the golden-file reader and test-data paths.
#![allow(
    unreachable_pub,
    clippy::panic,
    clippy::unwrap_used,
    reason = "shared by several test crates, each using a part; fixtures fail loudly"
)]

use ekattest_protocol::error::RejectCode;
use ekattest_protocol::limits::{
    ATTEST_MAX, ATTRIBUTE_VALUE_MAX, ATTRIBUTES_MAX, CREDENTIAL_BLOB_MAX, EK_CERT_MAX,
    EK_CHAIN_MAX, ENCRYPTED_SECRET_MAX, MESSAGE_MAX, METHODS_MAX, NODE_ID_MAX, SIGNATURE_MAX,
    SIGNER_CERT_MAX, SPIFFE_ID_MAX, SVID_KEY_MAX, SVID_MAX, TPM_PUBLIC_MAX, TPM_SIGNATURE_MAX,
};
use ekattest_protocol::msg::{
    Accepted, Answer, Attribute, AttributeName, Challenge, Downlink, KeyCertify, Login, Method,
    Outcome, Rejected, SessionId, Uplink,
};
use heapless::{String, Vec};

/// `N` bytes of `byte`.
pub fn filled<const N: usize>(byte: u8) -> Vec<u8, N> {
    let mut v = Vec::new();
    v.resize(N, byte).unwrap();
    v
}

/// A bounded vector holding `data`.
pub fn bytes<T: Clone, const N: usize>(data: &[T]) -> Vec<T, N> {
    Vec::from_slice(data).unwrap()
}

pub fn text<const N: usize>(s: &str) -> String<N> {
    String::try_from(s).unwrap()
}

/// `N` bytes of ASCII `ch`.
pub fn filled_text<const N: usize>(ch: char) -> String<N> {
    let mut s = String::new();
    for _ in 0..N {
        s.push(ch).unwrap();
    }
    s
}

// ---- golden messages: small, every field set, one field long enough for a 2-byte varint ----

pub fn golden_login() -> Uplink {
    Uplink::Login(Login {
        methods: bytes(&[Method::TpmEk]),
        ek_public: bytes(&[0x01, 0x02, 0x03]),
        ek_cert: Some(bytes(&[0x30, 0x00])),
        ek_chain: bytes(&[0x5a; 130]),
        ak_public: bytes(&[0x04, 0x05]),
        svid_key: Some(bytes(&[0x06])),
        key_certify: Some(KeyCertify {
            public: bytes(&[0x07]),
            attest: bytes(&[0x08, 0x09]),
            signature: bytes(&[0x0a]),
        }),
        nonce: core::array::from_fn(|i| 0x10 + i as u8),
        signer_hint: Some([0x2a; 8]),
    })
}

pub fn golden_answer() -> Uplink {
    Uplink::Answer(Answer {
        session: SessionId(core::array::from_fn(|i| i as u8)),
        mac: core::array::from_fn(|i| 0x40 + i as u8),
        pop: Some(bytes(&[0x30, 0x01, 0x02])),
    })
}

pub fn golden_challenge() -> Downlink {
    Downlink::Challenge(Challenge {
        session: SessionId(core::array::from_fn(|i| 0xa0 + i as u8)),
        node: text("node-1"),
        credential_blob: bytes(&[0x00, 0x02, 0xca, 0xfe]),
        encrypted_secret: bytes(&[0x00, 0x01, 0x5e]),
        expires_in: 300,
        transcript: core::array::from_fn(|i| 0x70 + i as u8),
        signer: bytes(&[0x30, 0x02, 0x05, 0x00]),
        signature: bytes(&[0x30, 0x00]),
    })
}

pub fn golden_accepted() -> Downlink {
    Downlink::Result(Outcome::Accepted(Accepted {
        spiffe_id: text("spiffe://td/agent"),
        attributes: bytes(&[
            Attribute {
                name: AttributeName::PublicHash,
                value: text("ab"),
            },
            Attribute {
                name: AttributeName::Manufacturer,
                value: text("id:4E544300"),
            },
        ]),
        svid: bytes(&[0x30, 0x03]),
        signature: bytes(&[0x51, 0x52]),
    }))
}

pub fn golden_rejected() -> Downlink {
    Downlink::Result(Outcome::Rejected(Rejected::new(RejectCode::SecretMismatch)))
}

// ---- messages with every field at its limit ----

pub fn max_login() -> Uplink {
    Uplink::Login(Login {
        methods: core::iter::repeat_n(Method::TpmEk, METHODS_MAX).collect(),
        ek_public: filled::<TPM_PUBLIC_MAX>(0xe1),
        ek_cert: Some(filled::<EK_CERT_MAX>(0xe2)),
        ek_chain: filled::<EK_CHAIN_MAX>(0xe3),
        ak_public: filled::<TPM_PUBLIC_MAX>(0xe4),
        svid_key: Some(filled::<SVID_KEY_MAX>(0xe5)),
        key_certify: Some(KeyCertify {
            public: filled::<TPM_PUBLIC_MAX>(0xe6),
            attest: filled::<ATTEST_MAX>(0xe7),
            signature: filled::<TPM_SIGNATURE_MAX>(0xe8),
        }),
        nonce: [0xe9; 16],
        signer_hint: Some([0xea; 8]),
    })
}

pub fn max_answer() -> Uplink {
    Uplink::Answer(Answer {
        session: SessionId([0xff; 16]),
        mac: [0xa1; 32],
        pop: Some(filled::<SIGNATURE_MAX>(0xa2)),
    })
}

pub fn max_challenge() -> Downlink {
    Downlink::Challenge(Challenge {
        session: SessionId([0xff; 16]),
        node: filled_text::<NODE_ID_MAX>('n'),
        credential_blob: filled::<CREDENTIAL_BLOB_MAX>(0xc1),
        encrypted_secret: filled::<ENCRYPTED_SECRET_MAX>(0xc2),
        expires_in: u32::MAX,
        transcript: [0xc3; 32],
        signer: filled::<SIGNER_CERT_MAX>(0xc4),
        signature: filled::<SIGNATURE_MAX>(0xc5),
    })
}

pub fn max_accepted() -> Downlink {
    let last = *AttributeName::ALL.last().unwrap();
    Downlink::Result(Outcome::Accepted(Accepted {
        spiffe_id: filled_text::<SPIFFE_ID_MAX>('s'),
        attributes: core::iter::repeat_n(
            Attribute {
                name: last,
                value: filled_text::<ATTRIBUTE_VALUE_MAX>('v'),
            },
            ATTRIBUTES_MAX,
        )
        .collect(),
        svid: filled::<SVID_MAX>(0xd1),
        signature: filled::<SIGNATURE_MAX>(0xd2),
    }))
}

pub fn max_rejected() -> Downlink {
    Downlink::Result(Outcome::Rejected(Rejected {
        code: *RejectCode::ALL.last().unwrap(),
        message: filled_text::<MESSAGE_MAX>('m'),
    }))
}

// ---- files ----

/// Reads an annotated hex file: `#` starts a comment, whitespace is ignored.
pub fn read_hex(path: &str) -> std::vec::Vec<u8> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("golden file {path} is missing or unreadable: {e}"));
    let digits: std::string::String = text
        .lines()
        .map(|line| line.split('#').next().unwrap_or(""))
        .flat_map(|line| line.chars().filter(|c| !c.is_whitespace()))
        .collect();
    hex::decode(&digits).unwrap_or_else(|e| panic!("golden file {path} is not hex: {e}"))
}

/// Path of a file in the shared test data (`../shared/testdata` beside the repository).
pub fn testdata(relative: &str) -> std::string::String {
    format!(
        "{}/../../shared/testdata/{relative}",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// Reads a shared test-data file, failing loudly if it is missing.
pub fn read_testdata(relative: &str) -> std::vec::Vec<u8> {
    let path = testdata(relative);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "test data {path} is missing ({e}); it lives in ../shared/testdata beside the \
             repository and is never copied into it"
        )
    })
}
