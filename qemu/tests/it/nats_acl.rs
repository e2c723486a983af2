//! The shipped NATS accounts and permissions (`deploy/nats/permissions.conf` plus the
//! accounts file `ekattest-fleet nats-users` renders) against a real nats-server, as
//! `broker.rs` tests the mosquitto ACL: devices are MQTT clients (rumqttc, user = agent id),
//! servers and the admin NATS clients (async-nats, as `bus: nats` uses it) or, for the admin,
//! MQTT with a retained publish (as `ekattestctl config set` does).
//!
//! Confinement is shown two ways: the explicit refusal (an MQTT SUBACK failure code, a NATS
//! `Permissions Violation` error, a refused CONNECT) and non-delivery (a publish the
//! permissions deny never reaches a subscriber that does receive the allowed message). Every
//! negative check sits next to a positive one on the same clients, so a broken setup that
//! delivers nothing fails the test.
//!
//! Needs nats-server 2.9+ (`apt-get install nats-server`); a missing program fails the test
//! with that message.
use crate::common;
use crate::mqtt_peer;

use std::time::{Duration, Instant};

use ekattest_fleet::daemons::{ServerProcess, ServerSpec};
use ekattest_fleet::nats::users::{self, ADMIN_USER, Credential, Hash, SERVER_USER};
use ekattest_fleet::nats::{Access, NatsCluster};
use ekattest_protocol::topic::{DEFAULT_PREFIX, SHARE_GROUP};
use futures_util::StreamExt;
use mqtt_peer::{Peer, QUIET, REPLY, connect_port};
use rumqttc::SubscribeReasonCode;
use tokio::sync::mpsc;

const P: &str = "ekattest/v1/c-test01";
const S: &str = "ekattest.v1.c-test01";

fn login(agent: &str) -> String {
    format!("{P}/agents/{agent}/login")
}
fn down(agent: &str) -> String {
    format!("{P}/agents/{agent}/down")
}
fn answer(node: &str, agent: &str) -> String {
    format!("{P}/servers/{node}/answer/{agent}")
}
fn config() -> String {
    format!("{P}/config")
}
/// The NATS subject of an MQTT topic of ours.
fn subject(topic: &str) -> String {
    topic.replace('/', ".")
}

struct Fleet {
    cluster: NatsCluster,
    server: Credential,
    admin: Credential,
    devices: Vec<Credential>,
}

fn cred(user: &str) -> Credential {
    Credential {
        user: user.into(),
        password: users::new_password().unwrap(),
    }
}

/// `nodes` clustered nats-servers enforcing the shipped permissions for these devices.
fn start(nodes: usize, agents: &[&str]) -> Fleet {
    let (server, admin) = (cred(SERVER_USER), cred(ADMIN_USER));
    let devices: Vec<Credential> = agents.iter().map(|a| cred(a)).collect();
    let accounts = users::render(
        DEFAULT_PREFIX,
        "permissions.conf",
        Hash::Plain,
        &server,
        &admin,
        &devices,
    )
    .unwrap();
    let access = Access {
        accounts,
        probe: admin.clone(),
    };
    let cluster = NatsCluster::start_with(nodes, Some(access)).unwrap_or_else(|e| panic!("{e}"));
    Fleet {
        cluster,
        server,
        admin,
        devices,
    }
}

impl Fleet {
    fn password(&self, user: &str) -> String {
        [&self.server, &self.admin]
            .into_iter()
            .chain(&self.devices)
            .find(|c| c.user == user)
            .map(|c| c.password.clone())
            .unwrap()
    }

    /// Device `id` over MQTT on node `node`, logged in as its own user.
    fn device(&self, id: &str, node: usize) -> Peer {
        self.mqtt(id, id, node)
    }

    fn mqtt(&self, client_id: &str, user: &str, node: usize) -> Peer {
        self.mqtt_session(client_id, user, node, true)
    }

    fn mqtt_session(&self, client_id: &str, user: &str, node: usize, clean: bool) -> Peer {
        let port = self.cluster.ports()[node].mqtt;
        connect_port(
            port,
            client_id,
            Some((user.into(), self.password(user))),
            clean,
        )
        .unwrap_or_else(|e| panic!("{client_id} as {user}: {e}\n{}", self.cluster.log(node)))
    }

