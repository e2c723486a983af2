//! The agent's own TIS driver: a TPM behind the TCG PC Client PTP FIFO interface, reached
//! without a kernel TPM driver, over SPI (`spi:/dev/spidevB.C`) or memory-mapped registers
//! (`tis-mmio:0xADDR`).
//!
//! Layering: [`Tis`] is the TIS state machine (localities, TPM_STS commandReady / tpmGo /
//! dataAvail / expect, burstCount chunks through TPM_DATA_FIFO, timeouts A/B/C/D, recovery by
//! commandReady after any failed command) and implements [`Transport`]. It reaches the
//! registers only through the small [`TisRegisters`] trait and knows nothing about the bus.
//! [`spi::SpiTis`] frames register accesses for SPI; [`Spidev`] and [`Mmio`] (module `sys`,
//! the only unsafe code) reach the hardware.
//!
//! The driver polls (no interrupts) with a short spin and then 1 ms sleeps, so it never burns a
//! core. It never trusts a register value to bound a loop or an allocation: every wait ends at
//! its timeout, burst counts are clamped to what remains, and the response size comes from
//! the checked header. It never parses payloads.

pub mod regs;
pub mod spi;
mod sys;
#[cfg(test)]
mod tests;

pub use sys::{Mmio, Spidev};

use std::io;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use regs::{
    ACCESS, ACCESS_ACTIVE_LOCALITY, ACCESS_REQUEST_USE, ACCESS_VALID, DATA_FIFO, DID_VID,
    FAMILY_TPM2, INTF_CAPABILITY, RID, STS, STS_COMMAND_READY, STS_DATA_AVAIL, STS_EXPECT, STS_GO,
    STS_VALID, Status,
};
use spi::SpiTis;

use super::{FRAME_MAX, HEADER_LEN, Transport, TransportError, frame_size};

/// Register access at a TIS register address of a locality. For the FIFO registers
/// (TPM_DATA_FIFO 0x24, TPM_XDATA_FIFO 0x80) all N bytes go through the FIFO; for other
/// registers the N bytes are the register's bytes from `reg` on (little-endian contents).
pub trait TisRegisters {
    /// Reads `buf.len()` bytes at `reg` of `locality`.
    ///
    /// # Errors
    /// Whatever the bus reports (a SPI wait state held too long is `TimedOut`).
    fn read(&mut self, locality: u8, reg: u16, buf: &mut [u8]) -> io::Result<()>;
    /// Writes `data` at `reg` of `locality`.
    ///
    /// # Errors
    /// Whatever the bus reports.
    fn write(&mut self, locality: u8, reg: u16, data: &[u8]) -> io::Result<()>;
}

impl<R: TisRegisters + ?Sized> TisRegisters for &mut R {
    fn read(&mut self, locality: u8, reg: u16, buf: &mut [u8]) -> io::Result<()> {
        (**self).read(locality, reg, buf)
    }
    fn write(&mut self, locality: u8, reg: u16, data: &[u8]) -> io::Result<()> {
        (**self).write(locality, reg, data)
    }
}

impl<R: TisRegisters + ?Sized> TisRegisters for Box<R> {
    fn read(&mut self, locality: u8, reg: u16, buf: &mut [u8]) -> io::Result<()> {
        (**self).read(locality, reg, buf)
    }
    fn write(&mut self, locality: u8, reg: u16, data: &[u8]) -> io::Result<()> {
        (**self).write(locality, reg, data)
    }
}

/// The TIS timeouts (TCG PC Client PTP, "Timeouts": TIMEOUT_A..D) and the command duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TIMEOUT_A: locality 0 granted after requestUse (at open).
    pub a: Duration,
    /// TIMEOUT_B: commandReady after writing commandReady (before a command, and when
    /// aborting one).
    pub b: Duration,
    /// TIMEOUT_C: stsValid after each FIFO chunk written or read, and after the response.
    pub c: Duration,
    /// TIMEOUT_D: a non-zero burstCount before each FIFO chunk.
    pub d: Duration,
    /// dataAvail after tpmGo: the command's execution time.
    pub command: Duration,
}

