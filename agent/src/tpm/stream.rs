//! Byte-stream transport: swtpm's raw TPM socket (TCP or unix) and in-memory fakes.
//!
//! swtpm's server socket carries bare TPM command and response frames, one response per
//! command. [`Stream`] is written against `embedded-io`'s `Read` and `Write` (the traits a
//! UART or a no_std socket implements too), so this framing code has no std I/O in it; std
//! sockets come in through `embedded-io-adapters`' [`FromStd`] ([`Tcp`], [`Unix`]), and tests
//! drive it with an in-memory peer. Errors convert into `std::io::Error` for the transport's
//! error type (timeouts are told apart by their std kind: a socket's SO_RCVTIMEO expiry is
//! `WouldBlock`, which embedded-io's kinds cannot express). It bounds the response size
//! field to `[HEADER_LEN, FRAME_MAX]` before reading the body and never reads more than one
//! frame; it never parses payloads.

use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use embedded_io::{Read, Write};
pub use embedded_io_adapters::std::FromStd;

use super::{FRAME_MAX, HEADER_LEN, Transport, TransportError, frame_size};

/// Read/write timeout for TPM sockets. Generous: an RSA CreatePrimary takes seconds on real
/// chips, and swtpm runs the same code in software on slow boards.
pub const IO_TIMEOUT: Duration = Duration::from_secs(120);
/// Connect timeout for swtpm TCP sockets.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A TPM reached through a byte stream (socket or in-memory fake).
pub struct Stream<S> {
    io: S,
    device: String,
}

impl<S> std::fmt::Debug for Stream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// swtpm's TCP server socket.
pub type Tcp = Stream<FromStd<TcpStream>>;

/// swtpm's unix server socket.
pub type Unix = Stream<FromStd<UnixStream>>;

impl<S> Stream<S>
where
    S: Read + Write,
    S::Error: Into<io::Error>,
{
    /// Wraps an already connected stream; `device` names it in errors.
    pub fn new(io: S, device: impl Into<String>) -> Self {
        Self {
            io,
            device: device.into(),
        }
    }

    /// Gives the underlying stream back.
    pub fn into_inner(self) -> S {
        self.io
    }

    fn io_error(&self, op: &'static str, source: S::Error) -> TransportError {
        let source: io::Error = source.into();
        match source.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => TransportError::Timeout {
                op,
                device: self.device.clone(),
            },
            _ => TransportError::Io {
                op,
                device: self.device.clone(),
                source,
            },
        }
    }

    /// Reads until `buf` is full or the peer closes; returns the count read.
    fn read_full(&mut self, buf: &mut [u8], op: &'static str) -> Result<usize, TransportError> {
        let mut got = 0;
        while got < buf.len() {
            let Some(rest) = buf.get_mut(got..) else {
                break;
            };
            match self.io.read(rest) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if embedded_io::Error::kind(&e) == embedded_io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_error(op, e)),
            }
        }
        Ok(got)
    }
}

impl Tcp {
    /// Connects to swtpm's TCP server port (`swtpm socket --server type=tcp,port=P`).
    ///
    /// # Errors
    /// [`TransportError::Io`] if the name does not resolve or nothing listens there.
    pub fn connect_tcp(host: &str, port: u16) -> Result<Self, TransportError> {
        let device = format!("swtpm:{host}:{port}");
        let io_err = |op, source| TransportError::Io {
            op,
            device: device.clone(),
            source,
        };
        let addrs = (host, port)
            .to_socket_addrs()
            .map_err(|e| io_err("resolve", e))?;
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                Ok(s) => {
                    s.set_read_timeout(Some(IO_TIMEOUT))
                        .map_err(|e| io_err("configure", e))?;
                    s.set_write_timeout(Some(IO_TIMEOUT))
                        .map_err(|e| io_err("configure", e))?;
                    // Frames are small and strictly request/response: don't wait for Nagle.
                    s.set_nodelay(true).map_err(|e| io_err("configure", e))?;
                    return Ok(Self::new(FromStd::new(s), device));
                }
                Err(e) => last = e,
            }
        }
        Err(io_err("connect", last))
    }
}

