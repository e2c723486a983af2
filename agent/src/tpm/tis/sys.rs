//! The only unsafe code of the agent: Linux spidev ioctls and the `/dev/mem` mapping of a TIS
//! register window.
//!
//! [`Spidev`] runs one `SPI_IOC_MESSAGE(1)` per transfer on a spidev node. [`Mmio`] maps the
//! five 4 KiB locality windows of a memory-mapped TIS (QEMU's `tpm-tis-device`) and accesses
//! them with volatile loads and stores. Every unsafe block carries a `// SAFETY:` comment;
//! nothing here interprets register contents, and no access leaves the mapped window.
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io;
use std::num::NonZeroUsize;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::ptr::NonNull;

use nix::libc;
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};
use nix::unistd::{SysconfVar, sysconf};

use super::TisRegisters;
use super::regs::{self, LOCALITIES, LOCALITY_SIZE};
use super::spi::SpiBus;

/// Linux UAPI `struct spi_ioc_transfer` (include/uapi/linux/spi/spidev.h), 32 bytes.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct SpiIocTransfer {
    tx_buf: u64,
    rx_buf: u64,
    len: u32,
    speed_hz: u32,
    delay_usecs: u16,
    bits_per_word: u8,
    cs_change: u8,
    tx_nbits: u8,
    rx_nbits: u8,
    word_delay_usecs: u8,
    pad: u8,
}

const SPI_IOC_MAGIC: u8 = b'k';
nix::ioctl_write_buf!(spi_ioc_message, SPI_IOC_MAGIC, 0, SpiIocTransfer);
nix::ioctl_write_ptr!(spi_ioc_wr_mode, SPI_IOC_MAGIC, 1, u8);
nix::ioctl_write_ptr!(spi_ioc_wr_bits_per_word, SPI_IOC_MAGIC, 3, u8);
nix::ioctl_write_ptr!(spi_ioc_wr_max_speed_hz, SPI_IOC_MAGIC, 4, u32);

/// A Linux spidev node (`/dev/spidevB.C`) set to SPI mode 0, 8 bits per word.
#[derive(Debug)]
pub struct Spidev {
    file: File,
    hz: u32,
}

impl Spidev {
    /// Opens `path` read-write and sets SPI mode 0, 8 bits per word and `hz` as the maximum
    /// clock.
    ///
    /// # Errors
    /// The `open` error (NotFound when SPI is disabled or the chip select belongs to a kernel
    /// driver) or the failing ioctl's error.
    pub fn open(path: &Path, hz: u32) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let fd = file.as_raw_fd();
        let mode: u8 = 0;
        let bits: u8 = 8;
        let ctx = |what: &str, e: nix::Error| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("{what} on {}: {e}", path.display()),
            )
        };
        // SAFETY: `fd` is open for the lifetime of `file`; the pointer is to a live u8 of the
        // size the request code declares.
        unsafe { spi_ioc_wr_mode(fd, &mode) }.map_err(|e| ctx("SPI_IOC_WR_MODE", e))?;
        // SAFETY: as above, a live u8.
        unsafe { spi_ioc_wr_bits_per_word(fd, &bits) }
            .map_err(|e| ctx("SPI_IOC_WR_BITS_PER_WORD", e))?;
        // SAFETY: as above, a live u32.
        unsafe { spi_ioc_wr_max_speed_hz(fd, &hz) }
            .map_err(|e| ctx("SPI_IOC_WR_MAX_SPEED_HZ", e))?;
        Ok(Self { file, hz })
    }
}