impl Default for Timeouts {
    /// The PTP defaults (A 750 ms, B 2 s, C 200 ms, D 30 ms) and 120 s per command (Linux's
    /// TPM2_DURATION_DEFAULT: RSA key generation on a slow chip takes tens of seconds).
    fn default() -> Self {
        Self {
            a: Duration::from_millis(750),
            b: Duration::from_millis(2000),
            c: Duration::from_millis(200),
            d: Duration::from_millis(30),
            command: Duration::from_secs(120),
        }
    }
}

/// What the TPM says about itself at open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TisInfo {
    /// TPM_DID_VID bits 15:0 (PCI vendor ID).
    pub vendor_id: u16,
    /// TPM_DID_VID bits 31:16.
    pub device_id: u16,
    /// TPM_RID.
    pub revision: u8,
    /// TPM_INTF_CAPABILITY.
    pub intf_capability: u32,
}

impl TisInfo {
    /// The vendor's name for logs ([`vendor_name`]).
    #[must_use]
    pub fn vendor(&self) -> &'static str {
        vendor_name(self.vendor_id)
    }
}

/// Names the TPM vendors we know by their TPM_DID_VID vendor ID (for logs only).
#[must_use]
pub fn vendor_name(vendor_id: u16) -> &'static str {
    match vendor_id {
        0x15D1 => "Infineon",
        0x1050 => "Nuvoton (Winbond)",
        0x1114 => "Microchip (Atmel)",
        0x104A => "STMicroelectronics",
        0x1014 => "IBM (QEMU tpm-tis)",
        0x1AE0 => "Google",
        0x8086 => "Intel",
        0x1414 => "Microsoft",
        _ => "unknown vendor",
    }
}

/// The locality the agent uses.
const LOCALITY: u8 = 0;
/// Polls spin (yielding) this long before they start sleeping.
const SPIN: Duration = Duration::from_micros(100);
/// Sleep between polls after the spin.
const NAP: Duration = Duration::from_millis(1);

/// A TPM behind the TIS FIFO interface, at locality 0. One command per
/// [`Transport::transact`]; dropping it returns the TPM to commandReady and releases the
/// locality (best effort).
#[derive(Debug)]
pub struct Tis<R: TisRegisters> {
    regs: R,
    device: String,
    timeouts: Timeouts,
    info: TisInfo,
    /// Whether we hold (or requested) locality 0, so Drop must give it back.
    owned: bool,
}

impl<R: TisRegisters> Tis<R> {
    /// Requests locality 0 (TPM_ACCESS requestUse, wait activeLocality|tpmRegValidSts, timeout
    /// A), reads DID_VID, RID and INTF_CAPABILITY, checks TPM_STS.tpmFamily is TPM 2.0,
    /// logs the vendor at info (`log`), and leaves the TPM in commandReady.
    ///
    /// # Errors
    /// [`TransportError::Protocol`] if nothing answers (DID_VID all ones or zeros) or the TPM
    /// is not a TPM 2.0; [`TransportError::Timeout`] if the locality or commandReady is not
    /// granted in time; [`TransportError::Io`] if the bus fails.
    pub fn open(
        regs: R,
        device: impl Into<String>,
        timeouts: Timeouts,
    ) -> Result<Self, TransportError> {
        let mut tis = Self {
            regs,
            device: device.into(),
            timeouts,
            info: TisInfo {
                vendor_id: 0,
                device_id: 0,
                revision: 0,
                intf_capability: 0,
            },
            owned: false,
        };
        // DID_VID first: it is readable without a locality, and all ones (a floating bus,
        // nothing at the address) would otherwise look like a granted locality.
        let did_vid = tis.read_u32(DID_VID, "read TPM_DID_VID")?;
        if did_vid == u32::MAX || did_vid == 0 {
            return Err(tis.protocol(format!(
                "no TPM answers there (DID_VID reads 0x{did_vid:08X}): check the wiring / address"
            )));
        }
        tis.request_locality()?;
        let mut rid = [0u8];
        tis.read(RID, &mut rid, "read TPM_RID")?;
        let intf_capability = tis.read_u32(INTF_CAPABILITY, "read TPM_INTF_CAPABILITY")?;
        let [v0, v1, d0, d1] = did_vid.to_le_bytes();
        tis.info = TisInfo {
            vendor_id: u16::from_le_bytes([v0, v1]),
            device_id: u16::from_le_bytes([d0, d1]),
            revision: rid[0],
            intf_capability,
        };
        let sts = tis.status()?;
        if sts.family() != FAMILY_TPM2 {
            let family = match sts.family() {
                0 => "TPM 1.2",
                _ => "reserved",
            };
            return Err(tis.protocol(format!(
                "TPM_STS.tpmFamily is {} ({family}), not TPM 2.0: the agent needs a TPM 2.0",
                sts.family()
            )));
        }
        if !sts.has(STS_COMMAND_READY) {
            tis.make_ready()?;
        }
        let i = tis.info;
        log::info!(
            "TPM {}: {} TIS TPM (vendor 0x{:04x}, device 0x{:04x}, revision {}, interface \
             capability 0x{:08x})",
            tis.device,
            i.vendor(),
            i.vendor_id,
            i.device_id,
            i.revision,
            i.intf_capability
        );
        Ok(tis)
    }