impl Unix {
    /// Connects to swtpm's unix server socket (`swtpm socket --server type=unixio,path=X`).
    ///
    /// # Errors
    /// [`TransportError::Open`] if the socket does not exist (saying to start swtpm, not to
    /// check firmware or drivers),
    /// [`TransportError::WrongKind`] if the path is not a socket, [`TransportError::Io`] if
    /// nothing listens there.
    pub fn connect_unix(path: &Path) -> Result<Self, TransportError> {
        use std::os::unix::fs::FileTypeExt as _;
        let device = format!("swtpm-unix:{}", path.display());
        // Only a socket: connect() never writes to a file, but the operator meant something
        // else, and the error should say what.
        if let Ok(meta) = std::fs::metadata(path)
            && !meta.file_type().is_socket()
        {
            return Err(TransportError::WrongKind {
                device,
                found: super::kind_of(meta.file_type()),
                expected: "a unix socket",
                hint: "swtpm-unix: with the path given to swtpm's --server type=unixio,path=PATH \
                       (or --tpm /dev/tpmrm0 for a kernel TPM)",
            });
        }
        let s = UnixStream::connect(path).map_err(|source| match source.kind() {
            // Not a firmware or driver matter: nothing listens at that path.
            io::ErrorKind::NotFound => TransportError::Open {
                device: device.clone(),
                hint: "no socket at that path: start swtpm with --server type=unixio,path=PATH \
                       (or fix the path)",
                source,
            },
            _ => TransportError::Io {
                op: "connect",
                device: device.clone(),
                source,
            },
        })?;
        let cfg = |r: io::Result<()>| {
            r.map_err(|source| TransportError::Io {
                op: "configure",
                device: device.clone(),
                source,
            })
        };
        cfg(s.set_read_timeout(Some(IO_TIMEOUT)))?;
        cfg(s.set_write_timeout(Some(IO_TIMEOUT)))?;
        Ok(Self::new(FromStd::new(s), device))
    }
}

