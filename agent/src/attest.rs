//! The agent's half of an attestation: the Login it sends and the Answer to a Challenge.
//!
//! Sans-IO apart from the TPM: the MQTT loop ([`crate::daemon`]) and the fleet demo move the
//! messages; this module only turns TPM state into protocol messages and back. The Answer
//! carries a MAC keyed with the recovered secret over the Login transcript
//! ([`sign::answer_mac`]), never the secret. With an SVID key, the Login carries its
//! SubjectPublicKeyInfo and the Answer its proof of possession (an ECDSA signature over
//! [`sign::pop_signed_bytes`]). The caller checks the Challenge's signature and transcript
//! before [`answer`] touches the TPM. It never logs the recovered secret.

use crate::ecdsa::SigningKey;
use ekattest_protocol::heapless;
use ekattest_protocol::limits::{EK_CHAIN_MAX, NONCE_LEN, SIGNER_HINT_LEN};
use ekattest_protocol::msg::{Answer, Challenge, KeyCertify, Login, Method};
use ekattest_protocol::sign::{self, Transcript};

use crate::tpm::Transport;
use crate::tpm::activate::{self, Credential, CredentialError};
use crate::tpm::ak::{Ak, AkOptions};
use crate::tpm::commands::Tpm;
use crate::tpm::ek::Ek;
use crate::tpm::key::{self, CertifiedKey, TpmKey};

