//! The agent's TIS-over-SPI driver (`Tis<SpiTis<_>>`) against an independent device model
//! (`spi_double`, written from the PTP without reading the driver) in front of a real swtpm
//! (feature `it`: needs swtpm, swtpm_setup, tpm2-tools and openssl).
//!
//! 1. The whole attestation (EK discovery, AK, MakeCredential by the server library,
//!    ActivateCredential) for wait states {0, 1, 3} x burstCount {1, 8, 64}, plus a chip that
//!    reports burstCount 0 after each burst; the identity must equal the one the same device
//!    gets through the plain swtpm socket (the oracle path), and the model must have seen the
//!    driver honour every wait state, burstCount, locality and framing rule.
//! 2. Each injected fault ends in a clear error within the configured timeouts, and the next
//!    command on the same `Tis` succeeds; each case runs on a thread with a deadline, so a
//!    hang fails the test instead of blocking CI.

mod spi_double;

use std::io;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use ekattest_agent::tpm::commands::{PT_MANUFACTURER, Tpm};
use ekattest_agent::tpm::ek::EkKind;
use ekattest_agent::tpm::stream::Stream;
use ekattest_agent::tpm::tis::spi::{MAX_TRANSFER, SpiBus, SpiTis};
use ekattest_agent::tpm::tis::{Timeouts, Tis};
use ekattest_fleet::flow::{self, Server};
use ekattest_fleet::{Ca, Device, ProvisionOptions};
use ekattest_protocol::ErrorChain;
use ekattest_protocol::msg::AttributeName;
use ekattest_server::attest::Identity;
use spi_double::{Config, Fault, INTF_CAPABILITY, Probe, SpiDouble, Stats};

impl SpiBus for SpiDouble {
    fn transfer(&mut self, buf: &mut [u8], keep_selected: bool) -> io::Result<()> {
        SpiDouble::transfer(self, buf, keep_selected);
        Ok(())
    }
}

/// The EK every run attests with: RSA-2048, whose certificate and ActivateCredential blobs
/// make the largest FIFO transfers.
const EK: EkKind = EkKind::Rsa2048;

fn provision(ca: &Ca) -> Device {
    let opts = ProvisionOptions {
        rsa_keysize: 2048,
        p256_ek_cert: true,
    };
    Device::provision(ca, &opts).unwrap_or_else(|e| panic!("cannot provision swtpm: {e}"))
}

/// The server library with a policy trusting `ca` (as qemu/tests/it/attest.rs builds it).
fn server(ca: &Ca) -> Server {
    Server::trusting(ca, "node-q").unwrap_or_else(|e| panic!("{e}"))
}

fn public_hash(identity: &Identity) -> &str {
    identity
        .attributes
        .iter()
        .find(|(name, _)| *name == AttributeName::PublicHash)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no public_hash attribute in {identity:?}"))
}

/// Opens the driver on a fresh device model in front of the swtpm at `port`.
fn open(port: u16, cfg: Config, polls: u32, timeouts: Timeouts) -> (Tis<SpiTis<SpiDouble>>, Probe) {
    let (double, probe) = SpiDouble::swtpm(port, cfg)
        .unwrap_or_else(|e| panic!("cannot connect the SPI double to swtpm port {port}: {e}"));
    let name = format!(
        "spi-double(waits {}, burst {})",
        cfg.wait_states, cfg.burst_count
    );
    let bus = SpiTis::new(double).with_max_wait_polls(polls);
    let tis = Tis::open(bus, name, timeouts)
        .unwrap_or_else(|e| panic!("Tis::open: {}\n{:#?}", ErrorChain(&e), probe.stats()));
    let info = tis.info();
    assert_eq!(
        (
            info.vendor_id,
            info.device_id,
            info.revision,
            info.intf_capability
        ),
        (cfg.vendor_id, cfg.device_id, cfg.revision, INTF_CAPABILITY),
        "TisInfo must be what the chip's registers say"
    );
    (tis, probe)
}

