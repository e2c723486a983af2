//! The session against a scripted broker on a real local socket: what a hostile or broken
//! broker (or anyone on a plaintext path) can send, byte by byte. The daemon's behaviour on
//! a real mosquitto is in tests/it (daemon, hostile, failover).

use super::*;
use std::net::TcpListener;
use std::thread;

const SEED: &str = "cluster-id: c-test\nagent-attestors:\n- type: tpm_ek\n";
const DOWN: &str = "ekattest/v1/c-test/agents/ek-1/down";

/// A broker script: gets the accepted socket, returns what it read.
fn broker<F>(script: F) -> (Session, thread::JoinHandle<Vec<u8>>)
where
    F: FnOnce(&mut TcpStream) -> Vec<u8> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = thread::spawn(move || {
        let (mut sock, _) = listener.accept().unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        script(&mut sock)
    });
    let config = Config::parse(&format!("{SEED}broker: mqtt://127.0.0.1:{port}\n")).unwrap();
    let session = Session::new(&config, &config.broker, "ek-1", DOWN).unwrap();
    (session, handle)
}

/// Reads one whole MQTT packet from the agent.
fn read_packet(sock: &mut TcpStream) -> Vec<u8> {
    let mut buf = vec![0u8; 2];
    sock.read_exact(&mut buf).unwrap();
    while buf.last().is_some_and(|b| b & 0x80 != 0) {
        let mut b = [0u8];
        sock.read_exact(&mut b).unwrap();
        buf.push(b[0]);
    }
    let (_, len, _) = mqtt::header(&buf, usize::MAX).unwrap().unwrap();
    let mut body = vec![0u8; len];
    sock.read_exact(&mut body).unwrap();
    buf.extend_from_slice(&body);
    buf
}

/// Writes `bytes` one at a time, flushing each: the slowest a broker can be.
fn trickle(sock: &mut TcpStream, bytes: &[u8]) {
    for b in bytes {
        sock.write_all(&[*b]).unwrap();
        sock.flush().unwrap();
        thread::sleep(Duration::from_millis(1));
    }
}

fn publish(id: u16, topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; mqtt::publish_len(topic, payload)];
    let n = mqtt::encode_publish(id, topic, payload, &mut out).unwrap();
    out.truncate(n);
    out
}

fn recv_some(s: &mut Session) -> Result<Incoming, NetError> {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < until, "nothing from the broker in 10 s");
        if let Some(i) = s.recv(Duration::from_millis(200))? {
            return Ok(i);
        }
    }
}

#[test]
fn a_byte_by_byte_broker_still_makes_a_session_and_gets_its_puback() {
    let (mut s, broker) = broker(|sock| {
        let mut got = read_packet(sock); // CONNECT
        got.extend(read_packet(sock)); // SUBSCRIBE
        trickle(sock, &[0x20, 2, 0, 0, 0x90, 3, 0, 1, 1]);
        trickle(sock, &publish(0x1234, DOWN, b"frame"));
        got.extend(read_packet(sock)); // PUBACK
        got
    });
    assert_eq!(recv_some(&mut s).unwrap(), Incoming::Connected);
    assert_eq!(
        recv_some(&mut s).unwrap(),
        Incoming::Subscribed { refused: false }
    );
    assert_eq!(
        recv_some(&mut s).unwrap(),
        Incoming::Message {
            topic: DOWN.into(),
            payload: b"frame".to_vec()
        }
    );
    let seen = broker.join().unwrap();
    // CONNECT (clean session, keepalive 30, client id), SUBSCRIBE to the down topic at QoS 1,
    // and the PUBACK of packet 0x1234, in that order.
    let mut connect = vec![0u8; 64];
    let n = mqtt::encode_connect(
        &mqtt::Connect {
            client_id: "ek-1",
            keep_alive: 30,
            username: None,
            password: None,
        },
        &mut connect,
    )
    .unwrap();
    let mut subscribe = vec![0u8; 64];
    let m = mqtt::encode_subscribe(1, DOWN, &mut subscribe).unwrap();
    let mut expected = connect[..n].to_vec();
    expected.extend_from_slice(&subscribe[..m]);
    expected.extend_from_slice(&mqtt::puback(0x1234));
    assert_eq!(seen, expected);
}