/// The key whose possession the Answer proves.
#[derive(Debug, Clone, Copy)]
pub enum PopKey<'a> {
    /// A software key in the agent's memory (`svid-key: software`).
    Software(&'a SigningKey),
    /// A key in the TPM (`svid-key: tpm`): TPM2_Sign.
    Tpm(&'a TpmKey),
}

/// Why a Login could not be built or a Challenge not answered.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    /// A TPM structure or certificate is larger than the protocol carries.
    #[error("{what} is {len} bytes, more than the protocol's {limit}-byte limit")]
    TooLarge {
        /// Which field.
        what: &'static str,
        /// Its size.
        len: usize,
        /// The limit in `ekattest_protocol::limits`.
        limit: usize,
    },
    /// The Challenge's credential is malformed (a broken or hostile server or broker).
    #[error("the server's challenge is malformed")]
    Challenge(#[source] CredentialError),
    /// The TPM refused the credential or failed.
    #[error("ActivateCredential failed")]
    Tpm(#[source] crate::tpm::Error),
    /// The MAC could not be computed (a node id longer than the protocol allows).
    #[error("cannot compute the Answer's MAC")]
    Mac(#[source] ekattest_protocol::EncodeError),
    /// The TPM-resident SVID key could not sign the proof of possession.
    #[error("the TPM could not sign with the SVID key")]
    TpmKey(#[source] crate::tpm::Error),
    /// The software SVID key could not sign the proof of possession.
    #[error("cannot sign the proof of possession: {0}")]
    Sign(&'static str),
}

fn bounded<const N: usize>(
    what: &'static str,
    bytes: &[u8],
) -> Result<heapless::Vec<u8, N>, AttestError> {
    heapless::Vec::from_slice(bytes).map_err(|_| AttestError::TooLarge {
        what,
        len: bytes.len(),
        limit: N,
    })
}

/// Builds the Login for `ek` (with the chain certificates found in NV) and `ak`, asking for
/// an SVID for `svid_key` (DER SubjectPublicKeyInfo) if given, with a fresh `nonce` and the
/// hint of the signer certificate the agent holds.
///
/// # Errors
/// [`AttestError::TooLarge`] if a structure exceeds the protocol's limits.
pub fn login(
    ek: &Ek,
    chain: &[Vec<u8>],
    ak: &Ak,
    svid_key: Option<&[u8]>,
    nonce: [u8; NONCE_LEN],
    signer_hint: Option<[u8; SIGNER_HINT_LEN]>,
) -> Result<Login, AttestError> {
    let chain_len: usize = chain.iter().map(Vec::len).sum();
    if chain_len > EK_CHAIN_MAX {
        return Err(AttestError::TooLarge {
            what: "EK certificate chain",
            len: chain_len,
            limit: EK_CHAIN_MAX,
        });
    }
    let mut ek_chain = heapless::Vec::new();
    for cert in chain {
        // Cannot fail: the total was checked above.
        let _ = ek_chain.extend_from_slice(cert);
    }
    let mut methods = heapless::Vec::new();
    let _ = methods.push(Method::TpmEk);
    Ok(Login {
        methods,
        ek_public: bounded("EK public area", &ek.public)?,
        ek_cert: ek
            .certificate
            .as_deref()
            .map(|c| bounded("EK certificate", c))
            .transpose()?,
        ek_chain,
        ak_public: bounded("AK public area", &ak.public)?,
        svid_key: svid_key.map(|k| bounded("SVID key", k)).transpose()?,
        key_certify: None,
        nonce,
        signer_hint,
    })
}

/// Makes `login` ask for an SVID for the TPM-resident `key`: its SubjectPublicKeyInfo as the
/// `svid_key`, and the AK's certification of it as `key_certify`.
///
/// # Errors
/// [`AttestError::TooLarge`] if a structure exceeds the protocol's limits.
pub fn with_certified_key(login: &mut Login, key: &CertifiedKey) -> Result<(), AttestError> {
    login.svid_key = Some(bounded("SVID key", key.key.spki())?);
    login.key_certify = Some(KeyCertify {
        public: bounded("SVID key public area", key.key.public())?,
        attest: bounded("key certification", &key.certification.attest)?,
        signature: bounded("key certification signature", &key.certification.signature)?,
    });
    Ok(())
}

/// Opens `challenge` with the TPM (ActivateCredential with this AK and `ek`) and returns the
/// Answer: the MAC keyed with the recovered secret over `transcript` (the Login's), the
/// session and the node, and, with `svid_key` (the private half of the Login's `svid_key`),
/// the proof of possession (signed in the TPM for a [`PopKey::Tpm`]). Call it only for a Challenge whose signature and transcript
/// verified.
///
/// # Errors
/// [`AttestError::Challenge`] for a malformed credential, [`AttestError::Tpm`] if the TPM
/// refuses it (`TPM_RC_INTEGRITY (0x1df)`: made for another AK or EK).
pub fn answer<T: Transport>(
    tpm: &mut Tpm<T>,
    ek: &Ek,
    ak: &AkOptions,
    challenge: &Challenge,
    transcript: &Transcript,
    svid_key: Option<PopKey<'_>>,
) -> Result<Answer, AttestError> {
    let credential =
        Credential::from_tpm2b(&challenge.credential_blob, &challenge.encrypted_secret)
            .map_err(AttestError::Challenge)?;
    let secret = activate::activate(tpm, ek, ak, &credential).map_err(AttestError::Tpm)?;
    match svid_key {
        None => answer_with_secret(&secret, challenge, transcript, None),
        Some(PopKey::Software(k)) => answer_with_secret(&secret, challenge, transcript, Some(k)),
        Some(PopKey::Tpm(k)) => {
            let mut answer = answer_with_secret(&secret, challenge, transcript, None)?;
            let message = sign::pop_signed_bytes(transcript, &challenge.session, &answer.mac);
            let der = key::sign(tpm, k, &message).map_err(AttestError::TpmKey)?;
            answer.pop = Some(bounded("proof of possession", &der)?);
            Ok(answer)
        }
    }
}

/// The Answer for a `secret` recovered from `challenge` (by the TPM, or by a software TPM in
/// the fleet's load generator).
///
/// # Errors
/// [`AttestError::Mac`] if the challenge's node id exceeds the protocol limit.
pub fn answer_with_secret(
    secret: &[u8],
    challenge: &Challenge,
    transcript: &Transcript,
    svid_key: Option<&SigningKey>,
) -> Result<Answer, AttestError> {
    let mac = sign::answer_mac(secret, transcript, &challenge.session, &challenge.node)
        .map_err(AttestError::Mac)?;
    let pop = match svid_key {
        None => None,
        Some(key) => {
            let message = sign::pop_signed_bytes(transcript, &challenge.session, &mac);
            let signature = key.sign(&message).map_err(AttestError::Sign)?;
            Some(bounded("proof of possession", &signature)?)
        }
    };
    Ok(Answer {
        session: challenge.session,
        mac,
        pop,
    })
}