    /// A NATS client as `user` on node `node`.
    fn nats(&self, user: &str, node: usize) -> Nats {
        let url = self.cluster.nats_urls()[node].clone();
        Nats::connect(&url, user, &self.password(user))
            .unwrap_or_else(|e| panic!("NATS {user}: {e}\n{}", self.cluster.log(node)))
    }
}

/// A synchronous wrapper around an async-nats client: its own runtime, and the server's
/// `-ERR` lines (permission violations) collected from the event callback.
struct Nats {
    rt: tokio::runtime::Runtime,
    client: async_nats::Client,
    errors: mpsc::UnboundedReceiver<String>,
}

impl Nats {
    fn connect(url: &str, user: &str, password: &str) -> Result<Self, String> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (tx, errors) = mpsc::unbounded_channel();
        let client = rt.block_on(
            async_nats::ConnectOptions::new()
                .user_and_password(user.into(), password.into())
                .event_callback(move |event| {
                    let tx = tx.clone();
                    async move {
                        if let async_nats::Event::ServerError(e) = event {
                            let _ = tx.send(e.to_string());
                        }
                    }
                })
                .connect(url),
        );
        let client = client.map_err(|e| e.to_string())?;
        Ok(Self { rt, client, errors })
    }

    fn subscribe(&self, subject: &str) -> async_nats::Subscriber {
        self.rt
            .block_on(self.client.subscribe(subject.to_owned()))
            .unwrap()
    }

    fn queue_subscribe(&self, subject: &str, group: &str) -> async_nats::Subscriber {
        self.rt
            .block_on(
                self.client
                    .queue_subscribe(subject.to_owned(), group.to_owned()),
            )
            .unwrap()
    }

    /// Publishes and flushes (a round trip: a refusal is back before this returns).
    fn publish(&self, subject: &str, payload: &'static [u8]) {
        self.rt.block_on(async {
            self.client
                .publish(subject.to_owned(), payload.into())
                .await
                .unwrap();
            self.client.flush().await.unwrap();
        });
    }

    /// Flushes (a PING round trip, so the server has processed every earlier operation).
    fn flush(&self) {
        self.rt.block_on(self.client.flush()).unwrap();
    }

    /// The next message on `sub` within `wait`.
    fn next(
        &self,
        sub: &mut async_nats::Subscriber,
        wait: Duration,
    ) -> Option<async_nats::Message> {
        self.rt
            .block_on(async { tokio::time::timeout(wait, sub.next()).await })
            .ok()
            .flatten()
    }

    /// Every message on `sub` within `wait`.
    fn drain(&self, sub: &mut async_nats::Subscriber, wait: Duration) -> Vec<String> {
        let end = Instant::now() + wait;
        let mut got = Vec::new();
        while let Some(m) = self.next(sub, end.saturating_duration_since(Instant::now())) {
            got.push(m.subject.to_string());
        }
        got
    }

    /// Waits for a server error mentioning `needle` (the permission violations arrive
    /// asynchronously); every error seen, if none does.
    fn expect_error(&mut self, needle: &str) -> Result<String, Vec<String>> {
        let end = Instant::now() + REPLY;
        let mut seen = Vec::new();
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let errors = &mut self.errors;
            match self
                .rt
                .block_on(async { tokio::time::timeout(left, errors.recv()).await })
            {
                Ok(Some(e)) if e.contains(needle) => return Ok(e),
                Ok(Some(e)) => seen.push(e),
                _ => return Err(seen),
            }
        }
    }
}

fn failed(code: SubscribeReasonCode) -> bool {
    matches!(code, SubscribeReasonCode::Failure)
}

