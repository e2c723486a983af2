//! The agent's TPM layer: one [`Transport`] trait (command bytes in, response bytes out) with
//! its backends, and above it the command layer, EK discovery, the AK and ActivateCredential.
//!
//! Layering (DESIGN.md section 4, STYLE.md section 3):
//! - [`Transport`] moves whole frames and never parses payloads; backends are
//!   [`chardev::CharDev`] (`/dev/tpmrm0`, `/dev/tpm0`), [`stream::Stream`] (swtpm TCP/unix,
//!   in-memory fakes) and [`tis::Tis`], the agent's own TIS driver for a TPM without a kernel
//!   driver: a state machine over a register-access trait, with SPI (spidev) and
//!   memory-mapped (`/dev/mem`) register backends. `tis`'s `sys` module holds the agent's
//!   only unsafe code.
//! - [`commands`] is the only module that touches `tpm2_protocol`: one function per command,
//!   retries, response-code decoding ([`rc`]) and flushing of transient handles.
//! - [`ek`], [`ak`] and [`activate`] hold the attestation logic on top of [`commands`].
//!
//! Nothing here allocates per command beyond small bounded vectors, and nothing panics on
//! what a TPM (or something pretending to be one) sends back.

pub mod activate;
mod error;
pub use error::Error;
pub mod ak;
pub mod chardev;
pub mod commands;
pub mod ek;
pub mod key;
pub mod rc;
pub mod scope;
pub mod session;
pub mod stream;
mod templates;
pub mod tis;

use std::io;

/// Largest command or response frame we exchange with a TPM (TPM2_MAX_COMMAND_SIZE of
/// every PC Client TPM we know is 4096 or less).
pub const FRAME_MAX: usize = 4096;
/// Size of a TPM command/response header: tag (2) | size (4) | code (4).
pub const HEADER_LEN: usize = 10;

/// Moves one marshalled command to the TPM and its response back. Never parses payloads.
pub trait Transport {
    /// Sends `cmd`, writes the whole response into `rsp`, returns its length.
    ///
    /// # Errors
    /// [`TransportError`] if the medium fails, times out, or declares an impossible size.
    fn transact(&mut self, cmd: &[u8], rsp: &mut [u8; FRAME_MAX]) -> Result<usize, TransportError>;
}

impl<T: Transport + ?Sized> Transport for Box<T> {
    fn transact(&mut self, cmd: &[u8], rsp: &mut [u8; FRAME_MAX]) -> Result<usize, TransportError> {
        (**self).transact(cmd, rsp)
    }
}

impl<T: Transport + ?Sized> Transport for &mut T {
    fn transact(&mut self, cmd: &[u8], rsp: &mut [u8; FRAME_MAX]) -> Result<usize, TransportError> {
        (**self).transact(cmd, rsp)
    }
}

/// A transport failure: the device could not be reached or returned an impossible frame.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The TPM device node does not exist.
    #[error(
        "TPM device {device} not found: check that the TPM is enabled in firmware and its \
         driver is loaded (tpm_tis, tpm_crb or tpm_tis_spi), or pass --tpm SPEC"
    )]
    NotFound {
        /// Device path or address.
        device: String,
    },
    /// The path exists but is not what the spec says (a regular file or directory for a
    /// character device, anything but a socket for `swtpm-unix:`). Checked before anything
    /// is written, so a mistyped `--tpm` never overwrites a file.
    #[error(
        "{device} is {found}, not {expected}: refusing to send TPM commands to it; pass \
         {hint}"
    )]
    WrongKind {
        /// The path, as the spec names it.
        device: String,
        /// What it is (`"a regular file"`, `"a directory"`, ...).
        found: &'static str,
        /// What the spec needs (`"a character device"`, `"a unix socket"`).
        expected: &'static str,
        /// What to pass instead.
        hint: &'static str,
    },
    /// The TPM device exists but we may not open it.
    #[error(
        "permission denied opening TPM device {device}: run the agent as a user in the tss \
         group (or grant it access to {device})"
    )]
    PermissionDenied {
        /// Device path.
        device: String,
    },
    /// `/dev/tpm0` is held by another process (it admits one user; use `/dev/tpmrm0`).
    #[error(
        "TPM device {device} is in use by another process (use /dev/tpmrm0, the kernel resource manager)"
    )]
    Busy {
        /// Device path.
        device: String,
    },
    /// An I/O operation failed.
    #[error("TPM I/O error on {device} during {op}")]
    Io {
        /// What we were doing (`"connect"`, `"write command"`, `"read header"`, ...).
        op: &'static str,
        /// Device path or address.
        device: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The TPM did not answer in time.
    #[error("TPM {device} timed out during {op}")]
    Timeout {
        /// What we were doing.
        op: &'static str,
        /// Device path or address.
        device: String,
    },
    /// The response is shorter than a TPM header.
    #[error(
        "TPM {device} sent a response of {len} bytes, shorter than the {HEADER_LEN}-byte header"
    )]
    ShortResponse {
        /// Device path or address.
        device: String,
        /// Bytes received.
        len: usize,
    },
    /// The response header declares a size outside `[HEADER_LEN, FRAME_MAX]` or different from
    /// what arrived.
    #[error(
        "TPM {device} declared a response size of {declared} bytes (received {received}, \
         allowed {HEADER_LEN}..={FRAME_MAX})"
    )]
    BadSize {
        /// Device path or address.
        device: String,
        /// The header's size field.
        declared: u32,
        /// Bytes actually available.
        received: usize,
    },
    /// The command does not fit a frame (our bug, or a caller passing garbage).
    #[error("command of {len} bytes exceeds the {FRAME_MAX}-byte frame limit")]
    CommandTooLong {
        /// Command length.
        len: usize,
    },
    /// A TIS backend (spidev node, `/dev/mem`) could not be opened or set up.
    #[error("cannot open TPM {device}: {hint}")]
    Open {
        /// The `--tpm` spec or device path.
        device: String,
        /// What to do about it.
        hint: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A TIS TPM broke the interface protocol (status bits or sizes that contradict the
    /// exchange), or is not a TPM 2.0 at all.
    #[error("TPM {device}: {what}")]
    Protocol {
        /// The `--tpm` spec.
        device: String,
        /// What happened, with the byte counts involved.
        what: String,
    },
}

impl TransportError {
    /// Whether retrying the same command on the same transport may help.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Timeout { .. } | Self::Busy { .. } => true,
            Self::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            Self::NotFound { .. }
            | Self::PermissionDenied { .. }
            | Self::ShortResponse { .. }
            | Self::BadSize { .. }
            | Self::CommandTooLong { .. }
            | Self::WrongKind { .. }
            | Self::Open { .. }
            | Self::Protocol { .. } => false,
        }
    }
}

