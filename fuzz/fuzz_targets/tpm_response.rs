//! Fuzz target `tpm_response`: the agent's TPM command layer (`agent/src/tpm/commands.rs`)
//! and the flows above it, fed arbitrary TPM response bytes.
//!
//! The input is a stream of responses, each as long as its header's size field says (a
//! single response is a valid input). It is replayed three ways:
//! 1. `Replay`: a lenient fake transport that hands every command the next response cut to
//!    any length (shorter than a header, or disagreeing with its size field), as a broken
//!    driver might; every parsing command runs on its own fresh `Tpm` over the whole input.
//! 2. The real byte-stream transport (`Stream`, as used for swtpm) over the input, driving EK
//!    discovery, then ActivateCredential for the first EK found, then the AK.
//! 3. The agent's own TIS driver (`tis::Tis`, as used for `spi:` and `tis-mmio:`) over fake
//!    TIS registers whose every read (DID_VID, TPM_ACCESS, TPM_STS with its status bits and
//!    burstCount, the FIFO's response bytes) is the next bytes of the input, running the same
//!    flows as 2 with 1 ms timeouts. Here the input is register contents, not responses;
//!    `seeds/tpm_response/tis-*` are the `success` seeds in that form.
//!
//! Invariants: nothing panics; retries stay within MAX_ATTEMPTS and the handle walk within
//! the input; successful results are consistent with the request (NV index, NV read length,
//! TPM2B size prefixes, EKs whose public area, Name and hash agree). Through TIS: no hang
//! (every wait ends at its timeout or when the input runs out), the driver never writes more
//! command bytes than the command has, and a successful exchange wrote the whole command and
//! read exactly the response its header declares.
#![no_main]

use std::cell::Cell;
use std::io::{self, Cursor, Read, Write};
use std::rc::Rc;
use std::time::Duration;

use ekattest_agent::tpm::activate::{self, Credential};
use ekattest_agent::tpm::ak::{self, AkOptions};
use ekattest_agent::tpm::commands::{
    Auth, MAX_ATTEMPTS, PT_NV_BUFFER_MAX, RH_ENDORSEMENT, RH_OWNER, Tpm,
};
use ekattest_agent::tpm::ek;
use ekattest_agent::tpm::session::Session;
use ekattest_agent::tpm::stream::{FromStd, Stream};
use ekattest_agent::tpm::tis::regs::DATA_FIFO;
use ekattest_agent::tpm::tis::{Tis, TisRegisters, Timeouts};
use ekattest_agent::tpm::{FRAME_MAX, HEADER_LEN, Transport, TransportError};
use ekattest_protocol::tpm::public::Public;
use libfuzzer_sys::fuzz_target;

/// Hands out consecutive responses from the input, each cut to its header's size field (or
/// to what is left); an exhausted input is a transport error.
struct Replay<'a> {
    rest: &'a [u8],
    calls: usize,
}

impl Transport for Replay<'_> {
    fn transact(&mut self, cmd: &[u8], rsp: &mut [u8; FRAME_MAX]) -> Result<usize, TransportError> {
        assert!(
            cmd.len() >= HEADER_LEN && cmd.len() <= FRAME_MAX,
            "command of {} bytes",
            cmd.len()
        );
        self.calls += 1;
        if self.rest.is_empty() {
            return Err(TransportError::ShortResponse {
                device: "fuzz".to_owned(),
                len: 0,
            });
        }
        let declared = self.rest.get(2..6).map_or(usize::MAX, |s| {
            usize::try_from(u32::from_be_bytes([s[0], s[1], s[2], s[3]])).unwrap_or(usize::MAX)
        });
        let n = declared.min(self.rest.len()).min(FRAME_MAX);
        let (now, later) = self.rest.split_at(n);
        rsp[..n].copy_from_slice(now);
        self.rest = later;
        Ok(n)
    }
}

fn replay(data: &[u8]) -> Tpm<Replay<'_>> {
    let mut tpm = Tpm::new(Replay {
        rest: data,
        calls: 0,
    })
    .with_sleep(|_| {});
    tpm.set_nv_chunk(Some(16));
    tpm
}

/// Checks the command layer made at most `max` transport calls.
fn calls_at_most(tpm: &mut Tpm<Replay<'_>>, max: usize, what: &str) {
    let calls = tpm.transport_mut().calls;
    assert!(
        calls <= max,
        "{what}: {calls} transport calls, at most {max} expected"
    );
}

/// A TPM2B including its size prefix.
fn assert_tpm2b(bytes: &[u8], what: &str) {
    assert!(bytes.len() >= 2, "{what}: no size prefix");
    let size = usize::from(u16::from_be_bytes([bytes[0], bytes[1]]));
    assert_eq!(
        size + 2,
        bytes.len(),
        "{what}: size prefix disagrees with the length"
    );
}

