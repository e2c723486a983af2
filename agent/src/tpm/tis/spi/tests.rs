//! Unit tests of the TIS-over-SPI framing (`spi.rs`): exact header bytes, wait states and
//! their poll limit, 64-byte splitting, and the state machine behind a small SPI device that
//! decodes the framing in front of the register model of `tis/tests.rs`.

use std::io;

use super::{DEFAULT_MAX_WAIT_POLLS, SpiBus, SpiTis};
use crate::tpm::tis::regs::*;
use crate::tpm::tis::tests::{Regs, command, model, round_trip, tiny};
use crate::tpm::tis::*;

/// Records transfers and answers MISO from a script (then 0x01 bytes: "no wait state").
#[derive(Default)]
struct Scripted {
    log: Vec<(Vec<u8>, bool)>,
    miso: Vec<Vec<u8>>,
}

impl SpiBus for Scripted {
    fn transfer(&mut self, buf: &mut [u8], keep_selected: bool) -> io::Result<()> {
        self.log.push((buf.to_vec(), keep_selected));
        let answer = if self.miso.is_empty() {
            vec![0x01; buf.len()]
        } else {
            self.miso.remove(0)
        };
        for (b, a) in buf
            .iter_mut()
            .zip(answer.iter().chain(std::iter::repeat(&0x01)))
        {
            *b = *a;
        }
        Ok(())
    }
}

#[test]
fn spi_header_bytes_for_a_read_and_a_write() {
    let mut bus = Scripted::default();
    let mut spi = SpiTis::new(&mut bus);
    let mut sts = [0u8; 4];
    spi.read(0, STS, &mut sts).unwrap();
    spi.write(0, STS, &[STS_COMMAND_READY]).unwrap();
    spi.read(0, DID_VID, &mut sts).unwrap();
    spi.write(2, ACCESS, &[ACCESS_REQUEST_USE]).unwrap();
    let log = &bus.log;
    assert_eq!(log[0], (vec![0x83, 0xD4, 0x00, 0x18], true));
    assert_eq!(log[1], (vec![0, 0, 0, 0], false), "read: MOSI zeros");
    assert_eq!(log[2], (vec![0x00, 0xD4, 0x00, 0x18], true));
    assert_eq!(log[3], (vec![STS_COMMAND_READY], false));
    assert_eq!(log[4].0, vec![0x83, 0xD4, 0x0F, 0x00]);
    assert_eq!(log[6].0, vec![0x00, 0xD4, 0x20, 0x00]);
    assert_eq!(log.len(), 8);
}

#[test]
fn spi_wait_states_are_honoured() {
    let mut bus = Scripted {
        // Header ends with MISO bit 0 low, then two wait bytes, then ready.
        miso: vec![vec![0, 0, 0, 0], vec![0], vec![0], vec![1], vec![0xAB]],
        ..Scripted::default()
    };
    let mut spi = SpiTis::new(&mut bus);
    let mut b = [0u8];
    spi.read(0, RID, &mut b).unwrap();
    assert_eq!(b, [0xAB]);
    let lens: Vec<_> = bus.log.iter().map(|(d, k)| (d.len(), *k)).collect();
    assert_eq!(
        lens,
        [(4, true), (1, true), (1, true), (1, true), (1, false)]
    );
}