#[test]
fn a_device_reads_and_writes_only_its_own_subjects() {
    let f = start(1, &["ek-aaaa", "ek-bbbb"]);
    let srv = f.nats(SERVER_USER, 0);
    let mut logins = srv.queue_subscribe(&format!("{S}.agents.*.login"), SHARE_GROUP);
    let mut answers = srv.subscribe(&format!("{S}.servers.n1.answer.*"));
    let mut configs = srv.subscribe(&format!("{S}.config"));
    srv.flush();
    let mut a = f.device("ek-aaaa", 0);
    let mut b = f.device("ek-bbbb", 0);

    // Own subjects: subscribe the downlink, publish a Login and an Answer, get a Challenge.
    for (peer, id) in [(&mut a, "ek-aaaa"), (&mut b, "ek-bbbb")] {
        let code = peer.subscribe(&down(id)).unwrap();
        assert!(
            !failed(code),
            "{id} may not read its downlink\n{}",
            f.cluster.log(0)
        );
    }
    a.publish(&login("ek-aaaa"), b"login a", false).unwrap();
    let got = srv.next(&mut logins, REPLY).expect("no login delivered");
    assert_eq!(got.subject.as_str(), subject(&login("ek-aaaa")));
    a.publish(&answer("n1", "ek-aaaa"), b"answer a", false)
        .unwrap();
    let got = srv.next(&mut answers, REPLY).expect("no answer delivered");
    assert_eq!(got.subject.as_str(), subject(&answer("n1", "ek-aaaa")));
    srv.publish(&subject(&down("ek-aaaa")), b"challenge a");
    assert!(a.expect_publish(&down("ek-aaaa"), REPLY).is_some());

    // Another device's downlink, any wildcard over downlinks or logins, the queue group and
    // nats-server's internal MQTT subjects: every SUBSCRIBE is refused (SUBACK 0x80).
    for filter in [
        down("ek-bbbb"),
        format!("{P}/agents/+/down"),
        format!("{P}/agents/+/login"),
        format!("$share/{SHARE_GROUP}/{P}/agents/+/login"),
        format!("{P}/config"),
        "ekattest/v1/#".into(),
        "#".into(),
        "$MQTT/sub/#".into(),
        "$MQTT/msgs/#".into(),
    ] {
        let code = a.subscribe(&filter).unwrap();
        assert!(failed(code), "ek-aaaa may subscribe {filter}: {code:?}");
    }
    // ... and nothing reaches it: b's Challenge and b's Login go where they belong only.
    srv.publish(&subject(&down("ek-bbbb")), b"challenge b");
    assert!(b.expect_publish(&down("ek-bbbb"), REPLY).is_some());
    b.publish(&login("ek-bbbb"), b"login b", false).unwrap();
    let got = srv.next(&mut logins, REPLY).expect("no login from b");
    assert_eq!(got.subject.as_str(), subject(&login("ek-bbbb")));
    let leaked = a.drain(QUIET);
    assert!(leaked.is_empty(), "delivered to ek-aaaa: {leaked:?}");

    // Publishing as another device (its Login, its Answer), as a server (a downlink), or
    // the config (attack 3), or into nats-server's MQTT internals: dropped, nobody gets it.
    for (topic, retain) in [
        (login("ek-bbbb"), false),
        (login("ek-invented"), false),
        (answer("n1", "ek-bbbb"), false),
        (down("ek-bbbb"), false),
        (config(), true),
        (
            format!("$MQTT/msgs/{}", subject(&down("ek-bbbb")).replace('.', "/")),
            false,
        ),
        ("$JS/API/STREAM/DELETE/$MQTT_msgs".into(), false),
    ] {
        // nats-server acknowledges a QoS 1 publish it refuses, or drops the connection;
        // either way nothing may arrive below.
        if a.publish(&topic, b"forged", retain).is_err() {
            a = f.device("ek-aaaa", 0);
        }
    }
    let at_server: Vec<String> = [&mut logins, &mut answers, &mut configs]
        .into_iter()
        .flat_map(|s| srv.drain(s, QUIET))
        .collect();
    assert!(
        at_server.is_empty(),
        "forged messages delivered: {at_server:?}"
    );
    let at_b = b.drain(QUIET);
    assert!(at_b.is_empty(), "forged downlink delivered: {at_b:?}");
    // No retained config either: a later admin subscriber sees none.
    let mut late = f.mqtt("ekattestctl-check", ADMIN_USER, 0);
    assert!(!failed(late.subscribe(&config()).unwrap()));
    assert!(
        late.expect_publish(&config(), QUIET).is_none(),
        "a device wrote the config"
    );
    let log = f.cluster.log(0);
    assert!(log.contains("Violation"), "{log}");

    // Still confined after all that: b's own traffic flows, a gets none of it.
    srv.publish(&subject(&down("ek-bbbb")), b"result b");
    assert!(b.expect_publish(&down("ek-bbbb"), REPLY).is_some());
    assert!(a.drain(QUIET).is_empty());
}