#[test]
fn an_oversized_packet_ends_the_session_before_its_body_arrives() {
    let (mut s, broker) = broker(|sock| {
        let _ = read_packet(sock);
        let _ = read_packet(sock);
        sock.write_all(&[0x20, 2, 0, 0]).unwrap();
        // A PUBLISH announcing PACKET_MAX + 1 bytes, of which none follow: a decoder that
        // waited for the body would hang here until the test's timeout.
        let mut len = [0u8; 4];
        let n = mqtt::put_remaining(PACKET_MAX + 1, &mut len);
        sock.write_all(&[0x30]).unwrap();
        sock.write_all(&len[..n]).unwrap();
        thread::sleep(Duration::from_secs(3));
        Vec::new()
    });
    assert_eq!(recv_some(&mut s).unwrap(), Incoming::Connected);
    // Refused from the header alone (the broker closes only after 3 s, which would read
    // as "end of file" had the session waited for the body).
    let e = recv_some(&mut s).unwrap_err().to_string();
    assert!(
        e.contains(&format!("larger than the limit of {PACKET_MAX} bytes")),
        "{e}"
    );
    broker.join().unwrap();
}

#[test]
fn a_refused_connect_names_the_return_code() {
    let (mut s, broker) = broker(|sock| {
        let _ = read_packet(sock);
        sock.write_all(&[0x20, 2, 0, 5]).unwrap();
        Vec::new()
    });
    match recv_some(&mut s) {
        Err(NetError::Refused(code)) => {
            assert_eq!(code.to_string(), "not authorized (return code 5)");
        }
        other => panic!("{other:?}"),
    }
    broker.join().unwrap();
}

#[test]
fn packets_a_client_never_asked_for_end_the_session() {
    for (bytes, what) in [
        (
            &[0x34, 5, 0, 1, b't', 0, 1][..],
            "unexpected MQTT packet type 3",
        ), // QoS 2
        (&[0x82, 0][..], "unexpected MQTT packet type 8"), // SUBSCRIBE
        (&[0x90, 3, 0, 9, 0][..], "a SUBACK for packet 9"), // not ours
        (&[0x20, 2, 2, 0][..], "CONNACK reserved bits set"),
    ] {
        let owned = bytes.to_vec();
        let (mut s, broker) = broker(move |sock| {
            let _ = read_packet(sock);
            let _ = read_packet(sock);
            sock.write_all(&owned).unwrap();
            thread::sleep(Duration::from_millis(500));
            Vec::new()
        });
        let e = recv_some(&mut s).unwrap_err().to_string();
        assert!(e.contains(what), "{bytes:x?}: {e}");
        broker.join().unwrap();
    }
}

#[test]
fn a_closed_connection_is_an_error_the_plaintext_hint_recognises() {
    let (mut s, broker) = broker(|sock| {
        let _ = read_packet(sock);
        let _ = sock.shutdown(Shutdown::Both);
        Vec::new()
    });
    let e = recv_some(&mut s).unwrap_err().to_string();
    assert!(
        ekattest_protocol::hardening::plaintext_to_tls_hint(false, &e).is_some(),
        "{e}"
    );
    broker.join().unwrap();
}

#[test]
fn keepalive_pings_and_a_silent_broker_is_dropped_after_one_keepalive() {
    let (mut s, broker) = broker(|sock| {
        let mut got = read_packet(sock);
        got.extend(read_packet(sock));
        sock.write_all(&[0x20, 2, 0, 0, 0x90, 3, 0, 1, 1]).unwrap();
        // Answer the first PINGREQ, ignore the second.
        got.extend(read_packet(sock));
        sock.write_all(&[0xd0, 0]).unwrap();
        got.extend(read_packet(sock));
        thread::sleep(Duration::from_secs(3));
        got
    });
    s.keep_alive = Duration::from_secs(1);
    assert_eq!(recv_some(&mut s).unwrap(), Incoming::Connected);
    assert_eq!(
        recv_some(&mut s).unwrap(),
        Incoming::Subscribed { refused: false }
    );
    let started = Instant::now();
    let e = loop {
        match s.recv(Duration::from_millis(200)) {
            Ok(None) => assert!(started.elapsed() < Duration::from_secs(10)),
            Ok(Some(other)) => panic!("{other:?}"),
            Err(e) => break e.to_string(),
        }
    };
    assert!(e.contains("no PINGRESP from the broker within 1s"), "{e}");
    // Ping at 1 s, answered; ping at 2 s, unanswered; dropped at 3 s.
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(2500) && elapsed < Duration::from_secs(20),
        "{elapsed:?}"
    );
    let seen = broker.join().unwrap();
    assert!(seen.ends_with(&[0xc0, 0, 0xc0, 0]), "{seen:x?}");
}

#[test]
fn publish_refuses_what_the_broker_could_not_take() {
    let config = Config::parse(SEED).unwrap();
    let mut s = Session::new(&config, &config.broker, "ek-1", DOWN).unwrap();
    let e = s
        .publish("t", &vec![0u8; PACKET_MAX])
        .unwrap_err()
        .to_string();
    assert!(e.contains("over the limit"), "{e}");
    let e = s.publish("t", b"x").unwrap_err().to_string();
    assert_eq!(e, "not connected");
}