/// The conformance the model checks on every byte, after a fault-free run: no violation
/// recorded (which covers data beyond the header's size, FIFO bytes past burstCount, FIFO or
/// TPM_STS use without the active locality, writes before commandReady, tpmGo with expect
/// set, chip select released mid-transaction), chip select released, at most 64 bytes per
/// transaction, every wait state polled through, every command's response read to its end.
fn assert_conforms(s: &Stats, cfg: Config, what: &str) {
    assert_eq!(s.protocol_errors, 0, "{what}: violations {:#?}", s.errors);
    assert!(
        s.backend_errors.is_empty(),
        "{what}: {:?}",
        s.backend_errors
    );
    assert!(!s.selected, "{what}: chip select left asserted");
    assert!(s.locality_requests >= 1, "{what}: locality never requested");
    assert!(s.locality_releases >= 1, "{what}: locality never released");
    assert!(
        s.max_size <= MAX_TRANSFER,
        "{what}: {} bytes in one transaction",
        s.max_size
    );
    assert!(
        s.max_size <= usize::from(cfg.burst_count).max(4),
        "{what}: {}-byte transaction with burstCount {}",
        s.max_size,
        cfg.burst_count
    );
    let waits = u64::from(cfg.wait_states);
    assert_eq!(
        s.wait_bytes,
        waits * s.transactions,
        "{what}: wait states not polled through"
    );
    assert_eq!(
        s.waited_transactions,
        if waits > 0 { s.transactions } else { 0 },
        "{what}"
    );
    assert_eq!((s.abandoned, s.aborts), (0, 0), "{what}");
    assert!(s.commands >= 10, "{what}: only {} commands", s.commands);
    assert_eq!(
        s.responses, s.commands,
        "{what}: a response was not read to its end"
    );
    assert!(
        s.fifo_bytes_out > 1000,
        "{what}: {} response bytes",
        s.fifo_bytes_out
    );
}

/// One provisioned device, a server trusting its CA, and the identity the device gets
/// through the plain swtpm socket (the oracle path).
struct Bench {
    _ca: Ca,
    dev: Device,
    server: Server,
    oracle: Identity,
}

fn bench() -> Bench {
    let started = Instant::now();
    let ca = Ca::create().unwrap();
    let dev = provision(&ca);
    let server = server(&ca);
    let stream = Stream::connect_tcp("127.0.0.1", dev.port()).unwrap();
    let report = flow::attest(stream, Some(EK), &server).unwrap();
    let oracle = report
        .outcome
        .unwrap_or_else(|r| panic!("oracle rejected: {r:?}"));
    eprintln!("oracle {} after {:?}", oracle.spiffe_id, started.elapsed());
    Bench {
        _ca: ca,
        dev,
        server,
        oracle,
    }
}

/// The whole attestation through `Tis<SpiTis<SpiDouble>>`: the identity must be the
/// oracle's, and the driver must have conformed throughout.
fn attest_over_spi(bench: &Bench, cfg: Config) -> Stats {
    let what = format!(
        "waits {} burst {} zero-burst {}",
        cfg.wait_states, cfg.burst_count, cfg.zero_burst_after_fifo
    );
    let t = Instant::now();
    let (mut tis, probe) = open(bench.dev.port(), cfg, 50, Timeouts::default());
    let report = flow::attest(&mut tis, Some(EK), &bench.server)
        .unwrap_or_else(|e| panic!("{what}: {}\n{:#?}", ErrorChain(&e), probe.stats()));
    drop(tis);
    let identity = report
        .outcome
        .unwrap_or_else(|r| panic!("{what}: rejected: {r:?}"));
    assert_eq!(identity.spiffe_id, bench.oracle.spiffe_id, "{what}");
    assert_eq!(public_hash(&identity), public_hash(&bench.oracle), "{what}");
    let s = probe.stats();
    eprintln!(
        "{what}: {:?}, {} transactions, {} wait bytes, {} commands, {}+{} FIFO bytes",
        t.elapsed(),
        s.transactions,
        s.wait_bytes,
        s.commands,
        s.fifo_bytes_in,
        s.fifo_bytes_out
    );
    assert_conforms(&s, cfg, &what);
    assert_eq!(
        bench.server.attestor.pending(),
        0,
        "{what}: session left behind"
    );
    s
}

#[test]
fn attestation_over_spi_for_every_wait_state_and_burst_count_equals_the_socket_oracle() {
    let started = Instant::now();
    let bench = bench();
    for wait_states in [0u8, 1, 3] {
        for burst_count in [1u16, 8, 64] {
            let cfg = Config {
                wait_states,
                burst_count,
                ..Config::default()
            };
            attest_over_spi(&bench, cfg);
        }
    }
    eprintln!("total {:?}", started.elapsed());
}

/// burstCount 0 at the first TPM_STS read after every FIFO burst (the PTP allows it while
/// the chip moves data): the driver must read TPM_STS again until it is non-zero before
/// every FIFO transfer, the command's last byte included.
#[test]
fn attestation_over_spi_waits_out_transient_zero_burst_counts() {
    let bench = bench();
    let cfg = Config {
        wait_states: 1,
        burst_count: 8,
        zero_burst_after_fifo: true,
        ..Config::default()
    };
    let s = attest_over_spi(&bench, cfg);
    assert!(
        s.zero_bursts > 100,
        "only {} zero burstCounts",
        s.zero_bursts
    );
}

