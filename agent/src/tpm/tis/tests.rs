//! Unit tests of the TIS state machine against a small in-memory TIS register model (one
//! locality, configurable burstCount and faults the test sets and clears). The SPI framing
//! tests are in `spi/tests.rs`; the full SPI test double lives in agent/tests.

use std::cell::RefCell;
use std::io;
use std::rc::Rc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::regs::*;
use super::*;

/// TIS states of the model (PTP "TPM_STS state machine", simplified).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    Idle,
    Ready,
    Reception,
    Execution,
    Completion,
}

/// One locality of a TIS TPM. The "TPM" answers a command with the command's parameter
/// bytes reversed under a success header.
#[derive(Debug)]
pub(super) struct Model {
    burst: u16,
    grant: bool,
    active: bool,
    did_vid: u32,
    family: u8,
    state: State,
    cmd: Vec<u8>,
    rsp: Vec<u8>,
    off: usize,
    // Faults, cleared by the test between commands.
    stuck_expect: bool,
    drop_after: Option<usize>,
    extra: usize,
    frozen_sts: Option<u32>,
    never_respond: bool,
    zero_burst: bool,
    respond_with: Option<Vec<u8>>,
    /// The first status read after each FIFO access shows burstCount 0.
    stale_burst: bool,
    stale: bool,
    // Observations.
    /// burstCount of the last status read, minus the FIFO bytes moved since.
    last_burst: usize,
    /// FIFO accesses larger than `last_burst`.
    burst_violations: usize,
    fifo_writes: Vec<usize>,
    pub(super) commands: Vec<Vec<u8>>,
}

impl Model {
    fn new(burst: u16) -> Self {
        Self {
            burst,
            grant: true,
            active: false,
            did_vid: 0x001B_15D1,
            family: FAMILY_TPM2,
            state: State::Idle,
            cmd: Vec::new(),
            rsp: Vec::new(),
            off: 0,
            stuck_expect: false,
            drop_after: None,
            extra: 0,
            frozen_sts: None,
            never_respond: false,
            zero_burst: false,
            respond_with: None,
            stale_burst: false,
            stale: false,
            last_burst: 0,
            burst_violations: 0,
            fifo_writes: Vec::new(),
            commands: Vec::new(),
        }
    }

    fn expecting(&self) -> bool {
        let declared = self
            .cmd
            .get(2..6)
            .map(|s| u32::from_be_bytes(s.try_into().unwrap()) as usize);
        declared.is_none_or(|d| self.cmd.len() < d)
    }

    fn sts(&self) -> u32 {
        if let Some(v) = self.frozen_sts {
            return v;
        }
        if !self.active {
            return u32::MAX;
        }
        let burst = if self.zero_burst { 0 } else { self.burst };
        let (bits, burst) = match self.state {
            State::Idle | State::Execution => (0, 0),
            State::Ready => (STS_COMMAND_READY, burst),
            State::Reception => {
                let expect = self.expecting() || self.stuck_expect;
                (STS_VALID | if expect { STS_EXPECT } else { 0 }, burst)
            }
            State::Completion => {
                let avail =
                    self.off < self.rsp.len() && self.drop_after.is_none_or(|k| self.off < k);
                let left = u16::try_from(self.rsp.len() - self.off).unwrap_or(u16::MAX);
                if avail {
                    (STS_VALID | STS_DATA_AVAIL, burst.min(left))
                } else {
                    (STS_VALID, 0)
                }
            }
        };
        u32::from(bits) | u32::from(burst) << 8 | u32::from(self.family) << 26
    }

    fn respond(&mut self) {
        self.commands.push(self.cmd.clone());
        if self.never_respond {
            self.state = State::Execution;
            return;
        }
        let rsp = self.respond_with.clone().unwrap_or_else(|| {
            let mut body: Vec<u8> = self.cmd.get(10..).unwrap_or_default().to_vec();
            body.reverse();
            let mut r = vec![0x80, 0x01];
            r.extend_from_slice(&(10 + body.len() as u32).to_be_bytes());
            r.extend_from_slice(&[0, 0, 0, 0]);
            r.extend_from_slice(&body);
            r
        });
        self.rsp = rsp;
        self.rsp.extend(std::iter::repeat_n(0xAA, self.extra));
        self.off = 0;
        self.state = State::Completion;
    }

