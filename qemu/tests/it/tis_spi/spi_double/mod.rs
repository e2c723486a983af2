//! SPI test double: an in-memory TPM on a TIS-over-SPI bus, in front of a real swtpm.
//!
//! An independent reading of the TCG PC Client Platform TPM Profile (PTP): its FIFO
//! interface ([`chip`]) behind its SPI framing ([`wire`]), running whole commands on swtpm
//! through a plain TCP socket ([`backend`]). It implements the agent's `SpiBus` trait and so
//! sits where a spidev device would, under the agent's `SpiTis`/`Tis` driver.
//!
//! Must never: share code with the agent's TIS driver or its transports (the point is two
//! readings of the PTP that meet only at the bus), panic or hang on any byte stream the host
//! clocks, or hide a protocol violation: every one is counted in [`Stats`] with a message.
//!
//! Configuration ([`Config`]): wait states per transaction, burstCount, identity registers,
//! and an optional transient burstCount of 0 after each FIFO transaction. Faults ([`Fault`])
//! are armed through a [`Probe`] and bend the next command only.

mod backend;
mod chip;
mod wire;

mod checks;

use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use backend::Backend;
use chip::{Chip, Ctx};
pub(crate) use chip::{INTF_CAPABILITY, State};
use wire::Wire;

/// How many protocol-error messages [`Stats`] keeps (the count goes on).
const ERRORS_KEPT: usize = 32;

/// The device's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Config {
    /// Wait states in every transaction: the host polls this many bytes after the header.
    pub(crate) wait_states: u8,
    /// The burstCount the FIFO reports (capped by space or data left).
    pub(crate) burst_count: u16,
    /// TPM_DID_VID vendor id.
    pub(crate) vendor_id: u16,
    /// TPM_DID_VID device id.
    pub(crate) device_id: u16,
    /// TPM_RID.
    pub(crate) revision: u8,
    /// Report burstCount 0 at the first TPM_STS read after each FIFO transaction (a chip
    /// still moving the last burst); the host must read TPM_STS again.
    pub(crate) zero_burst_after_fifo: bool,
}

impl Default for Config {
    /// No wait states, 64-byte bursts, an Infineon SLB9670's identity.
    fn default() -> Self {
        Self {
            wait_states: 0,
            burst_count: 64,
            vendor_id: 0x15D1,
            device_id: 0x001B,
            revision: 0x16,
            zero_burst_after_fifo: false,
        }
    }
}

/// A fault injected into the next command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// expect stays 1 after the command's last byte (the chip seems to want more).
    StuckExpect,
    /// dataAvail and a burstCount are raised at tpmGo, before the response exists; the host's
    /// first FIFO read transaction gets 0xFF, and the real response starts with the next one
    /// (a chip whose status logic races its execution engine).
    EarlyDataAvail,
    /// dataAvail drops to 0 after half the response was read; the rest reads 0xFF (a chip
    /// that lost its response buffer).
    DataAvailDrops,
    /// swtpm's answer is withheld: Execution never ends, dataAvail never comes.
    NoResponse,
    /// Wait states never end, for every transaction from the next one on, until the host
    /// gives up on one (releases chip select during the wait).
    StuckWaitState,
}

/// What the device saw. Counters only grow; [`Probe::take_stats`] resets them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Stats {
    /// Transactions with a valid header.
    pub(crate) transactions: u64,
    /// Read transactions.
    pub(crate) reads: u64,
    /// Write transactions.
    pub(crate) writes: u64,
    /// Transactions in which the device inserted wait states.
    pub(crate) waited_transactions: u64,
    /// Poll bytes the host clocked during wait states.
    pub(crate) wait_bytes: u64,
    /// Transactions the host gave up during wait states.
    pub(crate) abandoned: u64,
    /// Largest data size of a transaction.
    pub(crate) max_size: usize,
    /// Bytes written to the FIFO.
    pub(crate) fifo_bytes_in: u64,
    /// Bytes read from the FIFO.
    pub(crate) fifo_bytes_out: u64,
    /// Commands started with tpmGo.
    pub(crate) commands: u64,
    /// Responses read to their last byte.
    pub(crate) responses: u64,
    /// Commands aborted with commandReady before their response was read.
    pub(crate) aborts: u64,
    /// TPM_ACCESS requestUse writes.
    pub(crate) locality_requests: u64,
    /// TPM_ACCESS activeLocality writes that released the active locality.
    pub(crate) locality_releases: u64,
    /// TPM_STS reads that reported burstCount 0 because of `zero_burst_after_fifo`.
    pub(crate) zero_bursts: u64,
    /// Responses withheld by the NoResponse fault.
    pub(crate) withheld: u64,
    /// FIFO reads answered 0xFF because of a dataAvail fault.
    pub(crate) lost_reads: u64,
    /// Answers from the TPM for commands that were aborted meanwhile.
    pub(crate) late_answers: u64,
    /// Register bytes outside every register the model knows.
    pub(crate) unmapped: u64,
    /// Faults that took effect, in order.
    pub(crate) faults_fired: Vec<Fault>,
    /// Faults that ended (their command was aborted or finished, or the host gave up).
    pub(crate) faults_cleared: u64,
    /// Protocol violations by the host.
    pub(crate) protocol_errors: u64,
    /// The first [`ERRORS_KEPT`] violation messages.
    pub(crate) errors: Vec<String>,
    /// Failures talking to the TPM behind the model (the first few).
    pub(crate) backend_errors: Vec<String>,
    /// Chip select is asserted right now.
    pub(crate) selected: bool,
}

