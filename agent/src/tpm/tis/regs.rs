//! TIS register map of the TCG PC Client Platform TPM Profile (PTP) FIFO interface: register
//! offsets within a locality's 4 KiB window, and the bits of TPM_ACCESS and TPM_STS.
//!
//! Pure constants and bit decoding; nothing here touches a bus or trusts a register value to
//! bound anything.

/// Number of localities a TIS interface exposes (0..=4).
pub const LOCALITIES: u8 = 5;
/// Size of one locality's register window; locality `l` starts at `l * LOCALITY_SIZE`.
pub const LOCALITY_SIZE: usize = 0x1000;

/// TPM_ACCESS_x (1 byte): locality request and release.
pub const ACCESS: u16 = 0x00;
/// TPM_INT_ENABLE_x (4 bytes). Unused: the driver polls.
pub const INT_ENABLE: u16 = 0x08;
/// TPM_INTF_CAPABILITY_x (4 bytes): supported interface features.
pub const INTF_CAPABILITY: u16 = 0x14;
/// TPM_STS_x (4 bytes): status byte, burstCount (bytes 1-2), tpmFamily (byte 3).
pub const STS: u16 = 0x18;
/// TPM_DATA_FIFO_x: command bytes in, response bytes out, one at a time at one address.
pub const DATA_FIFO: u16 = 0x24;
/// TPM_INTERFACE_ID_x (4 bytes): interface type and version.
pub const INTERFACE_ID: u16 = 0x30;
/// TPM_XDATA_FIFO_x: the extended FIFO (same semantics as [`DATA_FIFO`]).
pub const XDATA_FIFO: u16 = 0x80;
/// TPM_DID_VID_x (4 bytes): vendor ID (low 16 bits) and device ID (high 16 bits).
pub const DID_VID: u16 = 0xF00;
/// TPM_RID_x (1 byte): revision ID.
pub const RID: u16 = 0xF04;

/// TPM_ACCESS.tpmRegValidSts: the other ACCESS bits are valid.
pub const ACCESS_VALID: u8 = 0x80;
/// TPM_ACCESS.activeLocality: this locality owns the TPM (write 1 to relinquish).
pub const ACCESS_ACTIVE_LOCALITY: u8 = 0x20;
/// TPM_ACCESS.beenSeized.
pub const ACCESS_BEEN_SEIZED: u8 = 0x10;
/// TPM_ACCESS.pendingRequest: another locality waits for the TPM.
pub const ACCESS_PENDING_REQUEST: u8 = 0x04;
/// TPM_ACCESS.requestUse: write 1 to request this locality.
pub const ACCESS_REQUEST_USE: u8 = 0x02;

/// TPM_STS.stsValid: dataAvail and expect are valid.
pub const STS_VALID: u8 = 0x80;
/// TPM_STS.commandReady: the TPM is ready for a command (write 1 to request / abort).
pub const STS_COMMAND_READY: u8 = 0x40;
/// TPM_STS.tpmGo: write 1 to execute the command in the FIFO.
pub const STS_GO: u8 = 0x20;
/// TPM_STS.dataAvail: response bytes are waiting in the FIFO.
pub const STS_DATA_AVAIL: u8 = 0x10;
/// TPM_STS.expect: the TPM expects more command bytes.
pub const STS_EXPECT: u8 = 0x08;
/// TPM_STS.selfTestDone.
pub const STS_SELF_TEST_DONE: u8 = 0x04;
/// TPM_STS.responseRetry: write 1 to read the response again from its start.
pub const STS_RESPONSE_RETRY: u8 = 0x02;
/// TPM_STS.tpmFamily value for TPM 2.0 (byte 3, bits 3:2).
pub const FAMILY_TPM2: u8 = 0b01;

/// Whether `reg` is a FIFO register: every byte of an access goes to the same address.
#[must_use]
pub fn is_fifo(reg: u16) -> bool {
    reg == DATA_FIFO || reg == XDATA_FIFO
}

/// A TPM_STS value (4 bytes, little-endian), decoded without trusting it for anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status(pub u32);

impl Status {
    /// Decodes the 4 register bytes.
    #[must_use]
    pub fn from_bytes(b: [u8; 4]) -> Self {
        Self(u32::from_le_bytes(b))
    }

    /// The status byte (byte 0).
    #[must_use]
    pub fn bits(self) -> u8 {
        self.0.to_le_bytes()[0]
    }

    /// Whether every bit of `mask` is set in the status byte.
    #[must_use]
    pub fn has(self, mask: u8) -> bool {
        self.bits() & mask == mask
    }

    /// burstCount (bytes 1-2): how many bytes the FIFO takes or gives without waiting.
    #[must_use]
    pub fn burst_count(self) -> u16 {
        let b = self.0.to_le_bytes();
        u16::from_le_bytes([b[1], b[2]])
    }

    /// tpmFamily (byte 3, bits 3:2): 0 = TPM 1.2, 1 = TPM 2.0.
    #[must_use]
    pub fn family(self) -> u8 {
        (self.0.to_le_bytes()[3] >> 2) & 0b11
    }
}
