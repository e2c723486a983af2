//! The register file and FIFO state machine of the device model, as the TCG PC Client
//! Platform TPM Profile (PTP) describes the FIFO interface: localities through TPM_ACCESS,
//! TPM_STS (commandReady, tpmGo, dataAvail, expect, burstCount), TPM_DATA_FIFO, and the
//! identification registers. Injected faults bend exactly one command.
//!
//! Choices where the PTP leaves room (documented so a reader can disagree):
//! - Writing commandReady in Completion (after the response was read, or to abort) goes to
//!   Idle with commandReady = 0; a second write goes to Ready. Aborts from Reception and
//!   Execution go to Idle too. A driver must check commandReady and write it again.
//! - TPM_ACCESS, TPM_INTF_CAPABILITY, TPM_INTERFACE_ID, TPM_DID_VID and TPM_RID read from
//!   any locality; TPM_STS, the FIFOs and the interrupt registers read 0xFF and drop writes
//!   unless their locality is active (recorded as a protocol error).
//! - burstCount is the configured burst, capped by the space left in the 4 KiB command
//!   buffer or the response bytes left; a host moving more FIFO bytes than the last
//!   burstCount it read is a protocol error.
//!
//! Must never: panic or allocate beyond one frame on any host input, or block (answers from
//! the TPM worker are polled).

mod target;

use super::backend::{Backend, FRAME_CAP};
use super::{Config, Fault, Shared};
pub(crate) use target::Ctx;

/// TPM_ACCESS bits.
const ACCESS_VALID: u8 = 0x80;
const ACCESS_ACTIVE: u8 = 0x20;
const ACCESS_BEEN_SEIZED: u8 = 0x10;
const ACCESS_SEIZE: u8 = 0x08;
const ACCESS_PENDING: u8 = 0x04;
const ACCESS_REQUEST_USE: u8 = 0x02;
const ACCESS_ESTABLISHMENT: u8 = 0x01;
/// TPM_STS byte 0 bits.
const STS_VALID: u8 = 0x80;
const STS_COMMAND_READY: u8 = 0x40;
const STS_GO: u8 = 0x20;
const STS_DATA_AVAIL: u8 = 0x10;
const STS_EXPECT: u8 = 0x08;
const STS_SELF_TEST_DONE: u8 = 0x04;
const STS_RESPONSE_RETRY: u8 = 0x02;
/// TPM_STS byte 3: tpmFamily (bits 27:26) = 01, TPM 2.0.
const STS_FAMILY_TPM2: u8 = 0x04;
/// TPM_INTF_CAPABILITY: InterfaceVersion 011 (bits 30:28), 64-byte transfers (bits 10:9 =
/// 11), dynamic burstCount (bit 8 = 0), commandReady/stsValid/dataAvail/locality-change
/// interrupts and low level interrupts (bits 7, 4:3 = 10, 2, 1, 0).
pub(crate) const INTF_CAPABILITY: u32 = 0x3000_0697;
/// TPM_INTERFACE_ID: InterfaceType 0000 and InterfaceVersion 0000 (the PTP FIFO),
/// CapLocality (bit 8), CapFIFO (bit 13), InterfaceSelector 00 (FIFO); RID in bits 31:24.
const INTERFACE_ID: u32 = 0x0000_2100;
/// TPM_RC_FAILURE and TPM_RC_COMMAND_SIZE, for answers the model makes up.
const RC_FAILURE: u32 = 0x101;
const RC_COMMAND_SIZE: u32 = 0x142;

/// The FIFO interface states of the PTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// No command; commandReady = 0.
    Idle,
    /// Ready for a command; commandReady = 1.
    Ready,
    /// Receiving a command; expect = 1 until its size arrived.
    Reception,
    /// The TPM runs the command.
    Execution,
    /// The response can be read; dataAvail = 1 while bytes remain.
    Completion,
}

/// What a transaction addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// TPM_DATA_FIFO or TPM_XDATA_FIFO: every byte goes to the FIFO.
    Fifo,
    /// Byte-addressed registers starting at the header's offset.
    Regs,
}