    /// What the TPM reported at open.
    #[must_use]
    pub fn info(&self) -> TisInfo {
        self.info
    }

    /// The device name used in errors and logs.
    #[must_use]
    pub fn device(&self) -> &str {
        &self.device
    }

    fn io(&self, op: &'static str, source: io::Error) -> TransportError {
        TransportError::Io {
            op,
            device: self.device.clone(),
            source,
        }
    }

    fn protocol(&self, what: String) -> TransportError {
        TransportError::Protocol {
            device: self.device.clone(),
            what,
        }
    }

    fn timeout(&self, op: &'static str) -> TransportError {
        TransportError::Timeout {
            op,
            device: self.device.clone(),
        }
    }

    fn read(&mut self, reg: u16, buf: &mut [u8], op: &'static str) -> Result<(), TransportError> {
        self.regs
            .read(LOCALITY, reg, buf)
            .map_err(|e| self.io(op, e))
    }

    fn write(&mut self, reg: u16, data: &[u8], op: &'static str) -> Result<(), TransportError> {
        self.regs
            .write(LOCALITY, reg, data)
            .map_err(|e| self.io(op, e))
    }

    fn read_u32(&mut self, reg: u16, op: &'static str) -> Result<u32, TransportError> {
        let mut b = [0u8; 4];
        self.read(reg, &mut b, op)?;
        Ok(u32::from_le_bytes(b))
    }

    fn status(&mut self) -> Result<Status, TransportError> {
        self.read_u32(STS, "read TPM_STS").map(Status)
    }

    /// Polls `check` until it yields a value or `timeout` passes (then `op` times out). The
    /// first poll is immediate; later ones yield for [`SPIN`], then sleep [`NAP`].
    fn poll<T>(
        &mut self,
        timeout: Duration,
        op: &'static str,
        mut check: impl FnMut(&mut Self) -> Result<Option<T>, TransportError>,
    ) -> Result<T, TransportError> {
        let start = Instant::now();
        loop {
            if let Some(v) = check(self)? {
                return Ok(v);
            }
            let elapsed = start.elapsed();
            if elapsed >= timeout {
                return Err(self.timeout(op));
            }
            if elapsed < SPIN {
                thread::yield_now();
            } else {
                thread::sleep(NAP.min(timeout.saturating_sub(elapsed)));
            }
        }
    }

    /// Waits until every bit of `mask` is set in the status byte.
    fn wait(
        &mut self,
        mask: u8,
        timeout: Duration,
        op: &'static str,
    ) -> Result<Status, TransportError> {
        self.poll(timeout, op, |t| {
            Ok(Some(t.status()?).filter(|s| s.has(mask)))
        })
    }

    /// Waits (TIMEOUT_D) for a non-zero burstCount.
    fn burst_count(&mut self) -> Result<usize, TransportError> {
        let d = self.timeouts.d;
        self.poll(d, "wait for burstCount", |t| {
            Ok(Some(usize::from(t.status()?.burst_count())).filter(|&n| n > 0))
        })
    }

    fn request_locality(&mut self) -> Result<(), TransportError> {
        let granted = ACCESS_VALID | ACCESS_ACTIVE_LOCALITY;
        let mut access = [0u8];
        self.read(ACCESS, &mut access, "read TPM_ACCESS")?;
        if access[0] & granted == granted {
            self.owned = true;
            return Ok(());
        }
        self.write(ACCESS, &[ACCESS_REQUEST_USE], "request locality 0")?;
        self.owned = true;
        let a = self.timeouts.a;
        self.poll(a, "request locality 0", |t| {
            let mut access = [0u8];
            t.read(ACCESS, &mut access, "read TPM_ACCESS")?;
            Ok((access[0] & granted == granted).then_some(()))
        })
    }

