//! The TIS-over-SPI wire layer of the device model: turns the byte stream clocked while chip
//! select is asserted into transactions (4-byte header, wait states, data phase) and hands
//! the data bytes to the register file ([`Target`]).
//!
//! Written from the PTP's SPI section, not from the agent's driver: a transaction starts with
//! the first byte after chip select was released; the header is `[R/W | 0 | size-1]
//! [addr 23:16] [addr 15:8] [addr 7:0]` with the address in `0xD4xxxx`; the device signals a
//! wait state with MISO bit 0 = 0 in the byte clocked with header byte 3 and in every further
//! poll byte until it answers bit 0 = 1; then `size` data bytes follow. The model accepts any
//! split of that byte stream into transfers. It never panics on any byte sequence and keeps no
//! per-byte allocation; every anomaly is reported to [`Target::protocol_error`].

/// Header bit 7 of byte 0: read (1) or write (0).
const READ: u8 = 0x80;
/// Header bit 6 of byte 0: must be 0 (reserved in the PTP's SPI header).
const RESERVED: u8 = 0x40;
/// The TPM's SPI address window (bits 23:16 of the header address).
const WINDOW: u32 = 0xD4;

/// A decoded transaction header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// Read (device drives MISO with data) or write.
    pub(crate) read: bool,
    /// Data bytes in the transaction (1..=64).
    pub(crate) size: usize,
    /// Locality from address bits 15:12 (0..=4 after validation).
    pub(crate) locality: u8,
    /// Register offset within the locality (address bits 11:0).
    pub(crate) reg: u16,
}

impl Header {
    /// Decodes the four header bytes; `Err` says what is wrong.
    pub(crate) fn decode(b: [u8; 4]) -> Result<Self, String> {
        if b[0] & RESERVED != 0 {
            return Err(format!(
                "header byte 0 {:#04x} has reserved bit 6 set",
                b[0]
            ));
        }
        let addr = u32::from_be_bytes([0, b[1], b[2], b[3]]);
        if addr >> 16 != WINDOW {
            return Err(format!(
                "header address {addr:#08x} is outside the TPM window 0xD4xxxx"
            ));
        }
        let locality = b[2] >> 4;
        if locality > 4 {
            return Err(format!(
                "header address {addr:#08x} names locality {locality} (0..=4 exist)"
            ));
        }
        Ok(Self {
            read: b[0] & READ != 0,
            size: usize::from(b[0] & 0x3F) + 1,
            locality,
            reg: u16::from_be_bytes([b[2] & 0x0F, b[3]]),
        })
    }
}

/// What the wire layer needs from the register file behind it.
pub(crate) trait Target {
    /// A transaction's first byte arrived: how many wait states to insert (`None`: never
    /// ready, the stuck-wait-state fault).
    fn wait_states(&mut self) -> Option<u32>;
    /// The host gave up on a transaction during its wait states (released chip select).
    fn abandoned(&mut self);
    /// A valid header was decoded and the wait states are over: the data phase begins.
    fn data_start(&mut self, hdr: &Header);
    /// Data byte `index` of the transaction: `mosi` from the host; returns the MISO byte.
    fn data_byte(&mut self, hdr: &Header, index: usize, mosi: u8) -> u8;
    /// The data phase ended (`complete`: all `size` bytes were clocked).
    fn data_end(&mut self, hdr: &Header, complete: bool);
    /// Records a protocol violation by the host.
    fn protocol_error(&mut self, what: String);
    /// Counts one wait-state poll byte clocked by the host.
    fn wait_byte(&mut self);
    /// Counts one transaction with a valid header.
    fn transaction(&mut self, hdr: &Header);
}

/// Where the current transaction is.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Chip select released: the next byte starts a transaction.
    Deselected,
    /// Collecting the header; `waits` was fixed at the first byte.
    Header {
        got: usize,
        bytes: [u8; 4],
        waits: Option<u32>,
    },
    /// Wait states: `left` more poll bytes answer "wait" (`None`: forever).
    Wait { hdr: Header, left: Option<u32> },
    /// Data phase: `done` of `hdr.size` bytes clocked.
    Data { hdr: Header, done: usize },
    /// The header was invalid: the device ignores the rest of the transaction.
    Ignored,
}

/// MISO bit 0 = 1: the device is ready (no wait state).
const READY: u8 = 0x01;
/// What an undriven MISO line reads.
const FLOAT: u8 = 0xFF;

/// The wire layer's state across transfers.
#[derive(Debug)]
pub(crate) struct Wire {
    phase: Phase,
    /// Chip select is asserted.
    selected: bool,
    /// Bytes clocked past the data phase in the current transaction.
    overrun: usize,
}