#[test]
fn only_listed_devices_connect_and_only_over_mqtt() {
    let f = start(1, &["ek-aaaa"]);
    let port = f.cluster.ports()[0].mqtt;
    // Positive: the listed device with its password.
    f.device("ek-aaaa", 0).disconnect();
    // Attack 4 on NATS: a Login under an invented agent id needs a user of that id.
    for (id, creds) in [
        ("ek-invented", None),
        (
            "ek-invented",
            Some(("ek-invented".to_owned(), "x".to_owned())),
        ),
        ("ek-aaaa", Some(("ek-aaaa".to_owned(), "wrong".to_owned()))),
        ("ek-aaaa", None),
    ] {
        let shown = format!("{id} {creds:?}");
        match connect_port(port, id, creds, true) {
            Ok(_) => panic!("connected: {shown}"),
            Err(e) => assert!(
                e.contains("refused") || e.contains("Refused"),
                "{shown}: {e}"
            ),
        }
    }
    // A device's credentials on the NATS port: refused (allowed_connection_types MQTT).
    let url = f.cluster.nats_urls()[0].clone();
    let err = Nats::connect(&url, "ek-aaaa", &f.password("ek-aaaa"))
        .err()
        .expect("a device user connected as a NATS client");
    assert!(err.to_lowercase().contains("authorization"), "{err}");
}

#[test]
fn servers_share_logins_and_write_only_downlinks() {
    // Three nodes as deployed; the servers and the device sit on different nodes.
    let f = start(3, &["ek-aaaa"]);
    let (mut n1, mut n2) = (f.nats(SERVER_USER, 0), f.nats(SERVER_USER, 1));
    let mut l1 = n1.queue_subscribe(&format!("{S}.agents.*.login"), SHARE_GROUP);
    let mut l2 = n2.queue_subscribe(&format!("{S}.agents.*.login"), SHARE_GROUP);
    let mut c2 = n2.subscribe(&format!("{S}.config"));
    let mut ans1 = n1.subscribe(&format!("{S}.servers.n1.answer.*"));
    n1.flush();
    n2.flush();
    let mut dev = f.device("ek-aaaa", 2);
    assert!(!failed(dev.subscribe(&down("ek-aaaa")).unwrap()));
    // Wait until both queue members are known on the device's node (interest propagates
    // over the routes; NATS drops a message nobody is subscribed to): logins until each
    // server has had one.
    let (mut seen1, mut seen2) = (0, 0);
    for _ in 0..50 {
        dev.publish(&login("ek-aaaa"), b"warm-up", false).unwrap();
        seen1 += n1.drain(&mut l1, Duration::from_millis(100)).len();
        seen2 += n2.drain(&mut l2, Duration::from_millis(100)).len();
        if seen1 > 0 && seen2 > 0 {
            break;
        }
    }
    assert!(
        seen1 > 0 && seen2 > 0,
        "warm-up: n1 {seen1} n2 {seen2}\n{}",
        f.cluster.log(2)
    );

    for i in 0..20u8 {
        dev.publish(&login("ek-aaaa"), &[i], false).unwrap();
    }
    let (g1, g2) = (n1.drain(&mut l1, REPLY), n2.drain(&mut l2, QUIET));
    assert_eq!(g1.len() + g2.len(), 20, "n1 {} n2 {}", g1.len(), g2.len());
    assert!(
        !g1.is_empty() && !g2.is_empty(),
        "queue group: n1 {} n2 {}",
        g1.len(),
        g2.len()
    );

    // The answer to node n1 reaches n1; n1's Challenge reaches the device.
    dev.publish(&answer("n1", "ek-aaaa"), b"answer", false)
        .unwrap();
    assert!(n1.next(&mut ans1, REPLY).is_some(), "answer to n1 lost");
    n1.publish(&subject(&down("ek-aaaa")), b"challenge");
    assert!(dev.expect_publish(&down("ek-aaaa"), REPLY).is_some());

    // Logins only inside the queue group `ekattest`: a plain subscription and another
    // group are refused with a permissions violation, and receive nothing.
    let mut spy = n1.subscribe(&format!("{S}.agents.*.login"));
    let e = n1.expect_error("Permissions Violation for Subscription");
    assert!(e.is_ok(), "plain subscription to logins allowed: {e:?}");
    let mut rogue = n1.queue_subscribe(&format!("{S}.agents.*.login"), "rogue");
    let e = n1.expect_error("Permissions Violation for Subscription");
    assert!(e.is_ok(), "queue group `rogue` allowed: {e:?}");
    dev.publish(&login("ek-aaaa"), b"after spies", false)
        .unwrap();
    let members = n1.drain(&mut l1, REPLY).len() + n2.drain(&mut l2, QUIET).len();
    assert_eq!(members, 1, "the queue group lost the login");
    assert!(n1.drain(&mut spy, QUIET).is_empty() && n1.drain(&mut rogue, QUIET).is_empty());

    // A server cannot write the config (attack 3) or pose as a device.
    for s in [
        format!("{S}.config"),
        subject(&login("ek-aaaa")),
        subject(&answer("n1", "ek-aaaa")),
    ] {
        n2.publish(&s, b"forged by a server");
        let e = n2.expect_error("Permissions Violation for Publish");
        assert!(e.is_ok(), "server may publish {s}: {e:?}");
    }
    assert!(
        n2.drain(&mut c2, QUIET).is_empty(),
        "a server wrote the config"
    );
    assert!(n1.drain(&mut l1, QUIET).is_empty() && n1.drain(&mut ans1, QUIET).is_empty());
    // The admin can; the servers receive it.
    let admin = f.nats(ADMIN_USER, 1);
    admin.publish(&format!("{S}.config"), b"kind: AgentAttestation");
    let doc = n2
        .next(&mut c2, REPLY)
        .expect("config from the admin not delivered");
    assert_eq!(&doc.payload[..], b"kind: AgentAttestation");
}