    /// Writes commandReady and waits (TIMEOUT_B) until the TPM reports it.
    fn make_ready(&mut self) -> Result<Status, TransportError> {
        self.write(STS, &[STS_COMMAND_READY], "write commandReady")?;
        let b = self.timeouts.b;
        self.wait(STS_COMMAND_READY, b, "wait for commandReady")
    }

    /// The burstCount of `sts`, or if that is 0 a fresh non-zero one (TIMEOUT_D).
    fn burst_from(&mut self, sts: Status) -> Result<usize, TransportError> {
        match sts.burst_count() {
            0 => self.burst_count(),
            n => Ok(usize::from(n)),
        }
    }

    /// Sends `cmd` through the FIFO and starts it (tpmGo).
    fn send(&mut self, cmd: &[u8]) -> Result<(), TransportError> {
        let Some((&last, body)) = cmd.split_last() else {
            return Err(self.protocol("refusing to send an empty command".to_owned()));
        };
        let mut sts = self.status()?;
        if !sts.has(STS_COMMAND_READY) {
            sts = self.make_ready()?;
        }
        let total = cmd.len();
        let c = self.timeouts.c;
        let mut sent = 0;
        // Every chunk, the last byte included, goes out only after a status read showed a
        // non-zero burstCount; the status read after each chunk serves the next one.
        while let Some(rest) = body.get(sent..).filter(|r| !r.is_empty()) {
            // Never trust burstCount beyond what remains (0xFFFF is fine).
            let n = self.burst_from(sts)?.min(rest.len());
            self.write(
                DATA_FIFO,
                rest.get(..n).unwrap_or_default(),
                "write command",
            )?;
            sent += n;
            sts = self.wait(STS_VALID, c, "wait for stsValid")?;
            if !sts.has(STS_EXPECT) {
                return Err(self.protocol(format!(
                    "TPM stopped expecting data after {sent} of the {total} command bytes"
                )));
            }
        }
        self.burst_from(sts)?;
        self.write(DATA_FIFO, &[last], "write command")?;
        let sts = self.wait(STS_VALID, c, "wait for stsValid")?;
        if sts.has(STS_EXPECT) {
            return Err(self.protocol(format!(
                "TPM still expects data after the whole {total}-byte command"
            )));
        }
        self.write(STS, &[STS_GO], "write tpmGo")
    }

    /// Reads response bytes `rsp[from..to]` in burstCount chunks, checking dataAvail before
    /// each chunk.
    fn receive_into(
        &mut self,
        rsp: &mut [u8; FRAME_MAX],
        from: usize,
        to: usize,
    ) -> Result<(), TransportError> {
        let c = self.timeouts.c;
        let mut got = from;
        while got < to {
            let sts = self.wait(STS_VALID, c, "wait for stsValid")?;
            if !sts.has(STS_DATA_AVAIL) {
                return Err(self.protocol(format!(
                    "TPM cleared dataAvail after {got} response bytes ({to} expected)"
                )));
            }
            let n = self.burst_from(sts)?.min(to - got);
            let Some(buf) = rsp.get_mut(got..got + n) else {
                return Err(self.protocol(format!("response larger than {FRAME_MAX} bytes")));
            };
            self.read(DATA_FIFO, buf, "read response")?;
            got += n;
        }
        Ok(())
    }

    /// Waits for the response, reads it, checks nothing is left, and returns to commandReady.
    fn receive(&mut self, rsp: &mut [u8; FRAME_MAX]) -> Result<usize, TransportError> {
        let command = self.timeouts.command;
        self.wait(
            STS_VALID | STS_DATA_AVAIL,
            command,
            "wait for the response (dataAvail)",
        )?;
        self.receive_into(rsp, 0, HEADER_LEN)?;
        let size = frame_size(rsp.get(..HEADER_LEN).unwrap_or_default(), &self.device)?;
        self.receive_into(rsp, HEADER_LEN, size)?;
        let c = self.timeouts.c;
        let sts = self.wait(STS_VALID, c, "wait for stsValid")?;
        if sts.has(STS_DATA_AVAIL) {
            return Err(self.protocol(format!(
                "TPM has more response data than the {size} bytes its header declared"
            )));
        }
        self.write(STS, &[STS_COMMAND_READY], "write commandReady")?;
        Ok(size)
    }