impl Wire {
    /// A deselected bus.
    pub(crate) fn new() -> Self {
        Self {
            phase: Phase::Deselected,
            selected: false,
            overrun: 0,
        }
    }

    /// Whether chip select is asserted.
    pub(crate) fn selected(&self) -> bool {
        self.selected
    }

    /// One full-duplex transfer: `buf` goes out on MOSI and is replaced with MISO. Chip
    /// select is asserted for it and released at its end unless `keep_selected`.
    pub(crate) fn transfer(&mut self, target: &mut impl Target, buf: &mut [u8], keep: bool) {
        if !self.selected && !buf.is_empty() {
            self.selected = true;
            self.phase = Phase::Deselected;
            self.overrun = 0;
        }
        for byte in buf.iter_mut() {
            *byte = self.clock(target, *byte);
        }
        if !keep && self.selected {
            self.release(target);
        } else if keep && buf.is_empty() {
            self.selected = true;
        }
    }

    /// One byte time: MOSI in, MISO out.
    fn clock(&mut self, target: &mut impl Target, mosi: u8) -> u8 {
        match self.phase {
            Phase::Deselected => {
                let waits = target.wait_states();
                self.phase = Phase::Header {
                    got: 1,
                    bytes: [mosi, 0, 0, 0],
                    waits,
                };
                // Bit 0 of the bytes before header byte 3 means nothing; drive the opposite of
                // what byte 3 will say, so a host reading the wrong byte goes wrong.
                if waits == Some(0) { 0xFE } else { READY }
            }
            Phase::Header {
                got,
                mut bytes,
                waits,
            } => {
                if let Some(slot) = bytes.get_mut(got) {
                    *slot = mosi;
                }
                if got < 3 {
                    self.phase = Phase::Header {
                        got: got + 1,
                        bytes,
                        waits,
                    };
                    return if waits == Some(0) { 0xFE } else { READY };
                }
                match Header::decode(bytes) {
                    Err(e) => {
                        target.protocol_error(e);
                        self.phase = Phase::Ignored;
                        FLOAT
                    }
                    Ok(hdr) => {
                        target.transaction(&hdr);
                        self.wait_or_begin(target, hdr, waits)
                    }
                }
            }
            Phase::Wait { hdr, left } => {
                target.wait_byte();
                self.wait_or_begin(target, hdr, left)
            }
            Phase::Data { hdr, done } => {
                if done >= hdr.size {
                    self.overrun += 1;
                    if self.overrun == 1 {
                        target.protocol_error(format!(
                            "data longer than the header's size {} at register {:#05x} \
                             (locality {}): chip select not released after the transaction",
                            hdr.size, hdr.reg, hdr.locality
                        ));
                    }
                    return FLOAT;
                }
                let miso = target.data_byte(&hdr, done, mosi);
                let done = done + 1;
                self.phase = Phase::Data { hdr, done };
                if done == hdr.size {
                    target.data_end(&hdr, true);
                }
                if hdr.read { miso } else { FLOAT }
            }
            Phase::Ignored => FLOAT,
        }
    }

    /// The MISO byte of a wait-state decision point: ready (bit 0 set) and into the data
    /// phase when no wait states are `left`, else one more wait state (`None`: forever).
    fn wait_or_begin(&mut self, target: &mut impl Target, hdr: Header, left: Option<u32>) -> u8 {
        match left {
            Some(0) => {
                self.begin_data(target, hdr);
                READY
            }
            Some(n) => {
                self.phase = Phase::Wait {
                    hdr,
                    left: Some(n - 1),
                };
                0x00
            }
            None => {
                self.phase = Phase::Wait { hdr, left: None };
                0x00
            }
        }
    }

    fn begin_data(&mut self, target: &mut impl Target, hdr: Header) {
        target.data_start(&hdr);
        self.phase = Phase::Data { hdr, done: 0 };
    }

    /// Chip select goes high: the transaction ends, complete or not.
    fn release(&mut self, target: &mut impl Target) {
        self.selected = false;
        match self.phase {
            Phase::Deselected | Phase::Ignored => {}
            Phase::Header { got, .. } => target.protocol_error(format!(
                "chip select released after {got} of 4 header bytes"
            )),
            Phase::Wait { .. } => target.abandoned(),
            Phase::Data { hdr, done } => {
                if done < hdr.size {
                    target.protocol_error(format!(
                        "chip select released after {done} of {} data bytes at register \
                         {:#05x} (locality {})",
                        hdr.size, hdr.reg, hdr.locality
                    ));
                    target.data_end(&hdr, false);
                }
            }
        }
        self.phase = Phase::Deselected;
    }
}