impl SpiBus for Spidev {
    fn transfer(&mut self, buf: &mut [u8], keep_selected: bool) -> io::Result<()> {
        let len = u32::try_from(buf.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "SPI transfer longer than 4 GiB",
            )
        })?;
        // An empty transfer carries no buffers: it only ends the message (and with
        // cs_change = 0 releases chip select).
        let ptr = if buf.is_empty() {
            0
        } else {
            buf.as_mut_ptr() as u64
        };
        let xfer = [SpiIocTransfer {
            tx_buf: ptr,
            rx_buf: ptr,
            len,
            speed_hz: self.hz,
            bits_per_word: 8,
            // On the last transfer of a message cs_change keeps chip select asserted until
            // the next message.
            cs_change: u8::from(keep_selected),
            ..SpiIocTransfer::default()
        }];
        // SAFETY: `xfer` describes `buf`, which lives and is exclusively borrowed for the
        // whole (synchronous) ioctl; spidev copies tx bytes in before the transfer and rx
        // bytes out after it, so one buffer may serve as both. The request size is that of
        // one 32-byte `spi_ioc_transfer`, i.e. SPI_IOC_MESSAGE(1).
        unsafe { spi_ioc_message(self.file.as_raw_fd(), &xfer) }
            .map(drop)
            .map_err(io::Error::from)
    }
}

/// Size of the mapped TIS window: five localities of 4 KiB.
const WINDOW: usize = LOCALITIES as usize * LOCALITY_SIZE;

/// The TIS registers of a memory-mapped TPM, mapped from `/dev/mem`.
#[derive(Debug)]
pub struct Mmio {
    map: NonNull<libc::c_void>,
    map_len: usize,
    /// Offset of the TIS window (locality 0, register 0) inside the mapping.
    start: usize,
}

// SAFETY: `Mmio` owns its mapping exclusively (no aliases are handed out); moving it to
// another thread moves that ownership. Register accesses need `&mut self`.
unsafe impl Send for Mmio {}

impl Mmio {
    /// Maps the 0x5000-byte TIS window at physical address `addr` (4-byte aligned) through
    /// `/dev/mem` (`O_RDWR | O_SYNC`: uncached).
    ///
    /// # Errors
    /// The `open` or `mmap` error (EPERM/EACCES without root, or when the kernel's
    /// CONFIG_IO_STRICT_DEVMEM protects a region a driver claimed), or InvalidInput for an
    /// unaligned or out-of-range address.
    pub fn open(addr: u64) -> io::Result<Self> {
        if !addr.is_multiple_of(4) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("TIS address {addr:#x} is not 4-byte aligned"),
            ));
        }
        let page = sysconf(SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .and_then(|p| u64::try_from(p).ok())
            .filter(|p| p.is_power_of_two())
            .unwrap_or(4096);
        let base = addr & !(page - 1);
        let start = usize::try_from(addr - base).map_err(|_| out_of_range(addr))?;
        let map_len = start
            .checked_add(WINDOW)
            .ok_or_else(|| out_of_range(addr))?;
        // off_t is 32 bits on 32-bit targets without large-file support.
        let offset = libc::off_t::try_from(base).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "TIS address {addr:#x} does not fit this platform's mmap offset (off_t of \
                     {} bytes)",
                    size_of::<libc::off_t>()
                ),
            )
        })?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_SYNC)
            .open("/dev/mem")?;
        let len = NonZeroUsize::new(map_len).ok_or_else(|| out_of_range(addr))?;
        // SAFETY: a fresh shared mapping of device memory chosen by the kernel (no address
        // hint), so it aliases no Rust object; the fd may be closed after mmap returns.
        let map = unsafe {
            mmap(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                &file,
                offset,
            )
        }
        .map_err(io::Error::from)?;
        Ok(Self {
            map,
            map_len,
            start,
        })
    }

    /// Pointer to byte `off` of the TIS window, if `off + width` stays inside it.
    fn at(&self, off: usize, width: usize) -> Option<*mut u8> {
        if off.checked_add(width)? > WINDOW {
            return None;
        }
        // SAFETY: start + off + width <= start + WINDOW = map_len, inside the mapping.
        Some(unsafe { self.map.as_ptr().cast::<u8>().add(self.start + off) })
    }

    fn access(&mut self, locality: u8, reg: u16, len: usize) -> io::Result<(usize, bool)> {
        let fifo = regs::is_fifo(reg);
        let off = usize::from(locality) * LOCALITY_SIZE + usize::from(reg);
        let span = if fifo { 1 } else { len };
        if locality >= LOCALITIES
            || usize::from(reg).saturating_add(span) > LOCALITY_SIZE
            || self.at(off, span).is_none()
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "TIS access of {len} bytes at locality {locality} register {reg:#x} is \
                     outside the register window"
                ),
            ));
        }
        Ok((off, fifo))
    }
}