#[test]
fn only_the_admin_writes_the_config() {
    let f = start(1, &["ek-aaaa"]);
    let srv = f.nats(SERVER_USER, 0);
    let mut configs = srv.subscribe(&format!("{S}.config"));
    srv.flush();
    // `ekattestctl config set`: MQTT, retained, QoS 1, as the admin.
    let mut admin = f.mqtt("ekattestctl", ADMIN_USER, 0);
    admin
        .publish(&config(), b"kind: AgentAttestation", true)
        .unwrap();
    let doc = srv.next(&mut configs, REPLY).expect("config not delivered");
    assert_eq!(&doc.payload[..], b"kind: AgentAttestation");
    // Retained: a later MQTT subscriber gets it back.
    let mut late = f.mqtt("ekattestctl-check", ADMIN_USER, 0);
    assert!(!failed(late.subscribe(&config()).unwrap()));
    let kept = late.expect_publish(&config(), REPLY).expect("not retained");
    assert_eq!(&kept.payload[..], b"kind: AgentAttestation");
    // The admin is confined too: no downlinks, no logins.
    let mut dev = f.device("ek-aaaa", 0);
    assert!(!failed(dev.subscribe(&down("ek-aaaa")).unwrap()));
    assert!(failed(admin.subscribe(&login("ek-aaaa")).unwrap()));
    let _ = admin.publish(&down("ek-aaaa"), b"admin challenge", false);
    assert!(dev.expect_publish(&down("ek-aaaa"), QUIET).is_none());
    srv.publish(&subject(&down("ek-aaaa")), b"server challenge");
    assert!(dev.expect_publish(&down("ek-aaaa"), REPLY).is_some());
}

