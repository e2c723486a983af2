//! Parameter encryption on ActivateCredential against swtpm (issue 14): the secret is right
//! for RSA-2048, P-256 and P-384 EKs with and without it, the socket never carries the secret
//! in clear with it (and does without), a tampered response HMAC or ciphertext and a wrong
//! salt end in errors (never in a wrong secret), nothing stays loaded, and the cost of the
//! extra command is measured.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ekattest_agent::tpm::activate::{self, Credential};
use ekattest_agent::tpm::ak::{self, AkOptions};
use ekattest_agent::tpm::commands::Tpm;
use ekattest_agent::tpm::ek::{self, Ek};
use ekattest_agent::tpm::stream::{self, Stream};
use ekattest_agent::tpm::{FRAME_MAX, Transport, TransportError, session};

use ekattest_testkit::Device;

use super::{connect, provision};

const CC_START_AUTH_SESSION: u32 = 0x176;
const CC_ACTIVATE_CREDENTIAL: u32 = 0x147;
const RH_NULL: u32 = 0x4000_0007;
/// Timing key of a salted StartAuthSession (tpmKey = the EK).
const SALTED: u32 = 0x8000_0176;

/// What the wrapper does to the traffic.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Bend {
    /// Records only.
    None,
    /// Flips the last byte of the first session's HMAC in ActivateCredential's response.
    ResponseHmac,
    /// Flips a byte of the encrypted certInfo in ActivateCredential's response.
    Ciphertext,
    /// Replaces a salted StartAuthSession's encryptedSalt by the encryption of another salt.
    WrongSalt,
}

/// Every response byte and each command's time, per command code.
#[derive(Default)]
struct Log {
    responses: Vec<u8>,
    timings: Vec<(u32, Duration)>,
}