/// Every parsing command on its own `Tpm` over the whole input.
fn each_command(data: &[u8]) {
    let attempts = MAX_ATTEMPTS as usize;
    // Each page of the handle walk consumes a response of at least a header.
    let pages = data.len() / HEADER_LEN + 1;

    let mut t = replay(data);
    if let Ok(handles) = t.handles(0x8100_0000) {
        assert!(handles.len() <= 4096, "{} handles", handles.len());
    }
    calls_at_most(&mut t, pages * attempts, "handles");

    let mut t = replay(data);
    let _ = t.property(PT_NV_BUFFER_MAX);
    calls_at_most(&mut t, attempts, "property");

    let mut t = replay(data);
    if let Ok(nv) = t.nv_read_public(0x01C0_0002) {
        assert_eq!(nv.index, 0x01C0_0002);
    }
    calls_at_most(&mut t, attempts, "nv_read_public");

    // Chunks of 16 (set_nv_chunk): 3 reads for 40 bytes.
    let mut t = replay(data);
    if let Ok(bytes) = t.nv_read(0x01C0_0002, 40) {
        assert_eq!(bytes.len(), 40);
    }
    calls_at_most(&mut t, 3 * attempts, "nv_read");

    let mut t = replay(data);
    if let Ok(obj) = t.read_public(0x8101_0001) {
        assert_tpm2b(&obj.public, "read_public outPublic");
    }
    calls_at_most(&mut t, attempts, "read_public");

    let mut t = replay(data);
    let template = AkOptions::default().template();
    if let Ok((_, obj)) = t.create_primary(RH_OWNER, &template) {
        assert_tpm2b(&obj.public, "create_primary outPublic");
    }
    calls_at_most(&mut t, attempts, "create_primary");

    let mut t = replay(data);
    let _ = t.start_policy_session(0x000b);
    calls_at_most(&mut t, attempts, "start_policy_session");

    let mut t = replay(data);
    let _ = t.policy_secret(RH_ENDORSEMENT, 0x0300_0000);
    calls_at_most(&mut t, attempts, "policy_secret");

    let mut t = replay(data);
    let got = t.activate_credential(
        (0x8000_0000, Auth::Password),
        (0x8000_0001, Auth::Policy(0x0300_0000)),
        &[0x00, 0x20, 1, 2],
        &[0x5e; 16],
    );
    if let Ok(secret) = got {
        assert!(
            secret.len() <= data.len(),
            "secret longer than the response"
        );
    }
    calls_at_most(&mut t, attempts, "activate_credential");

    // The salted session and the encrypted ActivateCredential (parameter encryption): the
    // StartAuthSession response and the response's authorization area are parsed from the
    // input; no input can carry a valid HMAC under a session key it does not know, so the
    // encrypted path must never return a secret.
    let mut t = replay(data);
    let _ = t.start_salted_session(0x8101_0002, &p256_generator_public());
    calls_at_most(&mut t, attempts, "start_salted_session");

    let mut t = replay(data);
    if let Ok(session) = Session::new(0x0200_0000, &[7; 32], &[1; 32], &[2; 32]) {
        let name = [0x00, 0x0b, 0xaa, 0xbb];
        let got = t.activate_credential_encrypted(
            (0x8000_0000, &name),
            (0x8000_0001, &name, Auth::Policy(0x0300_0000)),
            &session,
            &[0x00, 0x20, 1, 2],
            &[0x5e; 16],
        );
        assert!(got.is_err(), "an encrypted response verified without the session key");
    }
    calls_at_most(&mut t, attempts, "activate_credential_encrypted");

    let mut t = replay(data);
    let _ = t.startup_clear();
    let _ = t.flush_context(0x8000_0000);
    calls_at_most(&mut t, 2 * attempts, "startup + flush");
}

/// An in-memory TPM socket: reads come from the input, writes are discarded.
struct Peer<'a>(Cursor<&'a [u8]>);

impl Read for Peer<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Peer<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// FIFO bytes moved through the fake TIS registers during one command.
#[derive(Default)]
struct Fifo {
    written: Cell<usize>,
    read: Cell<usize>,
}

/// TIS registers whose reads are the next bytes of the input (an exhausted input is an I/O
/// error); writes are accepted and FIFO bytes counted.
struct TisFeed<'a> {
    rest: &'a [u8],
    fifo: Rc<Fifo>,
}

impl TisRegisters for TisFeed<'_> {
    fn read(&mut self, _locality: u8, reg: u16, buf: &mut [u8]) -> io::Result<()> {
        let Some((now, later)) = self.rest.split_at_checked(buf.len()) else {
            self.rest = &[];
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "fuzz input exhausted",
            ));
        };
        buf.copy_from_slice(now);
        self.rest = later;
        if reg == DATA_FIFO {
            self.fifo.read.set(self.fifo.read.get() + buf.len());
        }
        Ok(())
    }

    fn write(&mut self, _locality: u8, reg: u16, data: &[u8]) -> io::Result<()> {
        if reg == DATA_FIFO {
            self.fifo.written.set(self.fifo.written.get() + data.len());
        }
        Ok(())
    }
}