impl<S> Transport for Stream<S>
where
    S: Read + Write,
    S::Error: Into<io::Error>,
{
    fn transact(&mut self, cmd: &[u8], rsp: &mut [u8; FRAME_MAX]) -> Result<usize, TransportError> {
        if cmd.len() > FRAME_MAX {
            return Err(TransportError::CommandTooLong { len: cmd.len() });
        }
        self.io
            .write_all(cmd)
            .map_err(|e| self.io_error("write command", e))?;
        self.io
            .flush()
            .map_err(|e| self.io_error("write command", e))?;

        let (header, body) = rsp.split_at_mut(HEADER_LEN);
        let got = self.read_full(header, "read header")?;
        let size = frame_size(header.get(..got).unwrap_or_default(), &self.device)?;
        let body = body.get_mut(..size - HEADER_LEN).unwrap_or_default();
        let want = body.len();
        let got = self.read_full(body, "read body")?;
        if got != want {
            return Err(TransportError::BadSize {
                device: self.device.clone(),
                declared: u32::try_from(size).unwrap_or(u32::MAX),
                received: HEADER_LEN + got,
            });
        }
        Ok(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// An in-memory peer on the embedded-io traits themselves: reads come from `rx`, writes
    /// go to `tx`.
    struct Peer {
        rx: Cursor<Vec<u8>>,
        tx: Vec<u8>,
    }
    impl embedded_io::ErrorType for Peer {
        type Error = io::Error;
    }
    impl Read for Peer {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            io::Read::read(&mut self.rx, buf)
        }
    }
    impl Write for Peer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.tx.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn stream(rx: Vec<u8>) -> Stream<Peer> {
        Stream::new(
            Peer {
                rx: Cursor::new(rx),
                tx: Vec::new(),
            },
            "fake",
        )
    }

    #[test]
    fn reads_exactly_one_frame() {
        let mut rx = vec![0x80, 0x01, 0, 0, 0, 12, 0, 0, 0, 0, 0xaa, 0xbb];
        rx.extend_from_slice(&[0xcc; 5]); // next frame's bytes must stay unread
        let mut s = stream(rx);
        let mut rsp = [0u8; FRAME_MAX];
        let n = s.transact(&[1, 2, 3], &mut rsp).unwrap();
        assert_eq!(n, 12);
        assert_eq!(&rsp[10..12], &[0xaa, 0xbb]);
        let peer = s.into_inner();
        assert_eq!(peer.tx, vec![1, 2, 3]);
        assert_eq!(peer.rx.position(), 12);
    }

    #[test]
    fn short_header_is_an_error() {
        let mut s = stream(vec![0x80, 0x01, 0, 0]);
        let mut rsp = [0u8; FRAME_MAX];
        let e = s.transact(&[0], &mut rsp).unwrap_err();
        assert!(
            matches!(e, TransportError::ShortResponse { len: 4, .. }),
            "{e}"
        );
    }

    #[test]
    fn size_larger_than_frame_is_rejected_before_reading_body() {
        let mut s = stream(vec![0x80, 0x01, 0x00, 0x10, 0x00, 0x01, 0, 0, 0, 0]);
        let mut rsp = [0u8; FRAME_MAX];
        let e = s.transact(&[0], &mut rsp).unwrap_err();
        assert!(
            matches!(
                e,
                TransportError::BadSize {
                    declared: 0x0010_0001,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("1048577"), "{e}");
    }

    #[test]
    fn truncated_body_is_an_error() {
        let mut s = stream(vec![0x80, 0x01, 0, 0, 0, 20, 0, 0, 0, 0, 1, 2]);
        let mut rsp = [0u8; FRAME_MAX];
        let e = s.transact(&[0], &mut rsp).unwrap_err();
        assert!(
            matches!(
                e,
                TransportError::BadSize {
                    declared: 20,
                    received: 12,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn oversized_command_is_refused() {
        let mut s = stream(Vec::new());
        let mut rsp = [0u8; FRAME_MAX];
        let cmd = vec![0u8; FRAME_MAX + 1];
        assert!(matches!(
            s.transact(&cmd, &mut rsp),
            Err(TransportError::CommandTooLong { .. })
        ));
    }

    #[test]
    fn missing_unix_socket_names_the_path() {
        let e = Stream::connect_unix(Path::new("/nonexistent/ekattest-swtpm.sock")).unwrap_err();
        assert!(
            e.to_string().contains("/nonexistent/ekattest-swtpm.sock"),
            "{e}"
        );
    }

    #[test]
    fn unix_spec_on_a_regular_file_or_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("swtpm.sock");
        std::fs::write(&file, b"not a socket").unwrap();
        let e = Stream::connect_unix(&file).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, TransportError::WrongKind { .. }), "{msg}");
        assert!(
            msg.contains("is a regular file, not a unix socket"),
            "{msg}"
        );
        assert!(msg.contains(&file.display().to_string()), "{msg}");
        assert!(msg.contains("type=unixio"), "{msg}");
        assert_eq!(std::fs::read(&file).unwrap(), b"not a socket");
        let e = Stream::connect_unix(dir.path()).unwrap_err();
        assert!(
            e.to_string().contains("is a directory, not a unix socket"),
            "{e}"
        );
        // Missing: start swtpm; nothing about firmware or kernel drivers.
        let e = Stream::connect_unix(&dir.path().join("absent.sock")).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("no socket at that path: start swtpm"), "{msg}");
        assert!(
            !msg.contains("firmware") && !msg.contains("tpm_tis"),
            "{msg}"
        );
    }
}
