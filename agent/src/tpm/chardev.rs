//! Character-device transport: the Linux kernel TPM driver (`/dev/tpmrm0`, `/dev/tpm0`).
//!
//! `/dev/tpmrm0` is the kernel resource manager: many processes may use it and it flushes
//! what a closed file left behind. `/dev/tpm0` is the raw device; it admits one opener, and
//! we also take an exclusive `flock` so two agents on one host fail clearly instead of
//! interleaving commands. The kernel answers one `write` of a command with one `read` of the
//! whole response. This module never parses payloads, and never writes to a path that is not
//! a character device (a mistyped `--tpm /tmp/file` must not overwrite the file): the type
//! is checked before the open and again on the open file, before the first write.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::{FRAME_MAX, HEADER_LEN, Transport, TransportError, frame_size};

/// The kernel resource manager device (preferred).
pub const TPMRM0: &str = "/dev/tpmrm0";
/// The raw TPM device (fallback; exclusive).
pub const TPM0: &str = "/dev/tpm0";

/// An open TPM character device.
#[derive(Debug)]
pub struct CharDev {
    file: Handle,
    device: String,
}

#[derive(Debug)]
enum Handle {
    Shared(File),
    Locked(Flock<File>),
}

impl Handle {
    fn file(&mut self) -> &mut File {
        match self {
            Self::Shared(f) => f,
            Self::Locked(f) => f,
        }
    }
}

impl CharDev {
    /// Opens `/dev/tpmrm0`, or `/dev/tpm0` with an exclusive lock when the resource manager
    /// device does not exist.
    ///
    /// # Errors
    /// [`TransportError::NotFound`] naming both paths if neither exists; otherwise as
    /// [`CharDev::open`].
    pub fn open_default() -> Result<Self, TransportError> {
        match Self::open(Path::new(TPMRM0)) {
            Err(TransportError::NotFound { .. }) => match Self::open(Path::new(TPM0)) {
                Err(TransportError::NotFound { .. }) => Err(TransportError::NotFound {
                    device: format!("{TPMRM0} (nor {TPM0})"),
                }),
                other => other,
            },
            other => other,
        }
    }

    /// Opens the device at `path`. Any path other than a resource-manager node (`tpmrm*`) is
    /// locked exclusively (`flock`), since the raw device admits one user.
    ///
    /// # Errors
    /// [`TransportError::NotFound`], [`TransportError::WrongKind`] (not a character device:
    /// nothing is written to it), [`TransportError::PermissionDenied`],
    /// [`TransportError::Busy`] (locked or opened by another process), or
    /// [`TransportError::Io`].
    pub fn open(path: &Path) -> Result<Self, TransportError> {
        let device = path.display().to_string();
        match std::fs::metadata(path) {
            Ok(meta) => check_char_device(meta.file_type(), &device)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(TransportError::NotFound { device });
            }
            // Permission problems and the like show up at the open below, with their advice.
            Err(_) => {}
        }
        let mut dev = Self::open_node(path)?;
        // Again on the open file: the path may have been replaced since the check above.
        let meta = dev
            .file
            .file()
            .metadata()
            .map_err(|source| TransportError::Io {
                op: "stat",
                device: device.clone(),
                source,
            })?;
        check_char_device(meta.file_type(), &device)?;
        Ok(dev)
    }

    /// [`CharDev::open`] without the file type check (the unit tests' regular files).
    fn open_node(path: &Path) -> Result<Self, TransportError> {
        let device = path.display().to_string();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| {
                match source.kind() {
                    io::ErrorKind::NotFound => TransportError::NotFound {
                        device: device.clone(),
                    },
                    io::ErrorKind::PermissionDenied => TransportError::PermissionDenied {
                        device: device.clone(),
                    },
                    // The raw device returns EBUSY while another process holds it open.
                    _ if source.raw_os_error() == Some(Errno::EBUSY as i32) => {
                        TransportError::Busy {
                            device: device.clone(),
                        }
                    }
                    _ => TransportError::Io {
                        op: "open",
                        device: device.clone(),
                        source,
                    },
                }
            })?;
        let file = if is_resource_manager(path) {
            Handle::Shared(file)
        } else {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(locked) => Handle::Locked(locked),
                Err((_, Errno::EWOULDBLOCK)) => return Err(TransportError::Busy { device }),
                Err((_, errno)) => {
                    return Err(TransportError::Io {
                        op: "lock",
                        device,
                        source: io::Error::from(errno),
                    });
                }
            }
        };
        Ok(Self { file, device })
    }

    /// The device path this transport was opened on.
    #[must_use]
    pub fn device(&self) -> &str {
        &self.device
    }
}