    /// After a failed command: writing commandReady aborts whatever the TPM is doing (PTP
    /// FIFO state machine). No wait here, as in Linux's tpm_tis: a chip that goes to Idle on
    /// the abort only reports commandReady after a second write, which the next command's
    /// [`Self::send`] makes (bounded by TIMEOUT_B). Waiting here would add TIMEOUT_B to every
    /// failed command on such chips. Best effort; the caller reports the original error.
    fn abort(&mut self) {
        if let Err(e) = self.write(STS, &[STS_COMMAND_READY], "write commandReady") {
            log::warn!(
                "TPM {}: could not abort the failed command ({e}); the next command will try \
                 again",
                self.device
            );
        }
    }
}

impl<R: TisRegisters> Transport for Tis<R> {
    fn transact(&mut self, cmd: &[u8], rsp: &mut [u8; FRAME_MAX]) -> Result<usize, TransportError> {
        if cmd.len() > FRAME_MAX {
            return Err(TransportError::CommandTooLong { len: cmd.len() });
        }
        let result = self.send(cmd).and_then(|()| self.receive(rsp));
        if let Err(e) = &result {
            log::debug!("TPM {}: command failed ({e}); aborting it", self.device);
            self.abort();
        }
        result
    }
}

impl<R: TisRegisters> Drop for Tis<R> {
    fn drop(&mut self) {
        if self.owned {
            // Best effort, no waiting: leave the TPM ready and free the locality.
            let _ = self.regs.write(LOCALITY, STS, &[STS_COMMAND_READY]);
            let _ = self.regs.write(LOCALITY, ACCESS, &[ACCESS_ACTIVE_LOCALITY]);
        }
    }
}

/// Opens a TPM on a spidev node at `hz` as a [`Transport`]; `device` names it in errors.
///
/// # Errors
/// [`TransportError::Open`] naming what to do when the node cannot be opened or configured;
/// otherwise as [`Tis::open`].
pub fn open_spi(
    path: &Path,
    hz: u32,
    device: String,
) -> Result<Tis<SpiTis<Spidev>>, TransportError> {
    let bus = Spidev::open(path, hz).map_err(|source| TransportError::Open {
        hint: match source.kind() {
            io::ErrorKind::NotFound => {
                "no such spidev node: enable SPI (dtparam=spi=on) and do not load tpm_tis_spi \
                 on this chip select"
            }
            io::ErrorKind::PermissionDenied => {
                "permission denied: run the agent as root or give its user access to the \
                 spidev node"
            }
            _ => {
                "the node refused SPI mode 0, 8 bits per word or the clock: check it is a \
                  spidev node and the controller supports the speed"
            }
        },
        device: device.clone(),
        source,
    })?;
    Tis::open(SpiTis::new(bus), device, Timeouts::default())
}

/// Opens a memory-mapped TIS at physical address `addr` through `/dev/mem` as a
/// [`Transport`]; `device` names it in errors.
///
/// # Errors
/// [`TransportError::Open`] naming what to do when `/dev/mem` cannot be opened or mapped;
/// otherwise as [`Tis::open`].
pub fn open_mmio(addr: u64, device: String) -> Result<Tis<Mmio>, TransportError> {
    let regs = Mmio::open(addr).map_err(|source| TransportError::Open {
        hint: match source.kind() {
            io::ErrorKind::PermissionDenied => {
                "/dev/mem needs root and a kernel without CONFIG_IO_STRICT_DEVMEM claiming the \
                 region; unload tpm_tis"
            }
            io::ErrorKind::NotFound => "/dev/mem does not exist: the kernel needs CONFIG_DEVMEM",
            io::ErrorKind::InvalidInput => "bad TIS address",
            _ => {
                "cannot map the TIS registers: check the address against the device tree \
                  (the tpm-tis-device reg property)"
            }
        },
        device: device.clone(),
        source,
    })?;
    Tis::open(regs, device, Timeouts::default())
}