/// State shared between the device and its probes.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    stats: Stats,
    armed: Option<Fault>,
}

impl Shared {
    fn protocol_error(&mut self, what: String) {
        self.stats.protocol_errors += 1;
        if self.stats.errors.len() < ERRORS_KEPT {
            self.stats.errors.push(what);
        }
    }

    fn record_backend_error(&mut self, what: String) {
        if self.stats.backend_errors.len() < ERRORS_KEPT {
            self.stats.backend_errors.push(what);
        }
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The device on the bus: owned by the driver under test.
#[derive(Debug)]
pub(crate) struct SpiDouble {
    wire: Wire,
    chip: Chip,
    shared: Arc<Mutex<Shared>>,
}

/// A handle the test keeps to watch the device and arm faults while the driver owns it.
#[derive(Debug, Clone)]
pub(crate) struct Probe {
    shared: Arc<Mutex<Shared>>,
}

impl SpiDouble {
    /// A device running its commands on the swtpm listening on `127.0.0.1:port`.
    ///
    /// # Errors
    /// If the swtpm port cannot be connected or the worker thread cannot start.
    pub(crate) fn swtpm(port: u16, cfg: Config) -> io::Result<(Self, Probe)> {
        Ok(Self::new(cfg, Backend::swtpm(port)?))
    }

    /// A device running its commands on `tpm` (self-checks without swtpm).
    ///
    /// # Errors
    /// If the worker thread cannot start.
    pub(crate) fn with_tpm(
        cfg: Config,
        tpm: impl FnMut(&[u8]) -> Result<Vec<u8>, String> + Send + 'static,
    ) -> io::Result<(Self, Probe)> {
        Ok(Self::new(cfg, Backend::spawn(tpm)?))
    }

    fn new(cfg: Config, backend: Backend) -> (Self, Probe) {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let probe = Probe {
            shared: Arc::clone(&shared),
        };
        let dev = Self {
            wire: Wire::new(),
            chip: Chip::new(cfg, backend),
            shared,
        };
        (dev, probe)
    }

    /// One full-duplex transfer: `buf` is clocked out on MOSI and replaced with MISO. Chip
    /// select is asserted for it and released at its end unless `keep_selected`; an empty
    /// `buf` with `keep_selected == false` only releases it.
    pub(crate) fn transfer(&mut self, buf: &mut [u8], keep_selected: bool) {
        let mut shared = lock(&self.shared);
        let mut ctx = Ctx {
            chip: &mut self.chip,
            shared: &mut shared,
        };
        self.wire.transfer(&mut ctx, buf, keep_selected);
        shared.stats.selected = self.wire.selected();
    }

    /// The FIFO state.
    pub(crate) fn state(&self) -> State {
        self.chip.state()
    }

    /// The active locality.
    pub(crate) fn active_locality(&self) -> Option<u8> {
        self.chip.active_locality()
    }
}

impl Probe {
    /// A copy of the statistics so far.
    pub(crate) fn stats(&self) -> Stats {
        lock(&self.shared).stats.clone()
    }

    /// The statistics so far; the counters start again from zero.
    pub(crate) fn take_stats(&self) -> Stats {
        let mut shared = lock(&self.shared);
        let selected = shared.stats.selected;
        let stats = std::mem::take(&mut shared.stats);
        shared.stats.selected = selected;
        stats
    }

    /// Arms `fault` for the next command (replacing one armed and not yet fired).
    pub(crate) fn arm(&self, fault: Fault) {
        lock(&self.shared).armed = Some(fault);
    }

    /// The fault armed and not yet fired.
    pub(crate) fn armed(&self) -> Option<Fault> {
        lock(&self.shared).armed
    }
}