fn kind(reg: u16) -> Kind {
    if matches!(reg, 0x24..=0x27 | 0x80..=0x83) {
        Kind::Fifo
    } else {
        Kind::Regs
    }
}

/// Registers only the active locality may use.
fn gated(reg: u16) -> bool {
    matches!(reg, 0x08..=0x0C | 0x10..=0x13 | 0x18..=0x1B | 0x24..=0x27 | 0x80..=0x83)
}

fn reg_name(reg: u16) -> &'static str {
    match reg {
        0x00 => "TPM_ACCESS",
        0x08..=0x0B => "TPM_INT_ENABLE",
        0x0C => "TPM_INT_VECTOR",
        0x10..=0x13 => "TPM_INT_STATUS",
        0x14..=0x17 => "TPM_INTF_CAPABILITY",
        0x18..=0x1B => "TPM_STS",
        0x24..=0x27 => "TPM_DATA_FIFO",
        0x30..=0x33 => "TPM_INTERFACE_ID",
        0x80..=0x83 => "TPM_XDATA_FIFO",
        0xF00..=0xF03 => "TPM_DID_VID",
        0xF04 => "TPM_RID",
        _ => "an unmapped register",
    }
}

/// A TPM response with only a header and response code `rc`.
fn bare_response(rc: u32) -> Vec<u8> {
    let mut r = vec![0x80, 0x01, 0, 0, 0, 10];
    r.extend_from_slice(&rc.to_be_bytes());
    r
}

/// The device behind the wire: registers, FIFO and the TPM worker.
#[derive(Debug)]
pub(crate) struct Chip {
    cfg: Config,
    active: Option<u8>,
    pending: [bool; 5],
    state: State,
    cmd: Vec<u8>,
    rsp: Vec<u8>,
    rsp_pos: usize,
    seq: u64,
    awaiting: Option<u64>,
    /// The fault bending the current command.
    fault: Option<Fault>,
    /// The stuck-wait-state fault is on.
    stuck: bool,
    /// EarlyDataAvail: the answer, held until the host has read a burst of 0xFF.
    held: Option<Vec<u8>>,
    /// EarlyDataAvail: the host has read from the FIFO before the answer existed.
    early_read: bool,
    /// FIFO bytes the host may still move under the last burstCount it read.
    budget: u32,
    /// A FIFO transaction ended and no STS read followed yet (for `zero_burst_after_fifo`).
    fifo_busy: bool,
    int_enable: [u32; 5],
    int_vector: [u8; 5],
    /// The current transaction is to a gated register of an inactive locality.
    dropped: bool,
    /// The current transaction exceeded the burst budget (reported once).
    over_budget: bool,
    snapshot: [u8; 64],
    wbuf: [u8; 64],
    backend: Backend,
}

impl Chip {
    /// A chip in Idle with no active locality, running commands on `backend`.
    pub(crate) fn new(cfg: Config, backend: Backend) -> Self {
        Self {
            cfg,
            active: None,
            pending: [false; 5],
            state: State::Idle,
            cmd: Vec::with_capacity(FRAME_CAP),
            rsp: Vec::new(),
            rsp_pos: 0,
            seq: 0,
            awaiting: None,
            fault: None,
            stuck: false,
            held: None,
            early_read: false,
            budget: 0,
            fifo_busy: false,
            int_enable: [0; 5],
            int_vector: [0; 5],
            dropped: false,
            over_budget: false,
            snapshot: [0xFF; 64],
            wbuf: [0; 64],
            backend,
        }
    }

    /// The FIFO state (for self-checks).
    pub(crate) fn state(&self) -> State {
        self.state
    }

    /// The active locality (for self-checks).
    pub(crate) fn active_locality(&self) -> Option<u8> {
        self.active
    }

    fn declared(&self) -> Option<usize> {
        let b = self.cmd.get(2..6)?;
        Some(usize::try_from(u32::from_be_bytes([b[0], b[1], b[2], b[3]])).unwrap_or(usize::MAX))
    }