#[test]
fn a_taken_over_session_brings_no_rights() {
    // nats-server keys MQTT sessions by client id, not by user: ek-aaaa connecting with
    // client id ek-bbbb takes over b's persistent session (and disconnects b), but the
    // session's subscription to b's downlink is checked against ek-aaaa's permissions and
    // refused, so nothing of b's arrives.
    let f = start(1, &["ek-aaaa", "ek-bbbb"]);
    let srv = f.nats(SERVER_USER, 0);
    let mut b = f.mqtt_session("ek-bbbb", "ek-bbbb", 0, false);
    assert!(!failed(b.subscribe(&down("ek-bbbb")).unwrap()));
    srv.publish(&subject(&down("ek-bbbb")), b"before");
    assert!(b.expect_publish(&down("ek-bbbb"), REPLY).is_some());
    let mut thief = f.mqtt_session("ek-bbbb", "ek-aaaa", 0, false);
    srv.publish(&subject(&down("ek-bbbb")), b"after the takeover");
    let got = thief.drain(QUIET);
    assert!(got.is_empty(), "the taken-over session delivered {got:?}");
    let log = f.cluster.log(0);
    assert!(
        log.contains("Subscription Violation - User \"ek-aaaa\", Subject \"ekattest.v1.c-test01.agents.ek-bbbb.down\""),
        "{log}"
    );
    // b comes back with its own user and gets its traffic again.
    thief.disconnect();
    let mut b = f.mqtt_session("ek-bbbb", "ek-bbbb", 0, true);
    assert!(!failed(b.subscribe(&down("ek-bbbb")).unwrap()));
    srv.publish(&subject(&down("ek-bbbb")), b"back");
    assert!(b.expect_publish(&down("ek-bbbb"), REPLY).is_some());
}

#[test]
fn the_real_server_works_under_the_server_permissions() {
    // ekattest-server on `bus: nats` as user ekattest-server: its queue subscription, its
    // answer and config subscriptions are granted, and its refusals (a Result on the
    // device's downlink) go out. The frames are garbage, so every reply is a refusal.
    let f = start(1, &["ek-aaaa"]);
    let dir = tempfile::tempdir().unwrap();
    let (ca_cert, ca_key) = common::svid_ca(dir.path(), "example.org");
    let password_file = dir.path().join("server.password");
    std::fs::write(&password_file, format!("{}\n", f.server.password)).unwrap();
    let owner_only = std::os::unix::fs::PermissionsExt::from_mode(0o600);
    std::fs::set_permissions(&password_file, owner_only).unwrap();
    let mut spec = ServerSpec::new(
        "mqtt://127.0.0.1:1",
        "c-test01",
        "n1",
        "example.org",
        &ca_cert,
        &ca_key,
    );
    spec.nats_urls = f.cluster.nats_urls();
    spec.username = Some(SERVER_USER.into());
    spec.password_file = Some(password_file);
    spec.log_level = Some("debug".into());
    let server_dir = dir.path().join("server");
    std::fs::create_dir_all(&server_dir).unwrap();
    let server = ServerProcess::start(&common::bin("ekattest-server"), &spec, &server_dir)
        .unwrap_or_else(|e| panic!("cannot start ekattest-server: {e}"));
    server
        .wait_for_msg("connected to NATS", None, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("never connected: {e}\n{}", f.cluster.log(0)));
    let mut dev = f.device("ek-aaaa", 0);
    assert!(!failed(dev.subscribe(&down("ek-aaaa")).unwrap()));
    // The server subscribes right after connecting (and logs nothing on NATS): send Logins
    // until one is refused.
    let refused = (0..20).any(|_| {
        dev.publish(&login("ek-aaaa"), b"not a frame", false)
            .unwrap();
        dev.expect_publish(&down("ek-aaaa"), Duration::from_millis(500))
            .is_some()
    });
    assert!(
        refused,
        "no refusal for a Login\nserver: {}\nnats: {}",
        server.log(),
        f.cluster.log(0)
    );
    dev.drain(QUIET);
    dev.publish(&answer("n1", "ek-aaaa"), b"not a frame", false)
        .unwrap();
    assert!(
        dev.expect_publish(&down("ek-aaaa"), REPLY).is_some(),
        "no refusal for the Answer\nserver: {}",
        server.log()
    );
    let log = f.cluster.log(0);
    assert!(
        !log.contains(&format!("User \"{SERVER_USER}\"")),
        "the server hit a permission: {log}"
    );
}