fn out_of_range(addr: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("TIS address {addr:#x} is out of range"),
    )
}

impl TisRegisters for Mmio {
    fn read(&mut self, locality: u8, reg: u16, buf: &mut [u8]) -> io::Result<()> {
        let (off, fifo) = self.access(locality, reg, buf.len())?;
        let mut i = 0;
        while i < buf.len() {
            let at = if fifo { off } else { off + i };
            let rest = buf.len() - i;
            if !fifo
                && at.is_multiple_of(4)
                && rest >= 4
                && let (Some(p), Some(dst)) = (self.at(at, 4), buf.get_mut(i..i + 4))
            {
                // SAFETY: `at` checked the 4 bytes lie inside the mapping, and `at` is
                // 4-byte aligned in a page-aligned mapping (start is addr's page offset,
                // and addr is 4-byte aligned), so the u32 load is aligned.
                let v = unsafe { p.cast::<u32>().read_volatile() };
                dst.copy_from_slice(&v.to_le_bytes());
                i += 4;
                continue;
            }
            if let (Some(p), Some(dst)) = (self.at(at, 1), buf.get_mut(i)) {
                // SAFETY: `at` checked the byte lies inside the mapping.
                *dst = unsafe { p.read_volatile() };
            }
            i += 1;
        }
        Ok(())
    }

    fn write(&mut self, locality: u8, reg: u16, data: &[u8]) -> io::Result<()> {
        let (off, fifo) = self.access(locality, reg, data.len())?;
        let mut i = 0;
        while i < data.len() {
            let at = if fifo { off } else { off + i };
            let rest = data.len() - i;
            let word = data.get(i..i + 4).and_then(|s| <[u8; 4]>::try_from(s).ok());
            if !fifo
                && at.is_multiple_of(4)
                && rest >= 4
                && let (Some(p), Some(word)) = (self.at(at, 4), word)
            {
                let v = u32::from_le_bytes(word);
                // SAFETY: inside the mapping and aligned, as in `read`.
                unsafe { p.cast::<u32>().write_volatile(v) };
                i += 4;
                continue;
            }
            if let (Some(p), Some(&b)) = (self.at(at, 1), data.get(i)) {
                // SAFETY: `at` checked the byte lies inside the mapping.
                unsafe { p.write_volatile(b) };
            }
            i += 1;
        }
        Ok(())
    }
}

impl Drop for Mmio {
    fn drop(&mut self) {
        // SAFETY: `map`/`map_len` are exactly what mmap returned and were given; no pointer
        // into the mapping outlives `self`.
        let _ = unsafe { munmap(self.map, self.map_len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spi_ioc_transfer_has_the_uapi_layout() {
        assert_eq!(size_of::<SpiIocTransfer>(), 32);
        assert_eq!(std::mem::offset_of!(SpiIocTransfer, len), 16);
        assert_eq!(std::mem::offset_of!(SpiIocTransfer, speed_hz), 20);
        assert_eq!(std::mem::offset_of!(SpiIocTransfer, delay_usecs), 24);
        assert_eq!(std::mem::offset_of!(SpiIocTransfer, cs_change), 27);
        assert_eq!(std::mem::offset_of!(SpiIocTransfer, pad), 31);
    }

    #[test]
    fn spidev_open_names_the_missing_node() {
        let e = Spidev::open(Path::new("/dev/ekattest-no-spidev"), 1_000_000).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn spidev_on_a_non_spi_file_fails_in_the_first_ioctl() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spidev0.0");
        std::fs::write(&path, b"").unwrap();
        let e = Spidev::open(&path, 1_000_000).unwrap_err();
        assert!(e.to_string().contains("SPI_IOC_WR_MODE"), "{e}");
    }

    #[test]
    fn mmio_rejects_unaligned_addresses() {
        let e = Mmio::open(0x0c00_0002).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("0xc000002"), "{e}");
    }
}