struct Tap<T> {
    inner: T,
    bend: Bend,
    ek_public: Vec<u8>,
    log: Arc<Mutex<Log>>,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

fn be16(b: &[u8], at: usize) -> usize {
    usize::from(u16::from_be_bytes(b[at..at + 2].try_into().unwrap()))
}

impl<T: Transport> Transport for Tap<T> {
    fn transact(&mut self, cmd: &[u8], rsp: &mut [u8; FRAME_MAX]) -> Result<usize, TransportError> {
        let cc = be32(cmd, 6);
        let salted = cc == CC_START_AUTH_SESSION && be32(cmd, 10) != RH_NULL;
        let mut cmd = cmd.to_vec();
        if self.bend == Bend::WrongSalt && salted {
            // tpmKey, bind, nonceCaller, then encryptedSalt.
            let nonce_end = 18 + 2 + be16(&cmd, 18);
            let salt_end = nonce_end + 2 + be16(&cmd, nonce_end);
            let other = session::salt_for(&self.ek_public).unwrap();
            let mut bent = cmd[..nonce_end].to_vec();
            bent.extend(u16::try_from(other.encrypted.len()).unwrap().to_be_bytes());
            bent.extend(&other.encrypted);
            bent.extend(&cmd[salt_end..]);
            let len = u32::try_from(bent.len()).unwrap();
            bent[2..6].copy_from_slice(&len.to_be_bytes());
            cmd = bent;
        }
        let started = Instant::now();
        let n = self.inner.transact(&cmd, rsp)?;
        let took = started.elapsed();
        if cc == CC_ACTIVATE_CREDENTIAL && be32(&rsp[..], 6) == 0 {
            // header, parameterSize, certInfo (TPM2B), then the first TPMS_AUTH_RESPONSE.
            let params_end = 14 + be32(&rsp[..], 10) as usize;
            let nonce_end = params_end + 2 + be16(&rsp[..], params_end);
            let hmac_len = be16(&rsp[..], nonce_end + 1);
            match self.bend {
                Bend::ResponseHmac if hmac_len > 0 => rsp[nonce_end + 2 + hmac_len] ^= 1,
                Bend::Ciphertext => rsp[14 + 2 + 5] ^= 0x80,
                _ => {}
            }
        }
        let mut log = self.log.lock().unwrap();
        log.responses.extend_from_slice(&rsp[..n]);
        log.timings.push((if salted { SALTED } else { cc }, took));
        Ok(n)
    }
}

/// A TPM on `device` behind a [`Tap`] with `bend`, started and with leftovers flushed.
fn tapped(device: &Device, bend: Bend, ek: &Ek) -> (Tpm<Tap<stream::Tcp>>, Arc<Mutex<Log>>) {
    let log = Arc::new(Mutex::new(Log::default()));
    let inner = Stream::connect_tcp("127.0.0.1", device.port()).unwrap();
    let mut tpm = Tpm::new(Tap {
        inner,
        bend,
        ek_public: ek.public.clone(),
        log: Arc::clone(&log),
    });
    tpm.startup_clear().unwrap();
    tpm.flush_leftovers().unwrap();
    log.lock().unwrap().responses.clear();
    (tpm, log)
}

fn assert_nothing_loaded<T: Transport>(tpm: &mut Tpm<T>, what: &str) {
    for first in [0x8000_0000, 0x0200_0000, 0x0300_0000] {
        assert!(
            tpm.handles(first).unwrap().is_empty(),
            "{what}: handles left at {first:#010x}"
        );
    }
}

fn opts(parameter_encryption: bool) -> AkOptions {
    AkOptions {
        parameter_encryption,
        ..AkOptions::default()
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[test]
fn parameter_encryption_hides_the_secret_on_the_socket_for_each_ek_and_costs_one_command() {
    let device = provision(2048, true);
    let (found, ak_name) = {
        let mut tpm = connect(&device);
        let found = ek::discover(&mut tpm).unwrap();
        (
            found,
            ak::read(&mut tpm, &AkOptions::default()).unwrap().name,
        )
    };
    assert_eq!(found.eks.len(), 3, "RSA-2048, P-256 and P-384 EKs");
    let secret: Vec<u8> = (0u8..32).map(|i| i.wrapping_mul(29) ^ 0xc3).collect();
    for e in &found.eks {
        let cred = ekattest_testkit::tpm2_makecredential(&e.public, &secret, &ak_name).unwrap();
        let cred = Credential::decode_tpm2_tools(&cred).unwrap();
        for on in [true, false] {
            let (mut tpm, log) = tapped(&device, Bend::None, e);
            const RUNS: u32 = 10;
            let started = Instant::now();
            for _ in 0..RUNS {
                let got = activate::activate(&mut tpm, e, &opts(on), &cred).unwrap();
                assert_eq!(got, secret, "{:?} parameter encryption {on}", e.kind);
            }
            let per_run = started.elapsed() / RUNS;
            assert_nothing_loaded(&mut tpm, "after success");
            let log = log.lock().unwrap();
            assert_eq!(
                contains(&log.responses, &secret),
                !on,
                "{:?}: secret in clear on the socket with parameter encryption {on}",
                e.kind
            );
            let count = |cc: u32| log.timings.iter().filter(|(c, _)| *c == cc).count();
            let avg = |cc: u32| -> Duration {
                let sum: Duration = log
                    .timings
                    .iter()
                    .filter(|(c, _)| *c == cc)
                    .map(|(_, d)| *d)
                    .sum();
                sum / u32::try_from(count(cc).max(1)).unwrap()
            };
            eprintln!(
                "{:?} parameter-encryption {on}: activate {:.3} ms/run; salted StartAuthSession \
                 {:.3} ms ({} sent); policy StartAuthSession {:.3} ms; ActivateCredential {:.3} ms",
                e.kind,
                ms(per_run),
                ms(avg(SALTED)),
                count(SALTED),
                ms(avg(CC_START_AUTH_SESSION)),
                ms(avg(CC_ACTIVATE_CREDENTIAL)),
            );
        }
    }
}

#[test]
fn tampered_responses_and_a_wrong_salt_are_errors_never_a_wrong_secret() {
    let device = provision(2048, true);
    let (found, ak_name) = {
        let mut tpm = connect(&device);
        let found = ek::discover(&mut tpm).unwrap();
        (
            found,
            ak::read(&mut tpm, &AkOptions::default()).unwrap().name,
        )
    };
    let secret = [0x5a_u8; 32];
    for e in &found.eks {
        let cred = ekattest_testkit::tpm2_makecredential(&e.public, &secret, &ak_name).unwrap();
        let cred = Credential::decode_tpm2_tools(&cred).unwrap();
        for bend in [Bend::ResponseHmac, Bend::Ciphertext, Bend::WrongSalt] {
            let (mut tpm, _) = tapped(&device, bend, e);
            let Err(err) = activate::activate(&mut tpm, e, &AkOptions::default(), &cred) else {
                panic!("{:?} {bend:?}: a bent exchange yielded a secret", e.kind);
            };
            let text = err.to_string();
            match bend {
                Bend::ResponseHmac | Bend::Ciphertext => {
                    assert!(
                        matches!(err, ekattest_agent::tpm::Error::Session { .. })
                            && text.contains("response HMAC does not verify"),
                        "{:?} {bend:?}: {text}",
                        e.kind
                    );
                }
                // The TPM derives another session key and refuses our HMAC.
                _ => assert!(
                    err.response_code()
                        .is_some_and(|rc| rc.0 & 0xbf == 0x8e || rc.0 & 0xbf == 0xa2),
                    "{:?} {bend:?}: {text}",
                    e.kind
                ),
            }
            eprintln!("{:?} {bend:?}: {text}", e.kind);
            assert_nothing_loaded(&mut tpm, &format!("{:?} {bend:?}", e.kind));
            // The same TPM connection still activates afterwards.
            drop(tpm);
            let (mut tpm, _) = tapped(&device, Bend::None, e);
            let got = activate::activate(&mut tpm, e, &AkOptions::default(), &cred).unwrap();
            assert_eq!(got, secret);
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