/// What a file is, for [`TransportError::WrongKind`].
pub(crate) fn kind_of(file_type: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt as _;
    if file_type.is_file() {
        "a regular file"
    } else if file_type.is_dir() {
        "a directory"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_socket() {
        "a unix socket"
    } else if file_type.is_fifo() {
        "a named pipe"
    } else if file_type.is_symlink() {
        "a symbolic link"
    } else {
        "not a device"
    }
}

/// Checks a response header's size field against the frame bounds and returns it.
///
/// # Errors
/// [`TransportError::ShortResponse`] if fewer than [`HEADER_LEN`] bytes are given,
/// [`TransportError::BadSize`] if the size field is outside `[HEADER_LEN, FRAME_MAX]`.
pub(crate) fn frame_size(header: &[u8], device: &str) -> Result<usize, TransportError> {
    let Some(size) = header.get(2..6) else {
        return Err(TransportError::ShortResponse {
            device: device.to_owned(),
            len: header.len(),
        });
    };
    if header.len() < HEADER_LEN {
        return Err(TransportError::ShortResponse {
            device: device.to_owned(),
            len: header.len(),
        });
    }
    let declared = u32::from_be_bytes([size[0], size[1], size[2], size[3]]);
    let ok = usize::try_from(declared)
        .ok()
        .filter(|n| (HEADER_LEN..=FRAME_MAX).contains(n));
    ok.ok_or(TransportError::BadSize {
        device: device.to_owned(),
        declared,
        received: header.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_size_bounds_the_header_field() {
        let mut h = [0x80, 0x01, 0, 0, 0, 10, 0, 0, 0, 0];
        assert_eq!(frame_size(&h, "t").unwrap(), 10);
        h[2..6].copy_from_slice(&4097u32.to_be_bytes());
        assert!(matches!(
            frame_size(&h, "t"),
            Err(TransportError::BadSize { declared: 4097, .. })
        ));
        h[2..6].copy_from_slice(&9u32.to_be_bytes());
        assert!(matches!(
            frame_size(&h, "t"),
            Err(TransportError::BadSize { declared: 9, .. })
        ));
        assert!(matches!(
            frame_size(&h[..5], "t"),
            Err(TransportError::ShortResponse { len: 5, .. })
        ));
    }

    #[test]
    fn transient_classification() {
        let t = TransportError::Timeout {
            op: "read",
            device: "d".into(),
        };
        assert!(t.is_transient());
        let n = TransportError::NotFound {
            device: "/dev/tpmrm0".into(),
        };
        assert!(!n.is_transient());
        assert!(n.to_string().contains("/dev/tpmrm0"));
        assert!(n.to_string().contains("tpm_tis"));
        let p = TransportError::Protocol {
            device: "spi:/dev/spidev0.1".into(),
            what: "TPM still expects data after the whole 12-byte command".into(),
        };
        assert!(!p.is_transient());
        assert_eq!(
            p.to_string(),
            "TPM spi:/dev/spidev0.1: TPM still expects data after the whole 12-byte command"
        );
        let o = TransportError::Open {
            device: "tis-mmio:0xc000000".into(),
            hint: "unload tpm_tis",
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        };
        assert!(!o.is_transient());
        assert_eq!(
            o.to_string(),
            "cannot open TPM tis-mmio:0xc000000: unload tpm_tis"
        );
    }
}
