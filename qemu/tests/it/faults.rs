//! The fault-injection proxies against real peers: the MQTT proxy in front of a real
//! mosquitto with rumqttc clients, and the slow-TPM proxy in front of a real swtpm with the
//! agent binary's `tpm info`.
//!
//! Needs mosquitto (apt-get install mosquitto), swtpm/swtpm_setup (apt-get install swtpm
//! swtpm-tools) and the agent binary built beside this test (`cargo build -p
//! ekattest-agent`); a missing one fails the test with that message.
use crate::common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};

use std::process::Command;
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use common::bin;
use ekattest_fleet::broker::{Broker, BrokerOptions};
use ekattest_fleet::faults::mqtt_frame::{encode_remaining_length, read_packet};
use ekattest_fleet::faults::mqtt_proxy::{MqttProxy, ProxyOptions, ProxyStats};
use ekattest_fleet::faults::tpm_proxy::TpmProxy;
use ekattest_fleet::{Ca, Device, ProvisionOptions};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

const REPLY: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(700);
const TOPIC: &str = "ekattest/v1/c-faults/agents/a1/down";

fn broker() -> Broker {
    Broker::start(&BrokerOptions::default()).unwrap_or_else(|e| panic!("{e}"))
}

fn broker_addr(b: &Broker) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], b.port()))
}

fn proxy(b: &Broker, drop: f64, corrupt: f64, seed: u64) -> MqttProxy {
    MqttProxy::start(
        broker_addr(b),
        ProxyOptions {
            drop,
            corrupt,
            seed,
            ..ProxyOptions::default()
        },
    )
    .unwrap()
}

/// A rumqttc client: incoming packets (or the connection error) on a channel.
struct Peer {
    client: Client,
    rx: Receiver<Result<Packet, String>>,
}

fn connect(addr: SocketAddr, id: &str) -> Peer {
    let mut opts = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_clean_session(true);
    let (client, mut connection) = Client::new(opts, 512);
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for ev in connection.iter() {
            let msg = match ev {
                Ok(Event::Incoming(p)) => Ok(p),
                Ok(Event::Outgoing(_)) => continue,
                Err(e) => Err(e.to_string()),
            };
            let stop = msg.is_err();
            if tx.send(msg).is_err() || stop {
                break;
            }
        }
    });
    let mut peer = Peer { client, rx };
    peer.expect(|p| matches!(p, Packet::ConnAck(_)), "ConnAck");
    peer
}

impl Peer {
    fn expect(&mut self, want: impl Fn(&Packet) -> bool, what: &str) -> Packet {
        let deadline = Instant::now() + REPLY;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(Ok(p)) if want(&p) => return p,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("connection error while waiting for {what}: {e}"),
                Err(_) => panic!("no {what} within {REPLY:?}"),
            }
        }
    }

    fn subscribe(&mut self, topic: &str) {
        self.client.subscribe(topic, QoS::AtLeastOnce).unwrap();
        self.expect(|p| matches!(p, Packet::SubAck(_)), "SubAck");
    }

    /// Publishes QoS 1 without waiting for the PubAck (a dropped publish gets none).
    fn publish(&self, payload: Vec<u8>) {
        self.client
            .publish(TOPIC, QoS::AtLeastOnce, false, payload)
            .unwrap();
    }

    /// Payloads received on TOPIC until `quiet` passes without one (or `want` arrived).
    fn collect(&mut self, want: usize, quiet: Duration) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        while got.len() < want {
            match self.rx.recv_timeout(quiet) {
                Ok(Ok(Packet::Publish(p))) if p.topic == TOPIC => got.push(p.payload.to_vec()),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("connection error: {e}"),
                Err(_) => break,
            }
        }
        got
    }

    /// Whether the connection reports an error within `timeout`.
    fn sees_error(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return true,
                Err(_) => return false,
            }
        }
    }
}

fn payload(i: usize) -> Vec<u8> {
    format!("message {i:04} with some padding to corrupt").into_bytes()
}

