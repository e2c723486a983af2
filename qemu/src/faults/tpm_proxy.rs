//! A TCP forwarder in front of a swtpm server socket that delays every TPM response, to
//! simulate slow TPMs (`--slow-tpm D[±J]`). The agent's `tpm` spec points at the proxy
//! (`swtpm:127.0.0.1:PORT`, [`TpmProxy::spec`]).
//!
//! TPM framing: a command and its response each start with a 10-byte header whose
//! big-endian u32 at offset 2 is the whole frame's size; swtpm answers each command with
//! exactly one response. The proxy reads one whole command, forwards it, reads one whole
//! response, sleeps, forwards it. It never changes a byte, never accepts a frame size
//! outside `[10, TPM_FRAME_MAX]` (the connection is closed instead), never binds a fixed
//! port, and stops its threads on drop.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::rng::Rng;

/// Largest TPM frame forwarded (real TPMs stay under 4 KiB).
pub const TPM_FRAME_MAX: usize = 64 * 1024;
/// TPM command/response header size.
const HEADER: usize = 10;
/// Stack of each connection thread.
const STACK: usize = 128 * 1024;
/// How long the proxy waits for swtpm to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Counters since the proxy started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TpmStats {
    /// Client connections accepted.
    pub connections: u64,
    /// Commands forwarded to the TPM.
    pub commands: u64,
    /// Responses forwarded (each one delayed).
    pub responses: u64,
    /// Total delay added, in milliseconds.
    pub delayed_ms: u64,
}

#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    delay: Duration,
    jitter: Duration,
    seed: u64,
    stop: AtomicBool,
    conns: Mutex<HashMap<u64, [TcpStream; 2]>>,
    connections: AtomicU64,
    commands: AtomicU64,
    responses: AtomicU64,
    delayed_ms: AtomicU64,
}

/// A running slow-TPM proxy (see the module docs); stopped on drop.
#[derive(Debug)]
pub struct TpmProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl TpmProxy {
    /// Forwards to the swtpm server socket at `upstream`, delaying each response by `delay`
    /// ± `jitter` (uniform, never below zero), seed 0.
    ///
    /// # Errors
    /// When the listener cannot be bound or its thread cannot be started.
    pub fn start(upstream: SocketAddr, delay: Duration, jitter: Duration) -> io::Result<Self> {
        Self::start_seeded(upstream, delay, jitter, 0)
    }

    /// As [`TpmProxy::start`], with the jitter drawn from `seed` (`--fault-seed`).
    ///
    /// # Errors
    /// When the listener cannot be bound or its thread cannot be started.
    pub fn start_seeded(
        upstream: SocketAddr,
        delay: Duration,
        jitter: Duration,
        seed: u64,
    ) -> io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            delay,
            jitter,
            seed,
            stop: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            connections: AtomicU64::new(0),
            commands: AtomicU64::new(0),
            responses: AtomicU64::new(0),
            delayed_ms: AtomicU64::new(0),
        });
        let s = Arc::clone(&shared);
        let accept = thread::Builder::new()
            .name("tpm-proxy-accept".into())
            .stack_size(STACK)
            .spawn(move || accept_loop(&listener, &s))?;
        Ok(Self {
            addr,
            shared,
            accept: Some(accept),
        })
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `swtpm:127.0.0.1:PORT`: the agent's `--tpm` / `tpm:` value for the slow TPM.
    pub fn spec(&self) -> String {
        format!("swtpm:{}:{}", self.addr.ip(), self.addr.port())
    }

    /// The counters so far.
    pub fn stats(&self) -> TpmStats {
        let s = &self.shared;
        TpmStats {
            connections: s.connections.load(Ordering::Relaxed),
            commands: s.commands.load(Ordering::Relaxed),
            responses: s.responses.load(Ordering::Relaxed),
            delayed_ms: s.delayed_ms.load(Ordering::Relaxed),
        }
    }
}

impl Drop for TpmProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        sever(&self.shared);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        sever(&self.shared);
    }
}

fn sever(shared: &Shared) {
    let conns = shared.conns.lock().unwrap_or_else(PoisonError::into_inner);
    for [a, b] in conns.values() {
        let _ = a.shutdown(Shutdown::Both);
        let _ = b.shutdown(Shutdown::Both);
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    let mut next_id = 0u64;
    for client in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(client) = client else { continue };
        let id = next_id;
        next_id += 1;
        shared.connections.fetch_add(1, Ordering::Relaxed);
        let s = Arc::clone(shared);
        // A failed spawn drops the client: the agent reports a TPM connection error.
        let _ = thread::Builder::new()
            .name(format!("tpm-proxy-{id}"))
            .stack_size(STACK)
            .spawn(move || connection(id, client, &s));
    }
}