    /// The command's declared size is known and reached (or impossible, so no more is taken).
    fn command_complete(&self) -> bool {
        self.declared()
            .is_some_and(|d| d <= self.cmd.len() || !(10..=FRAME_CAP).contains(&d))
    }

    fn response_limit(&self) -> usize {
        if self.fault == Some(Fault::DataAvailDrops) {
            self.rsp.len() / 2
        } else {
            self.rsp.len()
        }
    }

    fn data_avail(&self) -> bool {
        match self.state {
            State::Completion => self.rsp_pos < self.response_limit(),
            State::Execution => self.fault == Some(Fault::EarlyDataAvail),
            _ => false,
        }
    }

    fn burst(&self) -> u16 {
        let cap = |n: usize| {
            self.cfg
                .burst_count
                .min(u16::try_from(n).unwrap_or(u16::MAX))
        };
        let burst = match self.state {
            State::Ready | State::Reception => cap(FRAME_CAP.saturating_sub(self.cmd.len())),
            State::Completion => cap(self.response_limit().saturating_sub(self.rsp_pos)),
            State::Execution if self.fault == Some(Fault::EarlyDataAvail) => self.cfg.burst_count,
            State::Idle | State::Execution => 0,
        };
        if self.fifo_busy && self.cfg.zero_burst_after_fifo {
            0
        } else {
            burst
        }
    }

    /// TPM_STS as the active locality reads it.
    fn sts(&self) -> [u8; 4] {
        let mut b0 = STS_VALID | STS_SELF_TEST_DONE;
        if self.state == State::Ready {
            b0 |= STS_COMMAND_READY;
        }
        if self.data_avail() {
            b0 |= STS_DATA_AVAIL;
        }
        let stuck_expect = self.fault == Some(Fault::StuckExpect);
        if self.state == State::Reception && (!self.command_complete() || stuck_expect) {
            b0 |= STS_EXPECT;
        }
        let [lo, hi] = self.burst().to_le_bytes();
        [b0, lo, hi, STS_FAMILY_TPM2]
    }

    fn access(&self, l: u8) -> u8 {
        let mut v = ACCESS_VALID | ACCESS_ESTABLISHMENT;
        if self.active == Some(l) {
            v |= ACCESS_ACTIVE;
        }
        let others = self
            .pending
            .iter()
            .enumerate()
            .any(|(i, p)| *p && usize::from(l) != i);
        if others {
            v |= ACCESS_PENDING;
        }
        v
    }

    /// One register byte at offset `reg` of locality `l` (the host may read it).
    fn read_byte(&self, l: u8, reg: u16, sts: &[u8; 4]) -> Option<u8> {
        let li = usize::from(l);
        let byte = |v: u32, base: u16| v.to_le_bytes().get(usize::from(reg - base)).copied();
        let id = u32::from(self.cfg.device_id) << 16 | u32::from(self.cfg.vendor_id);
        match reg {
            0x00 => Some(self.access(l)),
            0x08..=0x0B => byte(*self.int_enable.get(li)?, 0x08),
            0x0C => self.int_vector.get(li).copied(),
            0x10..=0x13 => Some(0),
            0x14..=0x17 => byte(INTF_CAPABILITY, 0x14),
            0x18..=0x1B => sts.get(usize::from(reg - 0x18)).copied(),
            0x30..=0x33 => byte(INTERFACE_ID | u32::from(self.cfg.revision) << 24, 0x30),
            0xF00..=0xF03 => byte(id, 0xF00),
            0xF04 => Some(self.cfg.revision),
            _ => None,
        }
    }

    /// Takes answers the TPM worker has ready.
    fn poll(&mut self, shared: &mut Shared) {
        while let Some((seq, answer)) = self.backend.try_recv() {
            let gone = seq == u64::MAX;
            if gone || Some(seq) == self.awaiting {
                if self.awaiting.take().is_some() {
                    self.answered(shared, answer);
                }
            } else {
                shared.stats.late_answers += 1;
            }
            if gone {
                break;
            }
        }
    }

