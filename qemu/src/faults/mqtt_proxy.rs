//! A small MQTT 3.1.1 proxy for fault injection: listens on a free loopback port, forwards
//! every connection to the broker, cuts both byte streams into packets
//! ([`super::mqtt_frame`]) and, per PUBLISH packet, drops a fraction of them or flips bytes
//! in a fraction of their payloads, with a seeded generator (reproducible). It also pauses
//! all forwarding for a while and severs every connection at once (a network cut), and
//! counts packets and bytes per direction (the fleet report's bytes on the wire).
//!
//! With a [`Tamper`] set ([`MqttProxy::set_tamper`]) it is also an attacker on the broker
//! path: every PUBLISH is shown to the tamper, which forwards it, drops it or replaces its
//! payload (the attack tests in `tests/it/mitm.rs`).
//!
//! Plain TCP only (no TLS: it must read the packets). It never alters a fixed header, a
//! topic or a packet identifier (the connection survives, the receiver must reject the
//! frame), never buffers more than one packet per direction (bounded by
//! [`ProxyOptions::max_packet`]), never binds a fixed port, and stops every thread it
//! started when dropped (connections are severed, then the listener is woken and joined).
//! One thread pair per connection: meant for the harness's agents or load threads (up to a
//! few thousand connections), not for an open-ended number of clients.

use std::collections::HashMap;
use std::io::{self, BufReader, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::mqtt_frame::{self, MAX_PACKET};
use super::rng::Rng;

/// How long the proxy waits for the broker to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Stack of each forwarding thread (they hold one packet buffer on the heap; a tamper may
/// decode and re-encode protocol frames of up to 9 KB on it, several times over in a debug
/// build). Virtual memory: only the pages used are committed.
const STACK: usize = 1024 * 1024;
/// Granularity of a pause.
const PAUSE_TICK: Duration = Duration::from_millis(20);

/// What the proxy does to PUBLISH packets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProxyOptions {
    /// Fraction (0..=1) of PUBLISH packets dropped, in each direction.
    pub drop: f64,
    /// Fraction (0..=1) of the PUBLISH packets not dropped whose payload gets corrupted.
    pub corrupt: f64,
    /// Seed of the decisions (`--fault-seed`).
    pub seed: u64,
    /// Largest packet forwarded; a bigger one closes the connection.
    pub max_packet: usize,
    /// Answer a dropped QoS 1 PUBLISH with a PUBACK to its sender (default true), so the
    /// loss looks like a message lost after delivery: the sender's inflight window (20 in
    /// mosquitto, 100 in rumqttc) does not fill up with publishes nobody will ever
    /// acknowledge, and only the application's timeouts recover. Without it a long-lived
    /// connection stalls after a few dozen drops until it reconnects.
    pub ack_dropped: bool,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        Self {
            drop: 0.0,
            corrupt: 0.0,
            seed: 0,
            max_packet: MAX_PACKET,
            ack_dropped: true,
        }
    }
}

/// Which way a packet travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to broker.
    Up,
    /// Broker to client.
    Down,
}

/// What a [`Tamper`] does with one PUBLISH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Forward it unchanged.
    Forward,
    /// Forward it with this payload instead (topic and packet id kept).
    Replace(Vec<u8>),
    /// Drop it (a QoS 1 one is acknowledged to its sender, as for `drop`).
    Drop,
}

/// An attacker on the path: sees every PUBLISH (direction, topic, payload) and decides.
pub type Tamper = Arc<dyn Fn(Direction, &str, &[u8]) -> Verdict + Send + Sync>;