/// Refuses anything but a character device, naming what `device` is instead.
fn check_char_device(file_type: std::fs::FileType, device: &str) -> Result<(), TransportError> {
    use std::os::unix::fs::FileTypeExt as _;
    if file_type.is_char_device() {
        return Ok(());
    }
    Err(TransportError::WrongKind {
        device: device.to_owned(),
        found: super::kind_of(file_type),
        expected: "a character device",
        hint: "--tpm /dev/tpmrm0 (or another TPM device node), swtpm:HOST:PORT or \
               swtpm-unix:PATH",
    })
}

fn is_resource_manager(path: &Path) -> bool {
    let canonical: PathBuf = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    canonical
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("tpmrm"))
}

impl Transport for CharDev {
    fn transact(&mut self, cmd: &[u8], rsp: &mut [u8; FRAME_MAX]) -> Result<usize, TransportError> {
        if cmd.len() > FRAME_MAX {
            return Err(TransportError::CommandTooLong { len: cmd.len() });
        }
        let device = self.device.clone();
        let io_err = |op, source: io::Error| match source.kind() {
            io::ErrorKind::TimedOut => TransportError::Timeout {
                op,
                device: device.clone(),
            },
            _ => TransportError::Io {
                op,
                device: device.clone(),
                source,
            },
        };
        let file = self.file.file();
        file.write_all(cmd)
            .map_err(|e| io_err("write command", e))?;
        // The driver hands over the whole response in one read.
        let n = loop {
            match file.read(rsp) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err("read response", e)),
            }
        };
        let got = rsp.get(..n).unwrap_or_default();
        let size = frame_size(got, &self.device)?;
        if size != n || n < HEADER_LEN {
            return Err(TransportError::BadSize {
                device: self.device.clone(),
                declared: u32::try_from(size).unwrap_or(u32::MAX),
                received: n,
            });
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_device_is_a_clear_error() {
        let e = CharDev::open(Path::new("/dev/ekattest-no-such-tpm")).unwrap_err();
        assert!(matches!(e, TransportError::NotFound { .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("/dev/ekattest-no-such-tpm"), "{msg}");
        assert!(msg.contains("tpm_tis"), "{msg}");
    }

    #[test]
    fn raw_device_is_locked_exclusively() {
        // A regular file stands in for /dev/tpm0: the second opener must see Busy.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tpm0");
        std::fs::write(&path, b"").unwrap();
        let first = CharDev::open_node(&path).unwrap();
        let second = CharDev::open_node(&path).unwrap_err();
        assert!(matches!(second, TransportError::Busy { .. }), "{second}");
        drop(first);
        CharDev::open_node(&path).unwrap();
    }

    #[test]
    fn resource_manager_is_not_locked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tpmrm0");
        std::fs::write(&path, b"").unwrap();
        let _a = CharDev::open_node(&path).unwrap();
        let _b = CharDev::open_node(&path).unwrap();
    }

    #[test]
    fn short_read_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tpmrm0");
        std::fs::write(&path, b"").unwrap();
        let mut dev = CharDev::open_node(&path).unwrap();
        let mut rsp = [0u8; FRAME_MAX];
        // Writing to a regular file appends; reading at EOF returns 0 bytes.
        let e = dev.transact(&[0x80, 0x01], &mut rsp).unwrap_err();
        assert!(
            matches!(e, TransportError::ShortResponse { len: 0, .. }),
            "{e}"
        );
    }

    #[test]
    fn regular_file_is_refused_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tpmrm0");
        std::fs::write(&path, b"precious bytes").unwrap();
        let before = std::fs::metadata(&path).unwrap().modified().unwrap();
        let e = CharDev::open(&path).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, TransportError::WrongKind { .. }), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(
            msg.contains("is a regular file, not a character device"),
            "{msg}"
        );
        assert!(msg.contains("--tpm /dev/tpmrm0"), "{msg}");
        assert_eq!(std::fs::read(&path).unwrap(), b"precious bytes");
        assert_eq!(
            std::fs::metadata(&path).unwrap().modified().unwrap(),
            before
        );
    }

    #[test]
    fn directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = CharDev::open(dir.path()).unwrap_err();
        assert!(
            e.to_string()
                .contains("is a directory, not a character device"),
            "{e}"
        );
    }

    #[test]
    fn a_character_device_passes_the_type_check() {
        // /dev/null is a character device but no TPM: open succeeds, the exchange fails.
        let mut dev = CharDev::open(Path::new("/dev/null")).unwrap();
        let mut rsp = [0u8; FRAME_MAX];
        let e = dev.transact(&[0x80, 0x01], &mut rsp).unwrap_err();
        assert!(
            matches!(e, TransportError::ShortResponse { len: 0, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("/dev/null"), "{e}");
    }
}