    /// The command in Execution got its answer.
    fn answered(&mut self, shared: &mut Shared, answer: Result<Vec<u8>, String>) {
        let rsp = match answer {
            // Execution never ends: dataAvail never comes.
            Ok(_) if self.fault == Some(Fault::NoResponse) => {
                shared.stats.withheld += 1;
                return;
            }
            // The host saw dataAvail before the answer existed; it comes after its first read.
            Ok(r) if self.fault == Some(Fault::EarlyDataAvail) && !self.early_read => {
                self.held = Some(r);
                return;
            }
            Ok(r) => r,
            Err(e) => {
                shared.record_backend_error(e);
                bare_response(RC_FAILURE)
            }
        };
        self.rsp = rsp;
        self.rsp_pos = 0;
        self.state = State::Completion;
    }

    fn fifo_write(&mut self, shared: &mut Shared, b: u8) {
        match self.state {
            State::Ready => {
                self.state = State::Reception;
                self.cmd.clear();
                if let Some(f) = shared.armed.take_if(|f| *f != Fault::StuckWaitState) {
                    shared.stats.faults_fired.push(f);
                    self.fault = Some(f);
                }
                self.cmd.push(b);
            }
            State::Reception if self.command_complete() => shared.protocol_error(format!(
                "FIFO write after the whole {}-byte command arrived (expect = 0)",
                self.cmd.len()
            )),
            State::Reception if self.cmd.len() >= FRAME_CAP => shared.protocol_error(format!(
                "FIFO write beyond the {FRAME_CAP}-byte command buffer"
            )),
            State::Reception => self.cmd.push(b),
            s => shared.protocol_error(format!(
                "FIFO write in state {s:?} (commandReady must be 1 before a command)"
            )),
        }
        shared.stats.fifo_bytes_in += 1;
    }

    fn fifo_read(&mut self, shared: &mut Shared) -> u8 {
        shared.stats.fifo_bytes_out += 1;
        match self.state {
            State::Completion => {
                if self.rsp_pos < self.response_limit()
                    && let Some(b) = self.rsp.get(self.rsp_pos).copied()
                {
                    self.rsp_pos += 1;
                    if self.rsp_pos == self.rsp.len() {
                        shared.stats.responses += 1;
                    }
                    return b;
                }
                if self.rsp_pos < self.rsp.len() {
                    shared.stats.lost_reads += 1;
                } else {
                    shared.protocol_error(format!(
                        "FIFO read after the whole {}-byte response was read (dataAvail = 0)",
                        self.rsp.len()
                    ));
                }
                0xFF
            }
            State::Execution if self.fault == Some(Fault::EarlyDataAvail) => {
                shared.stats.lost_reads += 1;
                0xFF
            }
            s => {
                shared.protocol_error(format!(
                    "FIFO read in state {s:?}: no response (dataAvail = 0)"
                ));
                0xFF
            }
        }
    }

    fn command_ready(&mut self, shared: &mut Shared) {
        match self.state {
            State::Idle | State::Ready => {
                self.state = State::Ready;
                self.cmd.clear();
                return;
            }
            State::Reception | State::Execution => shared.stats.aborts += 1,
            State::Completion if self.rsp_pos < self.rsp.len() => shared.stats.aborts += 1,
            State::Completion => {}
        }
        self.state = State::Idle;
        self.awaiting = None;
        self.held = None;
        self.early_read = false;
        self.cmd.clear();
        self.rsp.clear();
        self.rsp_pos = 0;
        if self.fault.take().is_some() {
            shared.stats.faults_cleared += 1;
        }
    }

    fn tpm_go(&mut self, shared: &mut Shared) {
        if self.state != State::Reception || !self.command_complete() {
            let got = self.cmd.len();
            shared.protocol_error(format!(
                "tpmGo in state {:?} with {got} of {:?} command bytes (ignored)",
                self.state,
                self.declared()
            ));
            return;
        }
        if self
            .declared()
            .is_none_or(|d| !(10..=FRAME_CAP).contains(&d))
        {
            self.rsp = bare_response(RC_COMMAND_SIZE);
            self.rsp_pos = 0;
            self.state = State::Completion;
            return;
        }
        self.seq += 1;
        shared.stats.commands += 1;
        match self.backend.send(self.seq, self.cmd.clone()) {
            Ok(()) => {
                self.awaiting = Some(self.seq);
                self.state = State::Execution;
            }
            Err(e) => {
                shared.record_backend_error(e);
                self.rsp = bare_response(RC_FAILURE);
                self.rsp_pos = 0;
                self.state = State::Completion;
            }
        }
    }