/// Runs `f` on a thread; a case that does not finish by `limit` fails the test (the thread
/// is left behind) instead of blocking CI.
fn with_deadline<T: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (done, finished) = mpsc::channel();
    let handle = thread::spawn(move || {
        let out = f();
        let _ = done.send(());
        out
    });
    match finished.recv_timeout(limit) {
        Ok(()) | Err(RecvTimeoutError::Disconnected) => handle
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p)),
        Err(RecvTimeoutError::Timeout) => panic!("{what} still running after {limit:?}: a hang"),
    }
}

/// Small timeouts so a fault costs little; every bound below derives from them.
const FAULT_TIMEOUTS: Timeouts = Timeouts {
    a: Duration::from_millis(200),
    b: Duration::from_millis(200),
    c: Duration::from_millis(200),
    d: Duration::from_millis(200),
    command: Duration::from_secs(2),
};
const FAULT_POLLS: u32 = 20;

/// The longest a failed command may take: every timeout once, twice over (a wait plus the
/// abort's wait for commandReady, with scheduling slack on a loaded machine).
fn fault_bound() -> Duration {
    let t = FAULT_TIMEOUTS;
    (t.a + t.b + t.c + t.d + t.command) * 2
}

/// One fault: a good command, the faulted one (error text and time checked), then a good one.
fn fault_case(port: u16, fault: Fault, words: &'static [&'static str]) -> Stats {
    let cfg = Config {
        wait_states: 1,
        burst_count: 8,
        ..Config::default()
    };
    let (mut tis, probe) = open(port, cfg, FAULT_POLLS, FAULT_TIMEOUTS);
    let mut tpm = Tpm::new(&mut tis);
    tpm.startup_clear().unwrap();
    let manufacturer = tpm.property(PT_MANUFACTURER).unwrap();
    assert!(manufacturer.is_some(), "swtpm reports a manufacturer");

    probe.arm(fault);
    let t = Instant::now();
    let err = tpm
        .property(PT_MANUFACTURER)
        .expect_err("the faulted command must fail");
    let elapsed = t.elapsed();
    let text = ErrorChain(&err).to_string();
    eprintln!("{fault:?}: {elapsed:?}: {text}");
    assert_eq!(probe.armed(), None, "{fault:?} never took effect");
    assert!(
        elapsed < fault_bound(),
        "{fault:?}: failed after {elapsed:?}, bound {:?}",
        fault_bound()
    );
    if fault == Fault::NoResponse {
        // Gave the TPM its whole command duration before giving up.
        assert!(
            elapsed >= FAULT_TIMEOUTS.command,
            "{fault:?}: gave up after {elapsed:?}"
        );
    }
    assert!(
        words.iter().any(|w| text.contains(w)),
        "{fault:?}: error does not say what happened (one of {words:?}): {text}"
    );

    let again = tpm
        .property(PT_MANUFACTURER)
        .unwrap_or_else(|e| panic!("{fault:?}: no recovery: {}", ErrorChain(&e)));
    assert_eq!(again, manufacturer, "{fault:?}: the next command's answer");
    drop(tpm);
    drop(tis);
    let s = probe.stats();
    assert_eq!(s.faults_fired, vec![fault]);
    assert_eq!(s.faults_cleared, 1, "{fault:?} outlived its command: {s:?}");
    assert!(s.backend_errors.is_empty(), "{:?}", s.backend_errors);
    assert!(!s.selected, "{fault:?}: chip select left asserted");
    assert_eq!(
        s.protocol_errors, 0,
        "{fault:?}: violations {:#?}",
        s.errors
    );
    s
}