/// The TIS driver with the per-command invariants checked.
struct Checked<'a> {
    tis: Tis<TisFeed<'a>>,
    fifo: Rc<Fifo>,
}

impl Transport for Checked<'_> {
    fn transact(&mut self, cmd: &[u8], rsp: &mut [u8; FRAME_MAX]) -> Result<usize, TransportError> {
        self.fifo.written.set(0);
        self.fifo.read.set(0);
        let result = self.tis.transact(cmd, rsp);
        let written = self.fifo.written.get();
        assert!(
            written <= cmd.len(),
            "wrote {written} FIFO bytes for a {}-byte command",
            cmd.len()
        );
        if let Ok(n) = result {
            assert_eq!(written, cmd.len(), "success without sending the whole command");
            assert!((HEADER_LEN..=FRAME_MAX).contains(&n), "response of {n} bytes");
            let declared = u32::from_be_bytes([rsp[2], rsp[3], rsp[4], rsp[5]]);
            assert_eq!(declared as usize, n, "response length disagrees with its header");
            assert_eq!(self.fifo.read.get(), n, "read a different number of FIFO bytes");
        }
        result
    }
}

/// Timeouts short enough that a status the input never satisfies cannot stall the fuzzer.
const TINY: Timeouts = Timeouts {
    a: Duration::from_millis(1),
    b: Duration::from_millis(1),
    c: Duration::from_millis(1),
    d: Duration::from_millis(1),
    command: Duration::from_millis(1),
};

/// Opens the TIS driver over the input as register contents and runs the flows.
fn tis(data: &[u8]) {
    let fifo = Rc::new(Fifo::default());
    let feed = TisFeed {
        rest: data,
        fifo: fifo.clone(),
    };
    if let Ok(tis) = Tis::open(feed, "fuzz-tis", TINY) {
        let info = tis.info();
        assert!(info.vendor_id != 0xFFFF || info.device_id != 0xFFFF);
        let _ = info.vendor();
        flows(Checked { tis, fifo });
    }
}

/// TPM2B_PUBLIC of an ECC P-256 decrypt key whose point is the curve's generator (a valid
/// point, so a salt can be made for it).
fn p256_generator_public() -> Vec<u8> {
    let x = hex::decode("6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296");
    let y = hex::decode("4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5");
    let (Ok(x), Ok(y)) = (x, y) else {
        return Vec::new();
    };
    let mut t = vec![0x00, 0x23, 0x00, 0x0b, 0x00, 0x03, 0x00, 0xb2, 0x00, 0x00];
    t.extend([0x00, 0x06, 0x00, 0x80, 0x00, 0x43, 0x00, 0x10, 0x00, 0x03, 0x00, 0x10]);
    for c in [x, y] {
        t.extend([0x00, 0x20]);
        t.extend(c);
    }
    let mut out = u16::try_from(t.len()).unwrap_or(0).to_be_bytes().to_vec();
    out.extend(t);
    out
}

/// Discovery, ActivateCredential and the AK over a real transport.
fn flows<T: Transport>(transport: T) {
    let mut tpm = Tpm::new(transport).with_sleep(|_| {});
    let opts = AkOptions::default();
    if let Ok(found) = ek::discover(&mut tpm) {
        assert!(!found.eks.is_empty(), "discovery succeeded without an EK");
        for e in &found.eks {
            let p = Public::decode(&e.public)
                .unwrap_or_else(|err| panic!("discovered EK public does not decode: {err}"));
            let hash = p.key.public_hash();
            assert_eq!(
                hash,
                Ok(e.public_hash),
                "EK hash disagrees with its public area"
            );
            assert_eq!(e.nv_index.is_some(), e.certificate.is_some());
            let _ = e.needs_policy();
        }
        let credential = Credential {
            id_object: vec![0x00, 0x20, 0xab, 0xcd],
            secret: vec![0x5e; 32],
        };
        // With parameter encryption (the default) and without (the plain password session).
        let _ = activate::activate(&mut tpm, &found.eks[0], &opts, &credential);
        let plain = AkOptions {
            parameter_encryption: false,
            ..opts
        };
        let _ = activate::activate(&mut tpm, &found.eks[0], &plain, &credential);
    }
    if let Ok(a) = ak::read(&mut tpm, &opts) {
        let p = Public::decode(&a.public)
            .unwrap_or_else(|err| panic!("AK public does not decode: {err}"));
        assert_eq!(
            p.name().ok().as_deref(),
            Some(&a.name[..]),
            "AK Name mismatch"
        );
    }
    let _ = tpm.flush_leftovers();
}

fuzz_target!(|data: &[u8]| {
    each_command(data);
    flows(Stream::new(FromStd::new(Peer(Cursor::new(data))), "fuzz"));
    tis(data);
    // The challenge credential file format the agent reads (`activate --credential`).
    if let Ok(c) = Credential::decode_tpm2_tools(data) {
        assert_eq!(
            c.encode_tpm2_tools(),
            data,
            "credential file does not round-trip"
        );
    }
});