    fn sts_write(&mut self, shared: &mut Shared, b0: u8) {
        let actions = b0 & (STS_COMMAND_READY | STS_GO | STS_RESPONSE_RETRY);
        match actions {
            0 => {}
            STS_COMMAND_READY => self.command_ready(shared),
            STS_GO => self.tpm_go(shared),
            STS_RESPONSE_RETRY if self.state == State::Completion => self.rsp_pos = 0,
            STS_RESPONSE_RETRY => shared.protocol_error(format!(
                "responseRetry in state {:?} (no response to repeat)",
                self.state
            )),
            _ => shared.protocol_error(format!(
                "TPM_STS write {b0:#04x} sets more than one of commandReady, tpmGo, \
                 responseRetry (ignored)"
            )),
        }
    }

    fn access_write(&mut self, shared: &mut Shared, l: u8, v: u8) {
        let li = usize::from(l);
        let bits = v & (ACCESS_ACTIVE | ACCESS_BEEN_SEIZED | ACCESS_SEIZE | ACCESS_REQUEST_USE);
        match bits {
            0 | ACCESS_BEEN_SEIZED => {}
            ACCESS_REQUEST_USE => {
                shared.stats.locality_requests += 1;
                match self.active {
                    None => self.active = Some(l),
                    Some(a) if a == l => {}
                    Some(_) => {
                        if let Some(p) = self.pending.get_mut(li) {
                            *p = true;
                        }
                    }
                }
            }
            ACCESS_ACTIVE if self.active == Some(l) => {
                shared.stats.locality_releases += 1;
                self.active = None;
                if let Some(next) = (0..5u8).rev().find(|i| self.pending[usize::from(*i)]) {
                    self.pending[usize::from(next)] = false;
                    self.active = Some(next);
                }
            }
            ACCESS_ACTIVE => {
                if let Some(p) = self.pending.get_mut(li) {
                    *p = false;
                }
            }
            ACCESS_SEIZE => shared.protocol_error(format!(
                "TPM_ACCESS Seize from locality {l}: a driver using one locality never seizes"
            )),
            _ => shared.protocol_error(format!(
                "TPM_ACCESS write {v:#04x} from locality {l} sets more than one bit (ignored)"
            )),
        }
    }

    /// Applies a complete register write of `len` bytes from `wbuf`.
    fn apply_writes(&mut self, shared: &mut Shared, l: u8, reg: u16, len: usize) {
        let li = usize::from(l);
        for i in 0..len {
            let Some(&v) = self.wbuf.get(i) else { break };
            let at = reg.saturating_add(u16::try_from(i).unwrap_or(u16::MAX));
            match at {
                0x00 => self.access_write(shared, l, v),
                0x08..=0x0B => {
                    if let Some(r) = self.int_enable.get_mut(li) {
                        let mut b = r.to_le_bytes();
                        b[usize::from(at - 0x08)] = v;
                        *r = u32::from_le_bytes(b);
                    }
                }
                0x0C => {
                    if let Some(r) = self.int_vector.get_mut(li) {
                        *r = v;
                    }
                }
                // INT_STATUS is write-1-to-clear and nothing is ever set; burstCount is
                // read-only; INTERFACE_ID's selector bits are accepted and ignored.
                0x10..=0x13 | 0x19 | 0x1A | 0x30..=0x33 => {}
                0x18 => self.sts_write(shared, v),
                0x1B => {} // commandCancel / resetEstablishment: nothing to cancel or reset
                0x14..=0x17 | 0xF00..=0xF04 => shared.protocol_error(format!(
                    "write to read-only {} (offset {at:#05x})",
                    reg_name(at)
                )),
                _ => shared.stats.unmapped += 1,
            }
        }
    }
}