    fn fifo_access(&mut self, len: usize) {
        if len > self.last_burst {
            self.burst_violations += 1;
        }
        self.last_burst = self.last_burst.saturating_sub(len);
        self.stale = self.stale_burst;
    }

    fn read(&mut self, locality: u8, reg: u16, buf: &mut [u8]) -> io::Result<()> {
        assert_eq!(locality, 0, "the driver only uses locality 0");
        let word = |v: u32| v.to_le_bytes();
        match reg {
            ACCESS => {
                buf[0] = ACCESS_VALID
                    | if self.active {
                        ACCESS_ACTIVE_LOCALITY
                    } else {
                        0
                    }
            }
            STS => {
                let mut v = self.sts();
                if std::mem::take(&mut self.stale) {
                    v &= !0x00FF_FF00;
                }
                if buf.len() >= 3 {
                    self.last_burst = ((v >> 8) & 0xFFFF) as usize;
                }
                buf.copy_from_slice(&word(v)[..buf.len()]);
            }
            DID_VID => buf.copy_from_slice(&word(self.did_vid)[..buf.len()]),
            RID => buf[0] = 0x10,
            INTF_CAPABILITY => buf.copy_from_slice(&word(0x3000_0697)[..buf.len()]),
            DATA_FIFO => {
                self.fifo_access(buf.len());
                for b in buf {
                    *b = match self.rsp.get(self.off) {
                        Some(&v) if self.state == State::Completion => {
                            self.off += 1;
                            v
                        }
                        _ => 0xFF,
                    };
                }
            }
            _ => return Err(io::Error::other(format!("model: no register {reg:#x}"))),
        }
        Ok(())
    }

    fn write(&mut self, locality: u8, reg: u16, data: &[u8]) -> io::Result<()> {
        assert_eq!(locality, 0, "the driver only uses locality 0");
        match reg {
            ACCESS if data[0] & ACCESS_ACTIVE_LOCALITY != 0 => self.active = false,
            ACCESS if data[0] & ACCESS_REQUEST_USE != 0 => self.active |= self.grant,
            STS if !self.active || self.frozen_sts.is_some() => {}
            STS if data[0] & STS_COMMAND_READY != 0 => {
                self.state = State::Ready;
                self.cmd.clear();
                self.rsp.clear();
                self.off = 0;
            }
            STS if data[0] & STS_GO != 0 => {
                if self.state == State::Reception && !self.expecting() {
                    self.respond();
                }
            }
            DATA_FIFO => {
                self.fifo_access(data.len());
                self.fifo_writes.push(data.len());
                if self.state == State::Ready {
                    self.state = State::Reception;
                }
                if self.state == State::Reception {
                    self.cmd.extend_from_slice(data);
                }
            }
            _ => return Err(io::Error::other(format!("model: cannot write {reg:#x}"))),
        }
        Ok(())
    }
}

/// The model behind a shared handle, so a test can change faults while the driver holds it.
#[derive(Debug, Clone)]
pub(super) struct Regs(Rc<RefCell<Model>>);

impl TisRegisters for Regs {
    fn read(&mut self, locality: u8, reg: u16, buf: &mut [u8]) -> io::Result<()> {
        self.0.borrow_mut().read(locality, reg, buf)
    }
    fn write(&mut self, locality: u8, reg: u16, data: &[u8]) -> io::Result<()> {
        self.0.borrow_mut().write(locality, reg, data)
    }
}

pub(super) fn tiny() -> Timeouts {
    let ms = Duration::from_millis;
    Timeouts {
        a: ms(30),
        b: ms(30),
        c: ms(30),
        d: ms(30),
        command: ms(60),
    }
}

pub(super) fn model(burst: u16) -> (Rc<RefCell<Model>>, Regs) {
    let m = Rc::new(RefCell::new(Model::new(burst)));
    (m.clone(), Regs(m))
}

