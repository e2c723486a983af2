//! TIS over SPI (TCG PC Client PTP, "SPI Hardware Protocol"): the TIS registers behind a
//! 4-byte header per transaction, with flow control by wait states.
//!
//! One register access of n bytes (1..=[`MAX_TRANSFER`]) is one transaction with chip select
//! held throughout: the header `[R/W | n-1] [0xD4 | locality] [addr hi] [addr lo]`, then while
//! the TPM drives MISO bit 0 low during the last header byte, single wait-state bytes until it
//! drives it high (at most `max_wait_polls`), then the n data bytes. Longer accesses are split
//! into transactions of at most 64 bytes (FIFO registers at the same address, other registers
//! at increasing addresses). This module knows framing only: no TIS state, no unsafe code, and
//! it never loops on a value the TPM sends without a bound.

use std::io;

use super::TisRegisters;
use super::regs::{self, LOCALITIES, LOCALITY_SIZE};

/// Largest data phase of one TIS-over-SPI transaction.
pub const MAX_TRANSFER: usize = 64;
/// Default bound on wait-state bytes per transaction (Linux's tpm_tis_spi uses 50).
pub const DEFAULT_MAX_WAIT_POLLS: u32 = 50;
/// Base of the TPM's SPI address space (locality 0, register 0).
pub const ADDRESS_BASE: u32 = 0x00D4_0000;

/// One full-duplex SPI transfer: clocks `buf` out on MOSI and replaces it with what came in
/// on MISO. Chip select is asserted for the transfer (if not already) and stays asserted
/// after it when `keep_selected` is true; otherwise it is released at the end.
/// An empty `buf` with `keep_selected == false` only releases chip select.
pub trait SpiBus {
    /// Runs one transfer.
    ///
    /// # Errors
    /// Whatever the bus reports.
    fn transfer(&mut self, buf: &mut [u8], keep_selected: bool) -> io::Result<()>;
}

impl<B: SpiBus + ?Sized> SpiBus for &mut B {
    fn transfer(&mut self, buf: &mut [u8], keep_selected: bool) -> io::Result<()> {
        (**self).transfer(buf, keep_selected)
    }
}

impl<B: SpiBus + ?Sized> SpiBus for Box<B> {
    fn transfer(&mut self, buf: &mut [u8], keep_selected: bool) -> io::Result<()> {
        (**self).transfer(buf, keep_selected)
    }
}

/// The TIS registers of a TPM on an SPI bus.
#[derive(Debug)]
pub struct SpiTis<B: SpiBus> {
    bus: B,
    max_wait_polls: u32,
}

impl<B: SpiBus> SpiTis<B> {
    /// Wraps a bus whose chip select addresses the TPM; waits at most
    /// [`DEFAULT_MAX_WAIT_POLLS`] wait-state bytes per transaction.
    pub fn new(bus: B) -> Self {
        Self {
            bus,
            max_wait_polls: DEFAULT_MAX_WAIT_POLLS,
        }
    }

    /// Sets the bound on wait-state bytes per transaction.
    #[must_use]
    pub fn with_max_wait_polls(self, n: u32) -> Self {
        Self {
            max_wait_polls: n,
            ..self
        }
    }

    /// Gives the bus back.
    pub fn into_inner(self) -> B {
        self.bus
    }

    /// One transaction: header, wait states, data phase. Releases chip select on failure.
    fn transaction(&mut self, read: bool, address: u32, data: &mut [u8]) -> io::Result<()> {
        let result = self.transaction_inner(read, address, data);
        if result.is_err() {
            // Best effort: a failed transfer may have left chip select asserted.
            let _ = self.bus.transfer(&mut [], false);
        }
        result
    }

    fn transaction_inner(&mut self, read: bool, address: u32, data: &mut [u8]) -> io::Result<()> {
        let mut h = header(read, address, data.len())?;
        self.bus.transfer(&mut h, true)?;
        if h[3] & 1 == 0 {
            let mut polls = 0u32;
            loop {
                if polls >= self.max_wait_polls {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "TPM on SPI held its wait state for {polls} polls (address \
                             {address:#08x}): check the SPI mode (0) and speed"
                        ),
                    ));
                }
                polls += 1;
                let mut b = [0u8];
                self.bus.transfer(&mut b, true)?;
                if b[0] & 1 == 1 {
                    break;
                }
            }
        }
        if !read {
            return self.bus.transfer(data, false);
        }
        data.fill(0);
        self.bus.transfer(data, false)
    }

    fn access(&mut self, read: bool, locality: u8, reg: u16, data: &mut [u8]) -> io::Result<()> {
        let base = address(locality, reg, data.len())?;
        let fifo = regs::is_fifo(reg);
        let mut offset = 0u32;
        for chunk in data.chunks_mut(MAX_TRANSFER) {
            let addr = if fifo { base } else { base + offset };
            self.transaction(read, addr, chunk)?;
            // Non-FIFO accesses stay inside the window (`address` checked), so the address
            // never leaves the locality; FIFO accesses ignore the offset.
            offset = offset.saturating_add(MAX_TRANSFER as u32);
        }
        Ok(())
    }
}

/// The 24-bit SPI address of `reg` in `locality`, checking the access stays in its window.
fn address(locality: u8, reg: u16, len: usize) -> io::Result<u32> {
    let end = usize::from(reg).saturating_add(if regs::is_fifo(reg) { 1 } else { len });
    if locality >= LOCALITIES || end > LOCALITY_SIZE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "TIS access of {len} bytes at locality {locality} register {reg:#x} is outside \
                 the register window"
            ),
        ));
    }
    Ok(ADDRESS_BASE | u32::from(locality) << 12 | u32::from(reg))
}

/// The 4-byte transaction header for `len` (1..=64) bytes at the 24-bit `address`.
pub(crate) fn header(read: bool, address: u32, len: usize) -> io::Result<[u8; 4]> {
    let size = u8::try_from(len.wrapping_sub(1))
        .ok()
        .filter(|s| usize::from(*s) < MAX_TRANSFER)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("TIS-over-SPI transaction of {len} bytes (1..={MAX_TRANSFER})"),
            )
        })?;
    let a = address.to_be_bytes();
    Ok([if read { 0x80 | size } else { size }, a[1], a[2], a[3]])
}

impl<B: SpiBus> TisRegisters for SpiTis<B> {
    fn read(&mut self, locality: u8, reg: u16, buf: &mut [u8]) -> io::Result<()> {
        self.access(true, locality, reg, buf)
    }

    fn write(&mut self, locality: u8, reg: u16, data: &[u8]) -> io::Result<()> {
        // The data phase is full duplex: send a copy, drop what comes back.
        let mut chunk = [0u8; MAX_TRANSFER];
        let base = address(locality, reg, data.len())?;
        let fifo = regs::is_fifo(reg);
        let mut offset = 0u32;
        for part in data.chunks(MAX_TRANSFER) {
            let Some(buf) = chunk.get_mut(..part.len()) else {
                break;
            };
            buf.copy_from_slice(part);
            let addr = if fifo { base } else { base + offset };
            self.transaction(false, addr, buf)?;
            offset = offset.saturating_add(MAX_TRANSFER as u32);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