#[test]
fn spi_wait_state_poll_limit_releases_chip_select() {
    for limit in [DEFAULT_MAX_WAIT_POLLS, 3] {
        let mut bus = Scripted {
            miso: vec![vec![0; 4]; 200],
            ..Scripted::default()
        };
        let mut spi = SpiTis::new(&mut bus).with_max_wait_polls(limit);
        let e = spi.read(0, STS, &mut [0u8; 4]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(
            e.to_string()
                .contains(&format!("held its wait state for {limit} polls")),
            "{e}"
        );
        // Header, `limit` wait bytes, then chip select released by an empty transfer.
        assert_eq!(bus.log.len(), 1 + limit as usize + 1);
        assert_eq!(bus.log.last().unwrap(), &(vec![], false));
    }
}

#[test]
fn spi_splits_long_accesses_into_64_byte_transactions() {
    let mut bus = Scripted::default();
    let mut spi = SpiTis::new(&mut bus);
    let data: Vec<u8> = (0..100).collect();
    spi.write(0, DATA_FIFO, &data).unwrap();
    spi.read(0, 0x100, &mut [0u8; 100]).unwrap();
    let log = &bus.log;
    assert_eq!(log.len(), 8);
    // FIFO: both transactions at 0xD40024, data 64 + 36 bytes.
    assert_eq!(log[0].0, vec![0x3F, 0xD4, 0x00, 0x24]);
    assert_eq!(log[1].0, data[..64].to_vec());
    assert_eq!(log[2].0, vec![0x23, 0xD4, 0x00, 0x24]);
    assert_eq!(log[3].0, data[64..].to_vec());
    // Other registers: increasing addresses.
    assert_eq!(log[4].0, vec![0xBF, 0xD4, 0x01, 0x00]);
    assert_eq!(log[6].0, vec![0xA3, 0xD4, 0x01, 0x40]);
}

#[test]
fn spi_refuses_accesses_outside_the_window() {
    let mut spi = SpiTis::new(Scripted::default());
    for (loc, reg, len) in [(5u8, STS, 4usize), (0, 0xFFE, 4), (0, 0x1000, 1)] {
        let e = spi.read(loc, reg, &mut vec![0; len]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{loc} {reg:#x}");
    }
    assert!(spi.into_inner().log.is_empty());
}

/// A SPI TPM: decodes the framing and forwards to the register model, with `waits` wait
/// states per transaction.
#[derive(Debug)]
struct Device {
    model: Regs,
    waits: u32,
    /// The pending transaction (read?, locality, register, length) and wait bytes left.
    pending: Option<(bool, u8, u16, usize)>,
    left: u32,
}

impl SpiBus for Device {
    fn transfer(&mut self, buf: &mut [u8], keep_selected: bool) -> io::Result<()> {
        match self.pending {
            None if buf.is_empty() => {}
            None => {
                assert_eq!((buf.len(), keep_selected), (4, true), "header expected");
                let addr = u32::from_be_bytes([0, buf[1], buf[2], buf[3]]);
                assert_eq!(addr & 0xFF_0000, 0xD4_0000);
                let locality = ((addr >> 12) & 0xF) as u8;
                let reg = (addr & 0xFFF) as u16;
                self.pending = Some((
                    buf[0] & 0x80 != 0,
                    locality,
                    reg,
                    usize::from(buf[0] & 0x3F) + 1,
                ));
                self.left = self.waits;
                buf.fill(0);
                buf[3] = u8::from(self.left == 0);
            }
            Some(_) if self.left > 0 => {
                assert_eq!(buf.len(), 1, "wait-state byte expected");
                self.left -= 1;
                buf[0] = u8::from(self.left == 0);
            }
            Some((read, locality, reg, len)) => {
                assert!(!keep_selected);
                assert_eq!(buf.len(), len);
                self.pending = None;
                if read {
                    self.model.read(locality, reg, buf)?;
                } else {
                    self.model.write(locality, reg, buf)?;
                }
            }
        }
        Ok(())
    }
}

#[test]
fn round_trip_over_spi_with_wait_states() {
    for (waits, burst) in [(0, 1), (1, 8), (3, 64)] {
        let (m, regs) = model(burst);
        let dev = Device {
            model: regs,
            waits,
            pending: None,
            left: 0,
        };
        let mut tis = Tis::open(SpiTis::new(dev), "test:spi", tiny()).unwrap();
        for len in [10, 77, 300] {
            round_trip(&mut tis, &command(len));
        }
        assert_eq!(m.borrow().commands.len(), 3);
    }
}