#[test]
fn each_injected_fault_is_a_clear_error_within_the_timeouts_and_the_next_command_works() {
    let started = Instant::now();
    let ca = Ca::create().unwrap();
    let dev = provision(&ca);
    let port = dev.port();
    let deadline = fault_bound() * 4;
    // What each error must name (any of the words): the symptom an operator can look up.
    let cases: [(Fault, &'static [&'static str]); 5] = [
        (Fault::StuckExpect, &["expects data"]),
        (Fault::EarlyDataAvail, &["response size"]),
        (Fault::DataAvailDrops, &["dataAvail"]),
        (Fault::NoResponse, &["timed out"]),
        (Fault::StuckWaitState, &["wait state"]),
    ];
    for (fault, words) in cases {
        let t = Instant::now();
        let s = with_deadline(&format!("{fault:?}"), deadline, move || {
            fault_case(port, fault, words)
        });
        match fault {
            Fault::StuckExpect | Fault::NoResponse => assert_eq!(s.aborts, 1, "{s:?}"),
            // The driver believed dataAvail and read a burst of 0xFF.
            Fault::EarlyDataAvail => {
                assert!(s.lost_reads > 0, "{fault:?}: {s:?}");
                assert_eq!(s.aborts, 1, "{s:?}");
            }
            // The driver stopped at dataAvail = 0 instead of reading 0xFF.
            Fault::DataAvailDrops => {
                assert_eq!(s.lost_reads, 0, "{fault:?}: {s:?}");
                assert_eq!(s.aborts, 1, "{s:?}");
            }
            Fault::StuckWaitState => {
                assert_eq!(s.abandoned, 1, "{s:?}");
                assert!(s.wait_bytes >= u64::from(FAULT_POLLS), "{s:?}");
            }
        }
        if fault == Fault::NoResponse {
            assert_eq!(s.withheld, 1);
        }
        eprintln!(
            "{fault:?} case: {:?}, violations {:?}",
            t.elapsed(),
            s.errors
        );
    }
    eprintln!("total {:?}", started.elapsed());
}

/// Everything the TPM drove onto MISO, as a bus probe sees it: every byte (`all`), and the
/// data phases of FIFO reads concatenated (`fifo`: the response byte streams an eavesdropper
/// reassembles, whatever the burst and wait-state split).
#[derive(Default)]
struct MisoLog {
    all: Vec<u8>,
    fifo: Vec<u8>,
}

/// A SPI bus probe between the driver and the device model.
struct MisoProbe {
    double: SpiDouble,
    log: std::sync::Arc<std::sync::Mutex<MisoLog>>,
    /// The transaction under way reads a FIFO register (from its 4-byte header on MOSI).
    fifo_read: bool,
    /// The next transfer starts a transaction (chip select was released).
    at_start: bool,
}

