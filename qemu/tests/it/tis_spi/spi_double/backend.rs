//! The TPM behind the device model: a worker thread that runs whole commands on a real swtpm
//! (a `TcpStream` to its server port, through embedded-io's traits like the agent's byte
//! streams: raw command out, one response back) or on a closure in self-checks, so the
//! model's Execution state lasts as long as the TPM works.
//!
//! Must never: share code with the agent's transports, block the SPI side (the model only
//! polls for answers), or read more than one bounded frame per command.

use std::io;
use std::net::TcpStream;

use embedded_io::{Read, ReadExactError, Write};
use embedded_io_adapters::std::FromStd;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::thread;
use std::time::Duration;

/// Largest command or response frame the model handles (the PTP profile's 4 KiB).
pub(crate) const FRAME_CAP: usize = 4096;
/// A TPM frame's header: tag (2), size (4), code (4).
const FRAME_HEADER: usize = 10;
/// How long the worker waits for swtpm (an RSA key generation takes seconds).
const IO_TIMEOUT: Duration = Duration::from_secs(120);

/// What the TPM answered command `seq`: the response, or why there is none.
pub(crate) type Answer = (u64, Result<Vec<u8>, String>);

/// A running TPM worker.
#[derive(Debug)]
pub(crate) struct Backend {
    commands: Sender<(u64, Vec<u8>)>,
    answers: Receiver<Answer>,
}

impl Backend {
    /// Runs `tpm` on a worker thread; commands are executed in the order sent.
    pub(crate) fn spawn(
        mut tpm: impl FnMut(&[u8]) -> Result<Vec<u8>, String> + Send + 'static,
    ) -> io::Result<Self> {
        let (commands, rx) = mpsc::channel::<(u64, Vec<u8>)>();
        let (tx, answers) = mpsc::channel();
        thread::Builder::new()
            .name("spi-double-tpm".into())
            .spawn(move || {
                // Ends when the model (the only sender) is dropped.
                while let Ok((seq, cmd)) = rx.recv() {
                    if tx.send((seq, tpm(&cmd))).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Self { commands, answers })
    }

    /// A worker talking to swtpm's TCP server port on localhost.
    pub(crate) fn swtpm(port: u16) -> io::Result<Self> {
        let sock = TcpStream::connect(("127.0.0.1", port))?;
        sock.set_read_timeout(Some(IO_TIMEOUT))?;
        sock.set_write_timeout(Some(IO_TIMEOUT))?;
        sock.set_nodelay(true)?;
        let mut sock = FromStd::new(sock);
        Self::spawn(move |cmd| run_on_socket(&mut sock, cmd).map_err(|e| format!("swtpm: {e}")))
    }

    /// Hands command `seq` to the worker.
    pub(crate) fn send(&self, seq: u64, cmd: Vec<u8>) -> Result<(), String> {
        self.commands
            .send((seq, cmd))
            .map_err(|_| "the TPM worker thread is gone".to_owned())
    }

    /// An answer, if one is ready.
    pub(crate) fn try_recv(&self) -> Option<Answer> {
        match self.answers.try_recv() {
            Ok(a) => Some(a),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => {
                Some((u64::MAX, Err("the TPM worker thread is gone".to_owned())))
            }
        }
    }
}

/// One command on swtpm's raw socket: write it, read the 10-byte header, then the size the
/// header declares (bounded to a frame).
fn run_on_socket<S>(sock: &mut S, cmd: &[u8]) -> io::Result<Vec<u8>>
where
    S: Read + Write<Error = io::Error>,
{
    let exact = |e: ReadExactError<io::Error>| match e {
        ReadExactError::UnexpectedEof => io::Error::from(io::ErrorKind::UnexpectedEof),
        ReadExactError::Other(e) => e,
    };
    sock.write_all(cmd)?;
    sock.flush()?;
    let mut header = [0u8; FRAME_HEADER];
    sock.read_exact(&mut header).map_err(exact)?;
    let size = usize::try_from(u32::from_be_bytes([
        header[2], header[3], header[4], header[5],
    ]))
    .unwrap_or(usize::MAX);
    if !(FRAME_HEADER..=FRAME_CAP).contains(&size) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("response declares {size} bytes (allowed {FRAME_HEADER}..={FRAME_CAP})"),
        ));
    }
    let mut rsp = vec![0u8; size];
    rsp[..FRAME_HEADER].copy_from_slice(&header);
    sock.read_exact(&mut rsp[FRAME_HEADER..]).map_err(exact)?;
    Ok(rsp)
}