/// Counters since the proxy started ("up" = client to broker, "down" = broker to client).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Client connections accepted.
    pub connections: u64,
    /// Accepted connections closed at once because the broker did not accept ours (down).
    pub upstream_failures: u64,
    /// Packets read from clients (any type, dropped ones included).
    pub packets_up: u64,
    /// Packets read from the broker (any type, dropped ones included).
    pub packets_down: u64,
    /// PUBLISH packets read from clients.
    pub publishes_up: u64,
    /// PUBLISH packets read from the broker.
    pub publishes_down: u64,
    /// PUBLISH packets dropped (both directions).
    pub dropped: u64,
    /// Dropped QoS 1 PUBLISH packets the proxy acknowledged to their sender.
    pub dropped_acked: u64,
    /// PUBLISH packets whose payload was corrupted (both directions).
    pub corrupted: u64,
    /// Bytes written to the broker (MQTT packets, TCP/IP headers not counted; PUBACKs for
    /// dropped publishes included).
    pub bytes_up: u64,
    /// Bytes written to clients.
    pub bytes_down: u64,
}

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    upstream_failures: AtomicU64,
    packets: [AtomicU64; 2],
    publishes: [AtomicU64; 2],
    dropped: AtomicU64,
    dropped_acked: AtomicU64,
    corrupted: AtomicU64,
    bytes: [AtomicU64; 2],
}

#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    opts: ProxyOptions,
    stop: AtomicBool,
    paused_until: Mutex<Option<Instant>>,
    conns: Mutex<HashMap<u64, [TcpStream; 2]>>,
    counters: Counters,
    tamper: TamperSlot,
}

/// The current [`Tamper`], if any.
#[derive(Default)]
struct TamperSlot(Mutex<Option<Tamper>>);

impl std::fmt::Debug for TamperSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some();
        write!(f, "TamperSlot({})", if set { "set" } else { "none" })
    }
}

/// A running proxy (see the module docs); stopped on drop.
#[derive(Debug)]
pub struct MqttProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl MqttProxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`.
    ///
    /// # Errors
    /// When the listener cannot be bound or its thread cannot be started.
    pub fn start(upstream: SocketAddr, opts: ProxyOptions) -> io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            opts,
            stop: AtomicBool::new(false),
            paused_until: Mutex::new(None),
            conns: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            tamper: TamperSlot::default(),
        });
        let s = Arc::clone(&shared);
        let accept = thread::Builder::new()
            .name("mqtt-proxy-accept".into())
            .stack_size(STACK)
            .spawn(move || accept_loop(&listener, &s))?;
        Ok(Self {
            addr,
            shared,
            accept: Some(accept),
        })
    }

    /// The proxy's address (`127.0.0.1:PORT`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `mqtt://127.0.0.1:PORT`, for a daemon's `broker` setting.
    pub fn url(&self) -> String {
        format!("mqtt://{}", self.addr)
    }

    /// The counters so far.
    pub fn stats(&self) -> ProxyStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ProxyStats {
            connections: get(&c.connections),
            upstream_failures: get(&c.upstream_failures),
            packets_up: get(&c.packets[UP]),
            packets_down: get(&c.packets[DOWN]),
            publishes_up: get(&c.publishes[UP]),
            publishes_down: get(&c.publishes[DOWN]),
            dropped: get(&c.dropped),
            dropped_acked: get(&c.dropped_acked),
            corrupted: get(&c.corrupted),
            bytes_up: get(&c.bytes[UP]),
            bytes_down: get(&c.bytes[DOWN]),
        }
    }

    /// Holds every packet (both directions, all connections) until `duration` from now;
    /// held packets are forwarded afterwards, in order. Connections stay open.
    pub fn pause(&self, duration: Duration) {
        let until = Instant::now() + duration;
        *self
            .shared
            .paused_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(until);
    }

    /// Closes every open connection on both sides (a network cut); new connections are
    /// still accepted. Returns how many connections were severed.
    pub fn sever_all(&self) -> usize {
        sever_all(&self.shared)
    }

    /// Puts an attacker on the path (`None` removes it): from now on every PUBLISH, both
    /// ways, goes through `tamper` before the fault options.
    pub fn set_tamper(&self, tamper: Option<Tamper>) {
        *self
            .shared
            .tamper
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = tamper;
    }

    /// Connections open right now.
    pub fn open_connections(&self) -> usize {
        self.shared
            .conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Drop for MqttProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        sever_all(&self.shared);
        // Wake the blocking accept; it sees `stop` and returns.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        sever_all(&self.shared);
    }
}

const UP: usize = 0;
const DOWN: usize = 1;