/// A TPM command of `len` bytes (header + counting parameter bytes).
pub(super) fn command(len: usize) -> Vec<u8> {
    let mut c = vec![0x80, 0x01];
    c.extend_from_slice(&(len as u32).to_be_bytes());
    c.extend_from_slice(&[0, 0, 0x01, 0x7A]);
    c.extend((0..len - 10).map(|i| i as u8));
    c
}

/// Sends `cmd` and checks the model's answer (parameters reversed).
pub(super) fn round_trip<R: TisRegisters>(tis: &mut Tis<R>, cmd: &[u8]) {
    let mut rsp = [0u8; FRAME_MAX];
    let n = tis.transact(cmd, &mut rsp).unwrap();
    assert_eq!(n, cmd.len());
    let mut want: Vec<u8> = cmd[10..].to_vec();
    want.reverse();
    assert_eq!(&rsp[10..n], &want[..]);
    assert_eq!(&rsp[2..6], &(n as u32).to_be_bytes());
}

struct Capture(Mutex<Vec<String>>);
static LOGS: Capture = Capture(Mutex::new(Vec::new()));

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        self.0
            .lock()
            .unwrap()
            .push(format!("{} {}", record.level(), record.args()));
    }
    fn flush(&self) {}
}

#[test]
fn open_logs_the_vendor_and_leaves_the_tpm_ready() {
    let _ = log::set_logger(&LOGS);
    log::set_max_level(log::LevelFilter::Debug);
    let (m, regs) = model(64);
    let tis = Tis::open(regs, "test:open-logs", tiny()).unwrap();
    assert_eq!(
        tis.info(),
        TisInfo {
            vendor_id: 0x15D1,
            device_id: 0x001B,
            revision: 0x10,
            intf_capability: 0x3000_0697
        }
    );
    assert_eq!(tis.info().vendor(), "Infineon");
    assert_eq!(m.borrow().state, State::Ready);
    assert!(m.borrow().active);
    let logs = LOGS.0.lock().unwrap().clone();
    let line = logs
        .iter()
        .find(|l| l.contains("test:open-logs"))
        .unwrap_or_else(|| panic!("no log line for the device in {logs:?}"));
    assert!(line.starts_with("INFO"), "{line}");
    assert!(
        line.contains("Infineon") && line.contains("0x15d1"),
        "{line}"
    );
    drop(tis);
    // Drop leaves the TPM ready and gives the locality back.
    assert!(!m.borrow().active);
    assert_eq!(m.borrow().state, State::Ready);
}

#[test]
fn vendor_names() {
    assert_eq!(vendor_name(0x1014), "IBM (QEMU tpm-tis)");
    assert_eq!(vendor_name(0x1050), "Nuvoton (Winbond)");
    assert_eq!(vendor_name(0x104A), "STMicroelectronics");
    assert_eq!(vendor_name(0xBEEF), "unknown vendor");
}

#[test]
fn round_trip_in_burst_count_chunks() {
    for (burst, len, chunks) in [
        (1u16, 14usize, vec![1; 14]),
        (4, 14, vec![4, 4, 4, 1, 1]),
        (64, 100, vec![64, 35, 1]),
        (0xFFFF, 300, vec![299, 1]),
    ] {
        let (m, regs) = model(burst);
        let mut tis = Tis::open(regs, "test:burst", tiny()).unwrap();
        let cmd = command(len);
        round_trip(&mut tis, &cmd);
        let m = m.borrow();
        assert_eq!(m.fifo_writes, chunks, "burst {burst}");
        assert_eq!(m.commands, vec![cmd.clone()], "burst {burst}");
        // The driver wrote commandReady after reading the response.
        assert_eq!(m.state, State::Ready);
    }
}