/// Waits until the proxy has seen `n` publishes in the direction `down` or not.
fn wait_publishes(p: &MqttProxy, n: u64, down: bool) -> ProxyStats {
    let deadline = Instant::now() + REPLY;
    loop {
        let s = p.stats();
        let seen = if down {
            s.publishes_down
        } else {
            s.publishes_up
        };
        if seen >= n || Instant::now() > deadline {
            return s;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn without_faults_everything_arrives_and_bytes_are_counted() {
    let b = broker();
    let px = proxy(&b, 0.0, 0.0, 1);
    let mut sub = connect(px.addr(), "sub");
    sub.subscribe(TOPIC);
    let publ = connect(px.addr(), "pub");
    let n = 50;
    for i in 0..n {
        publ.publish(payload(i));
    }
    let got = sub.collect(n, REPLY);
    assert_eq!(got, (0..n).map(payload).collect::<Vec<_>>());
    let s = wait_publishes(&px, n as u64, true);
    assert_eq!(s.connections, 2);
    assert_eq!((s.publishes_up, s.publishes_down), (n as u64, n as u64));
    assert_eq!((s.dropped, s.corrupted), (0, 0));
    let payload_bytes: u64 = (0..n).map(|i| payload(i).len() as u64).sum();
    assert!(s.bytes_up > payload_bytes, "{s:?}");
    assert!(s.bytes_down > payload_bytes, "{s:?}");
    assert!(s.packets_up > s.publishes_up && s.packets_down > s.publishes_down);
}

/// A raw MQTT 3.1.1 client: CONNECT, then PINGREQ, through `addr`.
fn raw_ping(addr: SocketAddr) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(REPLY)).unwrap();
    let id = b"raw-ping";
    let mut body = vec![
        0,
        4,
        b'M',
        b'Q',
        b'T',
        b'T',
        4,
        0x02,
        0,
        60,
        0,
        id.len() as u8,
    ];
    body.extend(id);
    let mut connect = vec![0x10];
    encode_remaining_length(body.len(), &mut connect);
    connect.extend(body);
    s.write_all(&connect).unwrap();
    let connack = read_packet(&mut s, 1024).unwrap().unwrap();
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);
    s.write_all(&[0xC0, 0x00]).unwrap();
    let pingresp = read_packet(&mut s, 1024).unwrap().unwrap();
    assert_eq!(pingresp, [0xD0, 0x00]);
}

#[test]
fn drop_all_publishes_keeps_the_connection_up() {
    let b = broker();
    let px = proxy(&b, 1.0, 0.0, 1);
    // Down: the subscriber is behind the proxy, the publisher is not.
    let mut sub = connect(px.addr(), "sub-behind-proxy");
    sub.subscribe(TOPIC);
    let direct = connect(broker_addr(&b), "pub-direct");
    let n = 20;
    for i in 0..n {
        direct.publish(payload(i));
    }
    let s = wait_publishes(&px, n as u64, true);
    assert!(sub.collect(1, QUIET).is_empty(), "a publish got through");
    assert_eq!((s.publishes_down, s.dropped), (n as u64, n as u64));
    // Up: the publisher is behind the proxy, the subscriber is not.
    let mut direct_sub = connect(broker_addr(&b), "sub-direct");
    direct_sub.subscribe(TOPIC);
    let publ = connect(px.addr(), "pub-behind-proxy");
    for i in 0..n {
        publ.publish(payload(i));
    }
    let s = wait_publishes(&px, n as u64, false);
    assert!(
        direct_sub.collect(1, QUIET).is_empty(),
        "a publish got through"
    );
    assert_eq!(s.dropped, 2 * n as u64);
    // Every dropped QoS 1 publish was acknowledged to its sender (no stalled inflight
    // window): the broker's and the publisher's.
    let deadline = Instant::now() + REPLY;
    while px.stats().dropped_acked < 2 * n as u64 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(px.stats().dropped_acked, 2 * n as u64);
    // Control packets still pass both ways: SubAck, ConnAck, PingResp.
    sub.subscribe("ekattest/v1/c-faults/other");
    raw_ping(px.addr());
    assert!(!sub.sees_error(Duration::from_millis(200)));
    // The subscriber and the publisher behind the proxy (the raw client has closed).
    let deadline = Instant::now() + REPLY;
    while px.open_connections() != 2 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(px.open_connections(), 2);
}

fn half_drop_run(seed: u64, n: usize) -> (usize, ProxyStats) {
    let b = broker();
    let px = proxy(&b, 0.5, 0.0, seed);
    let mut sub = connect(px.addr(), "sub");
    sub.subscribe(TOPIC);
    let direct = connect(broker_addr(&b), "pub");
    for i in 0..n {
        direct.publish(payload(i));
    }
    let s = wait_publishes(&px, n as u64, true);
    let got = sub.collect(n, QUIET);
    (got.len(), s)
}

#[test]
fn half_drop_is_seeded_and_reproducible() {
    let n = 200;
    let (a, sa) = half_drop_run(7, n);
    assert!(0 < a && a < n, "{a} of {n} arrived");
    assert!((60..=140).contains(&a), "{a} of {n}: far from half");
    assert_eq!(a as u64, n as u64 - sa.dropped, "{sa:?}");
    let (b, _) = half_drop_run(7, n);
    assert_eq!(a, b, "the same seed must drop the same publishes");
    let (c, _) = half_drop_run(8, n);
    eprintln!("drop 0.5: seed 7 delivered {a}/{n} twice, seed 8 delivered {c}/{n}");
    assert!(0 < c && c < n);
}

