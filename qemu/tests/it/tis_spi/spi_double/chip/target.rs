//! The register file as the wire layer drives it: per-transaction locality gating,
//! register snapshots for reads, FIFO bytes under the burstCount budget, register writes
//! applied once their transaction completed, and the counters the tests assert on.
//!
//! Must never: panic on any header or byte, or let a dropped (inactive-locality) access
//! change state.

use super::super::Shared;
use super::super::wire::{Header, Target};
use super::{Chip, Fault, Kind, State, gated, kind, reg_name};

/// The chip and the shared statistics, as the wire layer sees them during one transfer.
pub(crate) struct Ctx<'a> {
    pub(crate) chip: &'a mut Chip,
    pub(crate) shared: &'a mut Shared,
}

impl Target for Ctx<'_> {
    fn wait_states(&mut self) -> Option<u32> {
        self.chip.poll(self.shared);
        if self
            .shared
            .armed
            .take_if(|f| *f == Fault::StuckWaitState)
            .is_some()
        {
            self.shared.stats.faults_fired.push(Fault::StuckWaitState);
            self.chip.stuck = true;
        }
        if self.chip.stuck {
            None
        } else {
            Some(u32::from(self.chip.cfg.wait_states))
        }
    }

    fn abandoned(&mut self) {
        self.shared.stats.abandoned += 1;
        // The stall ends once the host gives up on it, like a chip watchdog would.
        if std::mem::take(&mut self.chip.stuck) {
            self.shared.stats.faults_cleared += 1;
        }
    }

    fn data_start(&mut self, hdr: &Header) {
        let chip = &mut *self.chip;
        chip.poll(self.shared);
        chip.over_budget = false;
        chip.dropped = gated(hdr.reg) && chip.active != Some(hdr.locality);
        if chip.dropped {
            self.shared.protocol_error(format!(
                "{} {} through locality {}, which is not active (active: {:?}): request it \
                 through TPM_ACCESS first",
                if hdr.read { "read of" } else { "write to" },
                reg_name(hdr.reg),
                hdr.locality,
                chip.active
            ));
        }
        if !hdr.read || kind(hdr.reg) == Kind::Fifo {
            return;
        }
        let sts = chip.sts();
        let end = usize::from(hdr.reg) + hdr.size;
        let covers = |r: u16| (usize::from(hdr.reg)..end).contains(&usize::from(r));
        let mut snapshot = [0xFF; 64];
        for (i, slot) in snapshot.iter_mut().enumerate().take(hdr.size) {
            let reg = hdr.reg.saturating_add(u16::try_from(i).unwrap_or(u16::MAX));
            *slot = if chip.dropped && gated(reg) {
                0xFF
            } else if let Some(v) = chip.read_byte(hdr.locality, reg, &sts) {
                v
            } else {
                self.shared.stats.unmapped += 1;
                0xFF
            };
        }
        chip.snapshot = snapshot;
        if covers(0x19) && !chip.dropped {
            chip.budget = u32::from(u16::from_le_bytes([sts[1], sts[2]]));
            if chip.fifo_busy && chip.cfg.zero_burst_after_fifo {
                self.shared.stats.zero_bursts += 1;
            }
            chip.fifo_busy = false;
        }
    }

    fn data_byte(&mut self, hdr: &Header, index: usize, mosi: u8) -> u8 {
        let chip = &mut *self.chip;
        if chip.dropped {
            return 0xFF;
        }
        if kind(hdr.reg) == Kind::Regs {
            if hdr.read {
                return chip.snapshot.get(index).copied().unwrap_or(0xFF);
            }
            if let Some(slot) = chip.wbuf.get_mut(index) {
                *slot = mosi;
            }
            return 0xFF;
        }
        if chip.budget == 0 {
            if !chip.over_budget {
                chip.over_budget = true;
                self.shared.protocol_error(format!(
                    "FIFO {} of {} bytes goes past the burstCount last read from TPM_STS \
                     (state {:?})",
                    if hdr.read { "read" } else { "write" },
                    hdr.size,
                    chip.state
                ));
            }
        } else {
            chip.budget -= 1;
        }
        if hdr.read {
            chip.fifo_read(self.shared)
        } else {
            chip.fifo_write(self.shared, mosi);
            0xFF
        }
    }

    fn data_end(&mut self, hdr: &Header, complete: bool) {
        let chip = &mut *self.chip;
        if kind(hdr.reg) == Kind::Fifo {
            chip.fifo_busy = true;
            if hdr.read
                && chip.state == State::Execution
                && chip.fault == Some(Fault::EarlyDataAvail)
            {
                chip.early_read = true;
                if let Some(r) = chip.held.take() {
                    chip.answered(self.shared, Ok(r));
                }
            }
        } else if !hdr.read && complete && !chip.dropped {
            chip.apply_writes(self.shared, hdr.locality, hdr.reg, hdr.size);
        }
        chip.dropped = false;
    }

    fn protocol_error(&mut self, what: String) {
        self.shared.protocol_error(what);
    }

    fn wait_byte(&mut self) {
        self.shared.stats.wait_bytes += 1;
    }

    fn transaction(&mut self, hdr: &Header) {
        let s = &mut self.shared.stats;
        s.transactions += 1;
        if hdr.read {
            s.reads += 1;
        } else {
            s.writes += 1;
        }
        s.max_size = s.max_size.max(hdr.size);
        if self.chip.cfg.wait_states > 0 || self.chip.stuck {
            s.waited_transactions += 1;
        }
    }
}