#[test]
fn fifo_accesses_never_exceed_the_burst_count_last_read() {
    for stale in [false, true] {
        for burst in [1, 4, 64] {
            let (m, regs) = model(burst);
            m.borrow_mut().stale_burst = stale;
            let mut tis = Tis::open(regs, "test:stale", tiny()).unwrap();
            for len in [10, 11, 100] {
                round_trip(&mut tis, &command(len));
            }
            assert_eq!(
                m.borrow().burst_violations,
                0,
                "burst {burst} stale {stale}"
            );
        }
    }
    // The check itself works: a model that reports burstCount 0 after every access sees a
    // violation when the driver is fed a stale count.
    let mut m = Model::new(4);
    m.last_burst = 0;
    m.fifo_access(1);
    assert_eq!(m.burst_violations, 1);
}

#[test]
fn many_commands_in_a_row() {
    let (_, regs) = model(8);
    let mut tis = Tis::open(regs, "test:many", tiny()).unwrap();
    for len in [10, 11, 64, 65, 1000, 4096] {
        round_trip(&mut tis, &command(len));
    }
}

/// Runs `cmd` with a fault set by `fault`, checks the error and how long it took, then clears
/// the fault and checks the next command succeeds.
fn fault_then_recover(
    burst: u16,
    fault: impl FnOnce(&mut Model),
    within: Duration,
    check: impl FnOnce(&TransportError),
) {
    let (m, regs) = model(burst);
    let mut tis = Tis::open(regs, "test:fault", tiny()).unwrap();
    fault(&mut m.borrow_mut());
    let mut rsp = [0u8; FRAME_MAX];
    let start = Instant::now();
    let e = tis.transact(&command(40), &mut rsp).unwrap_err();
    let took = start.elapsed();
    check(&e);
    assert!(e.to_string().contains("test:fault"), "{e}");
    // Slack for a loaded 2-core CI machine.
    assert!(
        took < within + Duration::from_millis(500),
        "{e}: took {took:?}"
    );
    let (state, active) = (m.borrow().state, m.borrow().active);
    *m.borrow_mut() = Model {
        state,
        active,
        ..Model::new(burst)
    };
    round_trip(&mut tis, &command(40));
}

fn protocol_error(e: &TransportError, what: &str) {
    match e {
        TransportError::Protocol { what: w, .. } => assert!(w.contains(what), "{e}"),
        other => panic!("expected a protocol error containing {what:?}, got {other:?}"),
    }
}

fn timeout(e: &TransportError, op: &str) {
    match e {
        TransportError::Timeout { op: o, .. } => assert_eq!(*o, op, "{e}"),
        other => panic!("expected a timeout in {op:?}, got {other:?}"),
    }
}

#[test]
fn stuck_expect_is_an_error_and_the_next_command_works() {
    fault_then_recover(
        16,
        |m| m.stuck_expect = true,
        Duration::ZERO,
        |e| protocol_error(e, "still expects data after the whole 40-byte command"),
    );
}

#[test]
fn expect_dropping_early_is_an_error() {
    // The model believes the command is 12 bytes long; the driver has 40 to send.
    let (m, regs) = model(4);
    let mut tis = Tis::open(regs, "test:short", tiny()).unwrap();
    let mut cmd = command(40);
    cmd[2..6].copy_from_slice(&12u32.to_be_bytes());
    let e = tis.transact(&cmd, &mut [0u8; FRAME_MAX]).unwrap_err();
    protocol_error(
        &e,
        "stopped expecting data after 12 of the 40 command bytes",
    );
    drop(m);
    round_trip(&mut tis, &command(40));
}

#[test]
fn early_data_avail_drop_names_the_bytes_received() {
    fault_then_recover(
        4,
        |m| m.drop_after = Some(4),
        Duration::ZERO,
        |e| protocol_error(e, "cleared dataAvail after 4 response bytes (10 expected)"),
    );
    fault_then_recover(
        4,
        |m| m.drop_after = Some(22),
        Duration::ZERO,
        |e| protocol_error(e, "cleared dataAvail after 22 response bytes (40 expected)"),
    );
}

#[test]
fn extra_response_data_is_an_error() {
    fault_then_recover(
        64,
        |m| m.extra = 3,
        Duration::ZERO,
        |e| {
            protocol_error(
                e,
                "more response data than the 40 bytes its header declared",
            )
        },
    );
}