#[test]
fn corrupt_changes_payloads_but_not_their_length() {
    let b = broker();
    let px = proxy(&b, 0.0, 1.0, 3);
    let mut sub = connect(px.addr(), "sub");
    sub.subscribe(TOPIC);
    let direct = connect(broker_addr(&b), "pub");
    let n = 30;
    for i in 0..n {
        direct.publish(payload(i));
    }
    let got = sub.collect(n, REPLY);
    assert_eq!(got.len(), n, "corrupted publishes must still be delivered");
    for (i, p) in got.iter().enumerate() {
        assert_eq!(p.len(), payload(i).len());
        assert_ne!(*p, payload(i), "publish {i} was not corrupted");
    }
    let s = px.stats();
    assert_eq!((s.corrupted, s.dropped), (n as u64, 0));
}

#[test]
fn pause_holds_and_sever_cuts() {
    let b = broker();
    let px = proxy(&b, 0.0, 0.0, 1);
    let mut sub = connect(px.addr(), "sub");
    sub.subscribe(TOPIC);
    let direct = connect(broker_addr(&b), "pub");
    px.pause(Duration::from_millis(800));
    let t = Instant::now();
    direct.publish(payload(1));
    let got = sub.collect(1, REPLY);
    assert_eq!(got, [payload(1)]);
    assert!(
        t.elapsed() >= Duration::from_millis(700),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(px.sever_all(), 1);
    assert!(
        sub.sees_error(REPLY),
        "the severed client must see its connection close"
    );
    // New connections still work.
    let mut again = connect(px.addr(), "sub-2");
    again.subscribe(TOPIC);
}

#[test]
fn broker_down_closes_clients_and_recovers() {
    let mut b = broker();
    let px = proxy(&b, 0.0, 0.0, 1);
    let sub = connect(px.addr(), "sub");
    b.stop();
    assert!(sub.sees_error(REPLY), "clients must see the broker go away");
    let mut raw = TcpStream::connect(px.addr()).unwrap();
    raw.set_read_timeout(Some(REPLY)).unwrap();
    assert!(
        read_packet(&mut raw, 1024).unwrap().is_none(),
        "must be closed at once"
    );
    let deadline = Instant::now() + REPLY;
    while px.stats().upstream_failures == 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    assert!(px.stats().upstream_failures >= 1);
    b.start_again().unwrap_or_else(|e| panic!("{e}"));
    let mut sub = connect(px.addr(), "sub-after");
    sub.subscribe(TOPIC);
}

fn tpm_info(spec: &str) -> (String, Duration) {
    let t = Instant::now();
    let out = Command::new(bin("ekattest-agent"))
        .args(["tpm", "info", "--tpm", spec])
        .output()
        .unwrap();
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "tpm info --tpm {spec} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The first line names the TPM spec (the port differs through the proxy).
    let text = String::from_utf8_lossy(&out.stdout);
    let rest: Vec<&str> = text.lines().skip(1).collect();
    assert!(rest.len() > 3, "tpm info printed too little: {text}");
    (rest.join("\n"), took)
}

#[test]
fn slow_tpm_proxy_delays_every_response() {
    let ca = Ca::create().unwrap_or_else(|e| panic!("{e}"));
    let dev = Device::provision(
        &ca,
        &ProvisionOptions {
            rsa_keysize: 2048,
            p256_ek_cert: false,
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (direct, _) = tpm_info(&dev.spec());
    let delay = Duration::from_millis(40);
    let px = TpmProxy::start(
        SocketAddr::from(([127, 0, 0, 1], dev.port())),
        delay,
        Duration::ZERO,
    )
    .unwrap();
    let (slow, took) = tpm_info(&px.spec());
    assert_eq!(slow, direct, "the proxy must not change what the TPM says");
    let s = px.stats();
    assert!(s.responses >= 3, "{s:?}");
    assert_eq!(s.commands, s.responses);
    let floor = delay * u32::try_from(s.responses).unwrap();
    assert!(took >= floor, "{took:?} < {} x {delay:?}", s.responses);
    assert_eq!(s.delayed_ms, 40 * s.responses);
    eprintln!(
        "tpm info: {} TPM responses, {took:?} through a {delay:?} proxy (floor {floor:?})",
        s.responses
    );
    // With jitter, the floor is (delay - jitter) per response.
    let jitter = Duration::from_millis(20);
    let px = TpmProxy::start_seeded(
        SocketAddr::from(([127, 0, 0, 1], dev.port())),
        delay,
        jitter,
        5,
    )
    .unwrap();
    let (_, took) = tpm_info(&px.spec());
    let s = px.stats();
    assert!(took >= (delay - jitter) * u32::try_from(s.responses).unwrap());
    assert!(s.delayed_ms >= 20 * s.responses && s.delayed_ms <= 60 * s.responses);
}