fn sever_all(shared: &Shared) -> usize {
    let conns = shared.conns.lock().unwrap_or_else(PoisonError::into_inner);
    for [client, broker] in conns.values() {
        let _ = client.shutdown(Shutdown::Both);
        let _ = broker.shutdown(Shutdown::Both);
    }
    conns.len()
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
        shared.counters.connections.fetch_add(1, Ordering::Relaxed);
        let s = Arc::clone(shared);
        let spawned = thread::Builder::new()
            .name(format!("mqtt-proxy-{id}"))
            .stack_size(STACK)
            .spawn(move || connection(id, client, &s));
        if spawned.is_err() {
            // Out of threads: the client sees a closed connection and retries.
            shared
                .counters
                .upstream_failures
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One client connection: connects to the broker, forwards down in a second thread and up
/// in this one, then closes both sides and forgets the connection.
fn connection(id: u64, client: TcpStream, shared: &Arc<Shared>) {
    let Ok(broker) = TcpStream::connect_timeout(&shared.upstream, CONNECT_TIMEOUT) else {
        shared
            .counters
            .upstream_failures
            .fetch_add(1, Ordering::Relaxed);
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = broker.set_nodelay(true);
    let clones = (
        client.try_clone(),
        broker.try_clone(),
        client.try_clone(),
        broker.try_clone(),
        client.try_clone(),
        broker.try_clone(),
    );
    let (Ok(client_r), Ok(broker_r), Ok(client_w), Ok(broker_w), Ok(client_reg), Ok(broker_reg)) =
        clones
    else {
        let _ = client.shutdown(Shutdown::Both);
        let _ = broker.shutdown(Shutdown::Both);
        return;
    };
    shared
        .conns
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(id, [client_reg, broker_reg]);
    // One lock per socket we write to: forwarded packets and the proxy's own PUBACKs must
    // not interleave.
    let client_w = Arc::new(Mutex::new(client_w));
    let broker_w = Arc::new(Mutex::new(broker_w));
    if !shared.stop.load(Ordering::SeqCst) {
        let s = Arc::clone(shared);
        let (to, back) = (Arc::clone(&client_w), Arc::clone(&broker_w));
        let down = thread::Builder::new()
            .name(format!("mqtt-proxy-{id}-down"))
            .stack_size(STACK)
            .spawn(move || pump(id, DOWN, broker_r, &to, &back, &s));
        if let Ok(down) = down {
            pump(id, UP, client_r, &broker_w, &client_w, shared);
            let _ = client.shutdown(Shutdown::Both);
            let _ = broker.shutdown(Shutdown::Both);
            let _ = down.join();
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = broker.shutdown(Shutdown::Both);
    shared
        .conns
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&id);
}

/// Forwards packets from `from` to `to` until either side closes or fails, applying the
/// fault options to PUBLISH packets (a dropped QoS 1 one may be acknowledged on `back`, the
/// sender's socket); then shuts both down so the other direction ends too.
fn pump(
    id: u64,
    dir: usize,
    from: TcpStream,
    to: &Mutex<TcpStream>,
    back: &Mutex<TcpStream>,
    shared: &Shared,
) {
    let opts = shared.opts;
    let c = &shared.counters;
    let count = |counters: &[AtomicU64; 2], d: usize, n: u64| {
        if let Some(a) = counters.get(d) {
            a.fetch_add(n, Ordering::Relaxed);
        }
    };
    let mut rng = Rng::derive(opts.seed, id.wrapping_mul(2).wrapping_add(dir as u64));
    let mut reader = BufReader::new(from);
    while let Ok(Some(mut packet)) = mqtt_frame::read_packet(&mut reader, opts.max_packet) {
        count(&c.packets, dir, 1);
        if packet
            .first()
            .is_some_and(|b| b >> 4 == mqtt_frame::PUBLISH)
        {
            count(&c.publishes, dir, 1);
            // Both decisions are always drawn, so the drop pattern does not depend on the
            // corrupt fraction.
            let mut drop_it = rng.chance(opts.drop);
            let corrupt_it = rng.chance(opts.corrupt);
            let tamper = shared
                .tamper
                .0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            if let Some(tamper) = tamper
                && let (Some(topic), Some(range)) = (
                    mqtt_frame::publish_topic(&packet),
                    mqtt_frame::publish_payload_range(&packet),
                )
            {
                let way = if dir == UP {
                    Direction::Up
                } else {
                    Direction::Down
                };
                match tamper(way, topic, packet.get(range).unwrap_or_default()) {
                    Verdict::Forward => {}
                    Verdict::Drop => drop_it = true,
                    Verdict::Replace(payload) => {
                        if let Some(p) = mqtt_frame::with_payload(&packet, &payload) {
                            packet = p;
                        }
                    }
                }
            }
            if drop_it {
                c.dropped.fetch_add(1, Ordering::Relaxed);
                if opts.ack_dropped
                    && let Some((1, Some(pid))) = mqtt_frame::publish_qos_and_id(&packet)
                {
                    let [hi, lo] = pid.to_be_bytes();
                    let puback = [0x40, 0x02, hi, lo];
                    if !write_packet(back, &puback, shared) {
                        break;
                    }
                    c.dropped_acked.fetch_add(1, Ordering::Relaxed);
                    count(&c.bytes, 1 - dir, puback.len() as u64);
                }
                continue;
            }
            if corrupt_it && corrupt_payload(&mut packet, &mut rng) {
                c.corrupted.fetch_add(1, Ordering::Relaxed);
            }
        }
        wait_while_paused(shared);
        if !write_packet(to, &packet, shared) {
            break;
        }
        count(&c.bytes, dir, packet.len() as u64);
    }
    let _ = reader.get_ref().shutdown(Shutdown::Both);
    let w = to.lock().unwrap_or_else(PoisonError::into_inner);
    let _ = w.shutdown(Shutdown::Both);
}

/// Writes one whole packet under the socket's lock; false if stopping or the write failed.
fn write_packet(to: &Mutex<TcpStream>, packet: &[u8], shared: &Shared) -> bool {
    if shared.stop.load(Ordering::SeqCst) {
        return false;
    }
    let mut w = to.lock().unwrap_or_else(PoisonError::into_inner);
    w.write_all(packet).is_ok()
}

fn wait_while_paused(shared: &Shared) {
    loop {
        let until = *shared
            .paused_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        match until {
            Some(t) if t > now && !shared.stop.load(Ordering::SeqCst) => {
                thread::sleep((t - now).min(PAUSE_TICK));
            }
            _ => return,
        }
    }
}

/// Flips 1 to 4 bytes of the PUBLISH payload (XOR with a non-zero value, so each chosen
/// byte really changes). Returns false when there is no payload to corrupt.
pub(crate) fn corrupt_payload(packet: &mut [u8], rng: &mut Rng) -> bool {
    let Some(range) = mqtt_frame::publish_payload_range(packet) else {
        return false;
    };
    let Some(payload) = packet.get_mut(range) else {
        return false;
    };
    if payload.is_empty() {
        return false;
    }
    let before = payload.to_vec();
    let flips = 1 + rng.below(4);
    for _ in 0..flips {
        let at = rng.below(payload.len() as u64) as usize;
        let mask = (rng.below(255) + 1) as u8;
        if let Some(b) = payload.get_mut(at) {
            *b ^= mask;
        }
    }
    // Two flips of the same byte may cancel out: make sure something changed.
    if *payload == *before
        && let Some(b) = payload.first_mut()
    {
        *b ^= 0xFF;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corruption_changes_only_the_payload() {
        let original = [
            0x32, 0x0B, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x07, b'p', b'a', b'y', b'!',
        ];
        for seed in 0..200 {
            let mut rng = Rng::new(seed);
            let mut p = original;
            assert!(corrupt_payload(&mut p, &mut rng));
            assert_eq!(
                p[..9],
                original[..9],
                "seed {seed}: header or topic changed"
            );
            assert_eq!(p.len(), original.len());
            assert_ne!(p[9..], original[9..], "seed {seed}: payload unchanged");
        }
        let mut empty = [0x30, 0x03, 0x00, 0x01, b't'];
        assert!(!corrupt_payload(&mut empty, &mut Rng::new(1)));
        let mut ping = [0xC0, 0x00];
        assert!(!corrupt_payload(&mut ping, &mut Rng::new(1)));
    }
}