fn connection(id: u64, mut client: TcpStream, shared: &Shared) {
    let Ok(mut tpm) = TcpStream::connect_timeout(&shared.upstream, CONNECT_TIMEOUT) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = tpm.set_nodelay(true);
    if let (Ok(c), Ok(t)) = (client.try_clone(), tpm.try_clone()) {
        shared
            .conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, [c, t]);
    }
    let mut rng = Rng::derive(shared.seed, id);
    while !shared.stop.load(Ordering::SeqCst) {
        let Ok(Some(command)) = read_frame(&mut client) else {
            break;
        };
        if tpm.write_all(&command).is_err() {
            break;
        }
        shared.commands.fetch_add(1, Ordering::Relaxed);
        let Ok(Some(response)) = read_frame(&mut tpm) else {
            break;
        };
        let delay = pick_delay(shared.delay, shared.jitter, &mut rng);
        thread::sleep(delay);
        shared
            .delayed_ms
            .fetch_add(delay.as_millis() as u64, Ordering::Relaxed);
        // Counted before the write: a client that has its response may exit and have its
        // stats read before this thread runs again.
        shared.responses.fetch_add(1, Ordering::Relaxed);
        if client.write_all(&response).is_err() {
            break;
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = tpm.shutdown(Shutdown::Both);
    shared
        .conns
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&id);
}

/// `delay` ± `jitter`, uniform, floored at zero.
pub(crate) fn pick_delay(delay: Duration, jitter: Duration, rng: &mut Rng) -> Duration {
    if jitter.is_zero() {
        return delay;
    }
    let j = jitter.as_micros().min(u128::from(u64::MAX / 2)) as u64;
    let offset = rng.below(2 * j + 1);
    let base = delay.saturating_add(Duration::from_micros(offset));
    base.saturating_sub(jitter)
}

/// Reads one TPM frame (size from the header, bounded). `Ok(None)`: closed between frames.
fn read_frame<R: Read>(r: &mut R) -> io::Result<Option<Vec<u8>>> {
    let mut header = [0u8; HEADER];
    let mut got = 0;
    while got < HEADER {
        let Some(rest) = header.get_mut(got..) else {
            break;
        };
        match r.read(rest) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let size = frame_size(&header)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "TPM frame size out of range"))?;
    let mut frame = Vec::with_capacity(size);
    frame.extend_from_slice(&header);
    frame.resize(size, 0);
    if let Some(body) = frame.get_mut(HEADER..) {
        r.read_exact(body)?;
    }
    Ok(Some(frame))
}

/// The frame size announced by a header, if within `[10, TPM_FRAME_MAX]`.
fn frame_size(header: &[u8; HEADER]) -> Option<usize> {
    let size = u32::from_be_bytes([header[2], header[3], header[4], header[5]]);
    let size = usize::try_from(size).ok()?;
    (HEADER..=TPM_FRAME_MAX).contains(&size).then_some(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_bounded() {
        let frame = |size: u32| {
            let mut v = vec![0x80, 0x01];
            v.extend(size.to_be_bytes());
            v.extend([0, 0, 0, 0]);
            v.resize(v.len().max(size as usize), 0xAB);
            v
        };
        let ok = frame(12);
        let mut r = &ok[..];
        assert_eq!(read_frame(&mut r).unwrap().unwrap(), ok);
        assert!(read_frame(&mut r).unwrap().is_none());
        for bad in [0u32, 9, TPM_FRAME_MAX as u32 + 1, u32::MAX] {
            let mut h = vec![0x80, 0x01];
            h.extend(bad.to_be_bytes());
            h.extend([0, 0, 0, 0]);
            let mut r = &h[..];
            assert!(read_frame(&mut r).is_err(), "{bad}");
        }
        let cut = &ok[..11];
        let mut r = cut;
        assert!(read_frame(&mut r).is_err());
        let mut r = &ok[..4];
        assert!(read_frame(&mut r).is_err());
    }

    #[test]
    fn delay_with_jitter_stays_in_range() {
        let mut rng = Rng::new(3);
        let d = Duration::from_millis(100);
        let j = Duration::from_millis(30);
        let picks: Vec<Duration> = (0..500).map(|_| pick_delay(d, j, &mut rng)).collect();
        assert!(picks.iter().all(|p| *p >= d - j && *p <= d + j));
        assert!(picks.iter().any(|p| *p < d) && picks.iter().any(|p| *p > d));
        assert_eq!(pick_delay(d, Duration::ZERO, &mut rng), d);
        // Jitter larger than the delay floors at zero.
        assert!((0..100).all(|_| pick_delay(j, d, &mut rng) <= j + d));
    }
}