#[test]
fn impossible_response_size_is_bad_size() {
    let mut huge = vec![0x80, 0x01];
    huge.extend_from_slice(&5000u32.to_be_bytes());
    huge.extend_from_slice(&[0; 4]);
    fault_then_recover(
        64,
        |m| m.respond_with = Some(huge),
        Duration::ZERO,
        |e| {
            assert!(
                matches!(e, TransportError::BadSize { declared: 5000, .. }),
                "{e}"
            );
        },
    );
}

#[test]
fn silent_tpm_times_out_waiting_for_the_response() {
    let t = tiny();
    fault_then_recover(
        64,
        |m| m.never_respond = true,
        t.command + t.b,
        |e| timeout(e, "wait for the response (dataAvail)"),
    );
}

#[test]
fn zero_burst_count_times_out() {
    let t = tiny();
    fault_then_recover(
        64,
        |m| m.zero_burst = true,
        t.d + t.b,
        |e| timeout(e, "wait for burstCount"),
    );
}

#[test]
fn stuck_status_times_out() {
    let t = tiny();
    // stsValid never rises while the command is written.
    fault_then_recover(
        64,
        |m| {
            m.state = State::Ready;
            m.frozen_sts = Some(u32::from(STS_COMMAND_READY) | 64 << 8 | 1 << 26);
        },
        t.c + t.b,
        |e| timeout(e, "wait for stsValid"),
    );
    // commandReady never comes.
    fault_then_recover(
        64,
        |m| m.frozen_sts = Some(1 << 26),
        t.b + t.b,
        |e| timeout(e, "wait for commandReady"),
    );
}

#[test]
fn locality_never_granted_times_out_then_a_new_open_works() {
    let (m, regs) = model(64);
    m.borrow_mut().grant = false;
    let t = tiny();
    let start = Instant::now();
    let e = Tis::open(regs.clone(), "test:locality", t).unwrap_err();
    timeout(&e, "request locality 0");
    assert!(start.elapsed() >= t.a, "gave up before TIMEOUT_A");
    assert!(start.elapsed() < t.a + Duration::from_millis(500));
    m.borrow_mut().grant = true;
    let mut tis = Tis::open(regs, "test:locality", t).unwrap();
    round_trip(&mut tis, &command(12));
}

#[test]
fn nothing_on_the_bus_is_a_clear_error() {
    for (v, shown) in [(u32::MAX, "0xFFFFFFFF"), (0, "0x00000000")] {
        let (m, regs) = model(64);
        m.borrow_mut().did_vid = v;
        let e = Tis::open(regs, "test:empty", tiny()).unwrap_err();
        protocol_error(&e, &format!("no TPM answers there (DID_VID reads {shown})"));
        assert!(e.to_string().contains("check the wiring / address"), "{e}");
        // Nothing was written to a bus where nobody answers.
        assert!(!m.borrow().active);
    }
}

#[test]
fn tpm_1_2_is_refused() {
    let (m, regs) = model(64);
    m.borrow_mut().family = 0;
    let e = Tis::open(regs, "test:family", tiny()).unwrap_err();
    protocol_error(&e, "tpmFamily is 0 (TPM 1.2), not TPM 2.0");
    // The failed open released the locality it took.
    assert!(!m.borrow().active);
}

#[test]
fn oversized_and_empty_commands_are_refused_before_the_bus() {
    let (m, regs) = model(64);
    let mut tis = Tis::open(regs, "test:size", tiny()).unwrap();
    let e = tis
        .transact(&vec![0; FRAME_MAX + 1], &mut [0; FRAME_MAX])
        .unwrap_err();
    assert!(
        matches!(e, TransportError::CommandTooLong { len: 4097 }),
        "{e}"
    );
    let e = tis.transact(&[], &mut [0; FRAME_MAX]).unwrap_err();
    protocol_error(&e, "empty command");
    assert!(m.borrow().fifo_writes.is_empty());
    round_trip(&mut tis, &command(10));
}
