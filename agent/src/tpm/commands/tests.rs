//! Unit tests for the command layer against an in-memory fake TPM.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::{self, Cursor, Read, Write};
use std::rc::Rc;

use super::*;
use crate::tpm::stream::{FromStd, Stream};
use crate::tpm::templates::AK_P256;
use crate::tpm::{TransportError, rc::FAILURE};

const CC_FLUSH: u32 = 0x165;
const CC_CREATE_PRIMARY: u32 = 0x131;
const CC_NV_READ: u32 = 0x14E;
const CC_GET_CAP: u32 = 0x17A;
const CC_ACTIVATE: u32 = 0x147;
const CC_STARTUP: u32 = 0x144;

fn frame(tag: u16, rc: u32, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&tag.to_be_bytes());
    v.extend_from_slice(&u32::try_from(10 + body.len()).unwrap().to_be_bytes());
    v.extend_from_slice(&rc.to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn error(rc: u32) -> Vec<u8> {
    frame(0x8001, rc, &[])
}

/// A session response frame: handles, parameterSize, params, one empty password ack per
/// session.
fn with_sessions(handles: &[u32], params: &[u8], sessions: usize) -> Vec<u8> {
    let mut body = Vec::new();
    for h in handles {
        body.extend_from_slice(&h.to_be_bytes());
    }
    body.extend_from_slice(&u32::try_from(params.len()).unwrap().to_be_bytes());
    body.extend_from_slice(params);
    for _ in 0..sessions {
        body.extend_from_slice(&[0, 0, 1, 0, 0]);
    }
    frame(0x8002, 0, &body)
}

fn cc(cmd: &[u8]) -> u32 {
    u32::from_be_bytes(cmd[6..10].try_into().unwrap())
}

/// A scriptable fake TPM: answers a few commands, records everything it was sent.
#[derive(Default)]
struct Fake {
    sent: Vec<Vec<u8>>,
    nv: BTreeMap<u32, Vec<u8>>,
    /// Answer every command with this code (failure mode).
    fail_all: Option<u32>,
    /// Answer the first N commands with this code, then behave.
    busy: Option<(u32, usize)>,
    /// Code returned by ActivateCredential.
    activate_rc: u32,
    /// Raw bytes returned for the next command instead of a computed answer.
    canned: Option<Vec<u8>>,
    nv_buffer_max: u32,
}

impl Fake {
    fn answer(&mut self, cmd: &[u8]) -> Vec<u8> {
        if let Some(c) = self.canned.take() {
            return c;
        }
        if let Some(rc) = self.fail_all {
            return error(rc);
        }
        if let Some((rc, n)) = self.busy.as_mut()
            && *n > 0
        {
            *n -= 1;
            return error(*rc);
        }
        match cc(cmd) {
            CC_STARTUP => error(0x100),
            CC_FLUSH => frame(0x8001, 0, &[]),
            CC_GET_CAP => {
                let prop = u32::from_be_bytes(cmd[14..18].try_into().unwrap());
                // properties: an unknown one (0x1ff) first, then the one asked for.
                let mut p = vec![0u8, 0, 0, 0, 6, 0, 0, 0, 2];
                p.extend_from_slice(&0x1ffu32.to_be_bytes());
                p.extend_from_slice(&7u32.to_be_bytes());
                p.extend_from_slice(&prop.to_be_bytes());
                p.extend_from_slice(&self.nv_buffer_max.to_be_bytes());
                frame(0x8001, 0, &p)
            }
            CC_NV_READ => {
                let index = u32::from_be_bytes(cmd[10..14].try_into().unwrap());
                let auth_size = u32::from_be_bytes(cmd[18..22].try_into().unwrap()) as usize;
                let p = &cmd[22 + auth_size..];
                let size = usize::from(u16::from_be_bytes([p[0], p[1]]));
                let offset = usize::from(u16::from_be_bytes([p[2], p[3]]));
                let data = &self.nv[&index];
                let chunk = &data[offset..(offset + size).min(data.len())];
                let mut params = u16::try_from(chunk.len()).unwrap().to_be_bytes().to_vec();
                params.extend_from_slice(chunk);
                with_sessions(&[], &params, 1)
            }
            CC_CREATE_PRIMARY => {
                // objectHandle, then a minimal but well-formed parameter area.
                let mut params = Vec::new();
                params.extend_from_slice(&[0, 4, 0, 0x23, 0, 0x0b]); // outPublic (truncated TPMT, fine here)
                params.extend_from_slice(&[0, 0]); // creationData
                params.extend_from_slice(&[0, 0]); // creationHash
                params.extend_from_slice(&[0x80, 0x21, 0x40, 0, 0, 1, 0, 0]); // ticket
                params.extend_from_slice(&[0, 2, 0, 0x0b]); // name
                with_sessions(&[0x8000_0000], &params, 1)
            }
            CC_ACTIVATE if self.activate_rc != 0 => error(self.activate_rc),
            CC_ACTIVATE => with_sessions(&[], &[0, 3, 1, 2, 3], 2),
            _ => error(0x143), // TPM_RC_COMMAND_CODE
        }
    }
}

#[derive(Clone, Default)]
struct Shared(Rc<RefCell<Fake>>);

impl Transport for Shared {
    fn transact(&mut self, cmd: &[u8], rsp: &mut [u8; FRAME_MAX]) -> Result<usize, TransportError> {
        let mut f = self.0.borrow_mut();
        f.sent.push(cmd.to_vec());
        let a = f.answer(cmd);
        rsp[..a.len()].copy_from_slice(&a);
        Ok(a.len())
    }
}

fn fake() -> (Shared, Tpm<Shared>) {
    let s = Shared::default();
    s.0.borrow_mut().nv_buffer_max = 1024;
    (s.clone(), Tpm::new(s).with_sleep(|_| {}))
}

fn sent_codes(s: &Shared) -> Vec<u32> {
    s.0.borrow().sent.iter().map(|c| cc(c)).collect()
}

#[test]
fn startup_accepts_already_initialized() {
    let (_, mut tpm) = fake();
    tpm.startup_clear().unwrap();
}

#[test]
fn failure_mode_is_a_clear_error_on_every_command() {
    let (s, mut tpm) = fake();
    s.0.borrow_mut().fail_all = Some(FAILURE);
    let errors = [
        tpm.startup_clear().unwrap_err(),
        tpm.handles(0x8100_0000).unwrap_err(),
        tpm.read_public(0x8101_0001).unwrap_err(),
        tpm.nv_read_public(0x01C0_0002).unwrap_err(),
        tpm.create_primary(RH_OWNER, &AK_P256.tpmt()).unwrap_err(),
    ];
    for e in errors {
        let msg = e.to_string();
        assert!(msg.contains("TPM_RC_FAILURE (0x101)"), "{msg}");
        assert!(msg.contains("failure mode"), "{msg}");
    }
}

#[test]
fn unknown_response_code_is_reported_in_hex() {
    let (s, mut tpm) = fake();
    s.0.borrow_mut().canned = Some(error(0xb7f));
    let e = tpm.flush_context(0x8000_0000).unwrap_err();
    let msg = e.to_string();
    assert!(msg.starts_with("TPM2_FlushContext failed: "), "{msg}");
    assert!(msg.contains("unknown response code (0xb7f)"), "{msg}");
    assert_eq!(e.response_code(), Some(ResponseCode(0xb7f)));
}

#[test]
fn retry_then_success_resends_the_same_bytes_with_backoff() {
    let s = Shared::default();
    s.0.borrow_mut().busy = Some((rc::RETRY, 2));
    let slept = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = slept.clone();
    let mut tpm = Tpm::new(s.clone()).with_sleep(move |d| log.lock().unwrap().push(d));
    tpm.flush_context(0x8000_0001).unwrap();
    let sent = &s.0.borrow().sent;
    assert_eq!(sent.len(), 3);
    assert!(sent.iter().all(|c| c == &sent[0]));
    assert_eq!(
        *slept.lock().unwrap(),
        vec![Duration::from_millis(10), Duration::from_millis(20)]
    );
}

#[test]
fn yielded_and_testing_are_retried_but_bounded() {
    for code in [rc::YIELDED, rc::TESTING, rc::RETRY] {
        let (s, mut tpm) = fake();
        s.0.borrow_mut().busy = Some((code, 100));
        let e = tpm.flush_context(1).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Busy {
                    attempts: MAX_ATTEMPTS,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(s.0.borrow().sent.len(), MAX_ATTEMPTS as usize);
    }
}

#[test]
fn short_response_from_a_transport_is_malformed_not_a_panic() {
    let (s, mut tpm) = fake();
    s.0.borrow_mut().canned = Some(vec![0x80, 0x01, 0, 0]);
    let e = tpm.flush_context(1).unwrap_err();
    assert!(matches!(e, Error::Malformed { .. }), "{e}");
}

/// A byte stream that answers with fixed bytes: exercises the stream transport's header
/// checks through the command layer.
struct Canned(Cursor<Vec<u8>>);
impl Read for Canned {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        self.0.read(b)
    }
}
impl Write for Canned {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn stream_errors_surface_with_the_command_name() {
    let short = Stream::new(
        FromStd::new(Canned(Cursor::new(vec![0x80, 0x01, 0, 0, 0]))),
        "fake-stream",
    );
    let e = Tpm::new(short).startup_clear().unwrap_err();
    let msg = crate::error::chain(&e);
    assert!(matches!(
        e,
        Error::Transport {
            source: TransportError::ShortResponse { .. },
            ..
        }
    ));
    assert!(
        msg.contains("TPM2_Startup") && msg.contains("fake-stream"),
        "{msg}"
    );

    let huge = Stream::new(
        FromStd::new(Canned(Cursor::new(frame(0x8001, 0, &[0; 8])[..6].to_vec()))),
        "f",
    );
    let e = Tpm::new(huge).startup_clear().unwrap_err();
    assert!(matches!(
        e,
        Error::Transport {
            source: TransportError::ShortResponse { .. },
            ..
        }
    ));

    let mut big = error(0);
    big[2..6].copy_from_slice(&100_000u32.to_be_bytes());
    let e = Tpm::new(Stream::new(FromStd::new(Canned(Cursor::new(big))), "f"))
        .startup_clear()
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Transport {
                source: TransportError::BadSize {
                    declared: 100_000,
                    ..
                },
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn nv_read_is_chunked_and_reassembled() {
    let data: Vec<u8> = (0..1500u32).map(|i| (i * 7 % 251) as u8).collect();
    for chunk in [None, Some(64), Some(1000), Some(1)] {
        let (s, mut tpm) = fake();
        s.0.borrow_mut().nv.insert(0x01C0_0002, data.clone());
        tpm.set_nv_chunk(chunk);
        let got = tpm.nv_read(0x01C0_0002, 1500).unwrap();
        assert_eq!(got, data, "chunk {chunk:?}");
        let reads = sent_codes(&s).iter().filter(|c| **c == CC_NV_READ).count();
        let per = usize::from(chunk.unwrap_or(1024));
        assert_eq!(reads, 1500usize.div_ceil(per), "chunk {chunk:?}");
    }
}

#[test]
fn nv_read_chunk_follows_the_tpm_buffer_max() {
    let data = vec![0x5a; 1600];
    let (s, mut tpm) = fake();
    s.0.borrow_mut().nv_buffer_max = 768;
    s.0.borrow_mut().nv.insert(7, data.clone());
    assert_eq!(tpm.nv_read(7, 1600).unwrap(), data);
    // 768 + 768 + 64, after one GetCapability that skipped an unknown property.
    let codes = sent_codes(&s);
    assert_eq!(codes.iter().filter(|c| **c == CC_NV_READ).count(), 3);
    assert_eq!(codes.iter().filter(|c| **c == CC_GET_CAP).count(), 1);
}

#[test]
fn nv_read_rejects_a_short_chunk() {
    let (s, mut tpm) = fake();
    s.0.borrow_mut().nv.insert(7, vec![1; 10]);
    let e = tpm.nv_read(7, 20).unwrap_err();
    assert!(matches!(e, Error::Malformed { .. }), "{e}");
}

#[test]
fn scope_flushes_tracked_handles_after_an_error() {
    let (s, mut tpm) = fake();
    s.0.borrow_mut().activate_rc = 0x1df;
    let result = {
        let mut scope = tpm.scope();
        let (ak, _) = scope
            .create_primary_tracked(RH_OWNER, &AK_P256.tpmt())
            .unwrap();
        scope.activate_credential(
            (ak, Auth::Password),
            (0x8101_0001, Auth::Password),
            &[0; 4],
            &[0; 4],
        )
    };
    let e = result.unwrap_err();
    assert!(e.to_string().contains("TPM_RC_INTEGRITY (0x1df)"), "{e}");
    let sent = s.0.borrow().sent.clone();
    let last = sent.last().unwrap();
    assert_eq!(cc(last), CC_FLUSH);
    assert_eq!(&last[10..14], &0x8000_0000u32.to_be_bytes());
}

#[test]
fn scope_forget_skips_consumed_handles() {
    let (s, mut tpm) = fake();
    {
        let mut scope = tpm.scope();
        scope.track(0x0300_0000);
        scope.track(0x8000_0001);
        scope.forget(0x0300_0000);
    }
    let flushed: Vec<_> =
        s.0.borrow()
            .sent
            .iter()
            .map(|c| c[10..14].to_vec())
            .collect();
    assert_eq!(flushed, vec![0x8000_0001u32.to_be_bytes().to_vec()]);
}

#[test]
fn activate_credential_returns_cert_info_and_checks_buffer_caps() {
    let (_, mut tpm) = fake();
    let out = tpm
        .activate_credential(
            (1, Auth::Password),
            (2, Auth::Policy(0x0300_0000)),
            &[0; 70],
            &[0; 256],
        )
        .unwrap();
    assert_eq!(out, vec![1, 2, 3]);
    let e = tpm
        .activate_credential((1, Auth::Password), (2, Auth::Password), &[0; 200], &[0; 4])
        .unwrap_err();
    assert!(matches!(e, Error::Build { .. }), "{e}");
}

#[test]
fn handles_follow_more_data_and_stay_bounded() {
    // Two pages, then a page that does not advance: must stop with an error, not loop.
    let page = |more: u8, hs: &[u32]| {
        let mut p = vec![more, 0, 0, 0, 1];
        p.extend_from_slice(&u32::try_from(hs.len()).unwrap().to_be_bytes());
        for h in hs {
            p.extend_from_slice(&h.to_be_bytes());
        }
        frame(0x8001, 0, &p)
    };
    let pages = Rc::new(RefCell::new(vec![
        page(0, &[0x8101_0020]),
        page(1, &[0x8101_0001, 0x8101_0016]),
    ]));
    let mut t = Tpm::new(Paged(pages.clone()));
    assert_eq!(
        t.handles(0x8100_0000).unwrap(),
        vec![0x8101_0001, 0x8101_0016, 0x8101_0020]
    );
    pages.borrow_mut().extend([page(1, &[5]), page(1, &[10])]);
    let e = t.handles(0x8100_0000).unwrap_err();
    assert!(e.to_string().contains("does not advance"), "{e}");
    pages
        .borrow_mut()
        .push(frame(0x8001, 0, &[0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]));
    let e = t.handles(0x8100_0000).unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
}

/// Answers with pre-built frames, last first.
struct Paged(Rc<RefCell<Vec<Vec<u8>>>>);
impl Transport for Paged {
    fn transact(&mut self, _: &[u8], rsp: &mut [u8; FRAME_MAX]) -> Result<usize, TransportError> {
        let a = self.0.borrow_mut().pop().unwrap_or_else(|| error(0x101));
        rsp[..a.len()].copy_from_slice(&a);
        Ok(a.len())
    }
}

#[test]
fn commands_marshal_to_known_bytes() {
    let (s, mut tpm) = fake();
    tpm.startup_clear().unwrap();
    tpm.flush_context(0x8000_0002).unwrap();
    let sent = s.0.borrow().sent.clone();
    assert_eq!(hex::encode(&sent[0]), "80010000000c000001440000");
    assert_eq!(hex::encode(&sent[1]), "80010000000e0000016580000002");
}

/// Answers every command with the same bytes.
struct Fixed(Vec<u8>);
impl Transport for Fixed {
    fn transact(&mut self, _: &[u8], rsp: &mut [u8; FRAME_MAX]) -> Result<usize, TransportError> {
        let n = self.0.len().min(FRAME_MAX);
        rsp[..n].copy_from_slice(&self.0[..n]);
        Ok(n)
    }
}

/// Runs every parsing command against `rsp`; the result may be anything but a panic.
fn run_all(rsp: Vec<u8>) {
    let mut tpm = Tpm::new(Fixed(rsp)).with_sleep(|_| {});
    tpm.set_nv_chunk(Some(16));
    let _ = tpm.handles(0x8100_0000);
    let _ = tpm.property(PT_NV_BUFFER_MAX);
    let _ = tpm.nv_read_public(0x01C0_0002);
    let _ = tpm.nv_read(0x01C0_0002, 16);
    let _ = tpm.read_public(0x8101_0001);
    let _ = tpm.create_primary(RH_OWNER, &AK_P256.tpmt());
    let _ = tpm.start_policy_session(0x000b);
    let _ = tpm.activate_credential((1, Auth::Password), (2, Auth::Password), &[1], &[2]);
    let _ = tpm.flush_leftovers();
}

#[test]
fn mutated_responses_never_panic() {
    let ak = ekattest_testkit::testdata::vector("ak.tpm2b_public");
    let mut read_public = ak.clone();
    read_public.extend_from_slice(&[0, 2, 0, 0x0b, 0, 2, 0, 0x0b]);
    let nv_public = [
        0, 14, 1, 0xC0, 0, 2, 0, 0x0b, 0, 0, 0, 0, 0, 0, 0, 16, 0, 2, 0, 0x0b,
    ];
    let mut session = vec![0x03, 0, 0, 0, 0, 16];
    session.extend_from_slice(&[7; 16]);
    let mut handles = vec![0, 0, 0, 0, 1, 0, 0, 0, 2];
    handles.extend_from_slice(&[0x81, 1, 0, 1, 0x81, 1, 0, 0x16]);
    let mut nv_data = vec![0, 16];
    nv_data.extend_from_slice(&[9; 16]);
    let seeds = [
        frame(0x8001, 0, &read_public),
        frame(0x8001, 0, &nv_public),
        frame(0x8001, 0, &session),
        frame(0x8001, 0, &handles),
        with_sessions(&[], &nv_data, 1),
        with_sessions(
            &[0x8000_0000],
            &[
                &ak[..],
                &[0, 0, 0, 0, 0x80, 0x21, 0x40, 0, 0, 1, 0, 0, 0, 2, 0, 0x0b],
            ]
            .concat(),
            1,
        ),
        with_sessions(&[], &[0, 2, 0xaa, 0xbb], 2),
    ];
    // The seeds are valid for their own command, so the mutations start from parsed input.
    let ok = |i: usize| {
        let mut t = Tpm::new(Fixed(seeds[i].clone()));
        t.set_nv_chunk(Some(16));
        t
    };
    assert_eq!(ok(0).read_public(1).unwrap().public, ak);
    assert_eq!(ok(1).nv_read_public(0x01C0_0002).unwrap().data_size, 16);
    assert_eq!(ok(2).start_policy_session(0x000b).unwrap(), 0x0300_0000);
    assert_eq!(
        ok(3).handles(0x8100_0000).unwrap(),
        vec![0x8101_0001, 0x8101_0016]
    );
    assert_eq!(ok(4).nv_read(5, 16).unwrap(), vec![9; 16]);
    assert_eq!(
        ok(5).create_primary(RH_OWNER, &AK_P256.tpmt()).unwrap().0,
        0x8000_0000
    );
    let got = ok(6).activate_credential((1, Auth::Password), (2, Auth::Password), &[1], &[2]);
    assert_eq!(got.unwrap(), vec![0xaa, 0xbb]);
    for seed in seeds {
        for n in 0..=seed.len() {
            run_all(seed[..n].to_vec());
        }
        for i in 0..seed.len() {
            for x in [0x01, 0x80, 0xff] {
                let mut m = seed.clone();
                m[i] ^= x;
                run_all(m);
            }
        }
    }
}