impl SpiBus for MisoProbe {
    fn transfer(&mut self, buf: &mut [u8], keep_selected: bool) -> io::Result<()> {
        if self.at_start && buf.len() == 4 {
            // Header: R/W | size-1, then the 24-bit address; TPM_DATA_FIFO is 0x24 and
            // TPM_XDATA_FIFO 0x80 in each locality's 4 KiB page.
            let reg = u32::from_be_bytes([0, buf[1], buf[2], buf[3]]) & 0xFFF;
            self.fifo_read = buf[0] & 0x80 != 0 && matches!(reg, 0x24 | 0x80..=0x83);
        }
        SpiDouble::transfer(&mut self.double, buf, keep_selected);
        let mut log = self.log.lock().unwrap();
        log.all.extend_from_slice(buf);
        if !keep_selected && self.fifo_read && !self.at_start {
            log.fifo.extend_from_slice(buf);
        }
        self.at_start = !keep_selected;
        Ok(())
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Acceptance (issue 14): a probe on the SPI bus records MISO during a whole
/// ActivateCredential (EK discovery, AK, the salted and policy sessions, the command). With
/// parameter encryption the 32 secret bytes appear nowhere in it; without, they do, in the
/// FIFO stream the probe reassembles. In both runs the probe demonstrably sees response
/// payloads (the EK certificate read from NV).
#[test]
fn secret_never_crosses_spi_miso_with_parameter_encryption_and_does_without() {
    use ekattest_agent::tpm::activate::{self, Credential};
    use ekattest_agent::tpm::ak::{self, AkOptions};
    use ekattest_agent::tpm::ek;

    let ca = Ca::create().unwrap();
    let dev = provision(&ca);
    let secret: Vec<u8> = (0u8..32).map(|i| i.wrapping_mul(53) ^ 0x9e).collect();
    let cfg = Config {
        wait_states: 1,
        burst_count: 8,
        ..Config::default()
    };
    for parameter_encryption in [true, false] {
        let what = format!("parameter encryption {parameter_encryption}");
        let (double, probe) = SpiDouble::swtpm(dev.port(), cfg).unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(MisoLog::default()));
        let bus = MisoProbe {
            double,
            log: std::sync::Arc::clone(&log),
            fifo_read: false,
            at_start: true,
        };
        let tis = Tis::open(
            SpiTis::new(bus).with_max_wait_polls(50),
            "spi-probe".to_owned(),
            Timeouts::default(),
        )
        .unwrap_or_else(|e| panic!("Tis::open: {}", ErrorChain(&e)));
        let mut tpm = Tpm::new(tis);
        tpm.startup_clear().unwrap();
        tpm.flush_leftovers().unwrap();
        let found = ek::discover(&mut tpm).unwrap();
        let e = found.pick(Some(EK)).unwrap();
        let opts = AkOptions {
            parameter_encryption,
            ..AkOptions::default()
        };
        let ak = ak::read(&mut tpm, &opts).unwrap();
        let cred = ekattest_fleet::tpm2_makecredential(&e.public, &secret, &ak.name).unwrap();
        let cred = Credential::decode_tpm2_tools(&cred).unwrap();
        let got = activate::activate(&mut tpm, e, &opts, &cred)
            .unwrap_or_else(|err| panic!("{what}: {}\n{:#?}", ErrorChain(&err), probe.stats()));
        assert_eq!(got, secret, "{what}");
        drop(tpm);
        let log = log.lock().unwrap();
        let cert = e.certificate.as_deref().unwrap();
        assert!(
            contains(&log.fifo, cert),
            "{what}: the probe misses FIFO data"
        );
        eprintln!(
            "{what}: {} MISO bytes, {} in FIFO reads; secret on MISO: {}",
            log.all.len(),
            log.fifo.len(),
            contains(&log.all, &secret) || contains(&log.fifo, &secret)
        );
        if parameter_encryption {
            assert!(!contains(&log.all, &secret), "{what}: secret on MISO");
            assert!(
                !contains(&log.fifo, &secret),
                "{what}: secret in the FIFO stream"
            );
        } else {
            assert!(
                contains(&log.fifo, &secret),
                "{what}: secret not seen in clear"
            );
        }
        assert_eq!(probe.stats().protocol_errors, 0, "{what}");
    }
}

/// `svid-key: tpm` over the agent's SPI driver (issue 14: every transport): the key is
/// created and certified through the device model, the server library accepts the
/// certification, TPM2_Sign's signature verifies with the key's SubjectPublicKeyInfo, and
/// the driver conformed throughout.
#[test]
fn tpm_resident_svid_key_is_created_certified_and_signs_over_spi() {
    use ekattest_agent::tpm::ak::{self, AkOptions};
    use ekattest_agent::tpm::key;
    use p256::ecdsa::signature::Verifier as _;
    use p256::pkcs8::DecodePublicKey as _;

    let ca = Ca::create().unwrap();
    let dev = provision(&ca);
    let cfg = Config {
        wait_states: 1,
        burst_count: 8,
        ..Config::default()
    };
    let (mut tis, probe) = open(dev.port(), cfg, 50, Timeouts::default());
    let mut tpm = Tpm::new(&mut tis);
    tpm.startup_clear().unwrap();
    let opts = AkOptions::default();
    let ak = ak::read(&mut tpm, &opts).unwrap();
    let qd = [0x42; 32];
    let certified = key::create_certified(&mut tpm, &opts, &qd)
        .unwrap_or_else(|e| panic!("{}\n{:#?}", ErrorChain(&e), probe.stats()));
    let mut login = ekattest_protocol::msg::Login {
        methods: ekattest_protocol::heapless::Vec::new(),
        ek_public: ekattest_protocol::heapless::Vec::new(),
        ek_cert: None,
        ek_chain: ekattest_protocol::heapless::Vec::new(),
        ak_public: ekattest_protocol::heapless::Vec::from_slice(&ak.public).unwrap(),
        svid_key: None,
        key_certify: None,
        nonce: [0; 16],
        signer_hint: None,
    };
    ekattest_agent::attest::with_certified_key(&mut login, &certified).unwrap();
    ekattest_server::certify::check(
        login.key_certify.as_ref().unwrap(),
        &login.ak_public,
        login.svid_key.as_deref(),
        &qd,
    )
    .unwrap_or_else(|e| panic!("the server refused an SPI-made certification: {e}"));
    let message = b"proof of possession, over SPI";
    let der = key::sign(&mut tpm, &certified.key, message).unwrap();
    let verifying = p256::ecdsa::VerifyingKey::from_public_key_der(certified.key.spki()).unwrap();
    let signature = p256::ecdsa::Signature::from_der(&der).unwrap();
    verifying
        .verify(message, &signature)
        .expect("TPM2_Sign's signature verifies with the certified key");
    drop(tpm);
    drop(tis);
    assert_conforms(&probe.stats(), cfg, "svid-key tpm over SPI");
}
