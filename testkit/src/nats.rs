//! A local nats-server cluster for tests and the fleet: N nodes on free loopback ports, each
//! with a client listener, a route listener (unused by a lone node, which runs without a
//! cluster block), an MQTT listener (for agents) and JetStream (which nats-server's MQTT
//! support requires), config files and JetStream stores in a temp dir. [`NatsCluster::start`] returns once every node has all its routes, reports healthy
//! and grants an MQTT QoS 1 subscription; [`NatsCluster::kill`] crashes one node. The MQTT
//! streams are replicated on 3 nodes (or all, below 3: [`mqtt_replicas`]), so a 3-node
//! cluster keeps serving MQTT with one node down.
//!
//! [`NatsCluster::start_with`] with [`Access`] enforces the shipped accounts and permissions
//! (`deploy/nats/permissions.conf`, copied unchanged next to an accounts file rendered by
//! [`users::render`]); [`NatsCluster::start`] runs without authentication.
//!
//! Never binds fixed ports and never touches a system nats-server; every node runs under the
//! watchdog of [`crate::process`], so nothing outlives the harness.

pub mod users;

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::process::{self, Error, Result, Watched};
use crate::swtpm::tool::os_args;

/// How long a cluster may take to form (routes up, JetStream healthy).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Ports of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodePorts {
    /// NATS clients (`nats://127.0.0.1:PORT`).
    pub client: u16,
    /// Cluster routes.
    pub route: u16,
    /// MQTT 3.1.1 (`mqtt://127.0.0.1:PORT`).
    pub mqtt: u16,
    /// HTTP monitoring (`/routez`, `/healthz`).
    pub http: u16,
}

/// Authentication and permissions for a cluster: the rendered accounts file (its `include`
/// must name `permissions.conf`, where the harness copies [`users::SHIPPED_PERMISSIONS`])
/// and the MQTT user whose QoS 1 subscription to `{p}/probe/config` is the readiness probe
/// (the admin can make it).
#[derive(Debug, Clone)]
pub struct Access {
    /// The accounts file, as [`users::render`] makes it.
    pub accounts: String,
    /// The readiness probe's MQTT user.
    pub probe: users::Credential,
}

/// How often [`NatsCluster::start_with`] retries a start that lost a port to another
/// process.
const PORT_RACE_RETRIES: usize = 3;

/// A running local nats-server cluster; every node is stopped on drop.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<Option<Watched>>,
    ports: Vec<NodePorts>,
    access: Option<Access>,
    base: PathBuf,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts `n` (1..=9) clustered nodes and waits until each has `n - 1` routes and
    /// reports healthy.
    ///
    /// # Errors
    /// [`Error::Missing`] if nats-server is not installed (`apt-get install nats-server`),
    /// [`Error::NotReady`] with the node's log if the cluster does not form.
    pub fn start(n: usize) -> Result<Self> {
        Self::start_with(n, None)
    }

    /// [`NatsCluster::start`], enforcing `access` if given.
    ///
    /// Ports come from [`process::free_port`], which releases each port before nats-server
    /// binds it, so a parallel test can take one in between; a node that then fails with
    /// "address already in use" makes the whole cluster start again on fresh ports (at most
    /// [`PORT_RACE_RETRIES`] times).
    ///
    /// # Errors
    /// As [`NatsCluster::start`]; [`Error::Io`] if the shipped permissions cannot be copied.
    pub fn start_with(n: usize, access: Option<Access>) -> Result<Self> {
        let mut attempt = 0;
        loop {
            match Self::try_start(n, access.clone()) {
                Err(Error::NotReady { output, .. })
                    if attempt < PORT_RACE_RETRIES && output.contains("address already in use") =>
                {
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn try_start(n: usize, access: Option<Access>) -> Result<Self> {
        if !(1..=9).contains(&n) {
            return Err(Error::Invalid(format!("{n} NATS nodes: use 1 to 9")));
        }
        let program = process::find_program("nats-server", "nats-server")?;
        let (dir, base) = process::temp_dir("ekattest-nats-")?;
        let mut ports = Vec::with_capacity(n);
        for _ in 0..n {
            ports.push(NodePorts {
                client: process::free_port()?,
                route: process::free_port()?,
                mqtt: process::free_port()?,
                http: process::free_port()?,
            });
        }
        if let Some(a) = &access {
            let shipped = Path::new(users::SHIPPED_PERMISSIONS);
            let copy = base.join("permissions.conf");
            fs::copy(shipped, &copy).map_err(|source| process::io("copy", shipped, source))?;
            process::write(&base.join("accounts.conf"), &a.accounts)?;
        }
        let mut cluster = Self {
            nodes: Vec::with_capacity(n),
            ports,
            access,
            base,
            _dir: dir,
        };
        for i in 0..n {
            let conf = cluster.write_conf(i)?;
            let log = cluster.base.join(format!("n{i}.log"));
            let node = Watched::spawn(&program, &os_args!["-c", conf], &cluster.base, &log)?;
            cluster.nodes.push(Some(node));
        }
        cluster.wait_ready()?;
        Ok(cluster)
    }

    fn write_conf(&self, i: usize) -> Result<PathBuf> {
        let p = self.ports[i];
        let store = self.base.join(format!("n{i}-js"));
        fs::create_dir_all(&store).map_err(|source| process::io("create", &store, source))?;
        let routes: Vec<String> = self
            .ports
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, q)| format!("nats-route://127.0.0.1:{}", q.route))
            .collect();
        let conf = format!(
            "# Generated by ekattest-fleet for one test run; see deploy/nats/.\n\
             server_name: n{i}\n\
             listen: 127.0.0.1:{client}\n\
             http: 127.0.0.1:{http}\n\
             jetstream {{\n  store_dir: \"{store}\"\n  max_memory_store: 64MB\n  max_file_store: 256MB\n}}\n\
             {cluster}\
             mqtt {{\n  listen: 127.0.0.1:{mqtt}\n  ack_wait: \"10s\"\n  max_ack_pending: 1000\n  \
             stream_replicas: {replicas}\n}}\n{accounts}",
            client = p.client,
            http = p.http,
            store = store.display(),
            // One node runs standalone: a cluster block without routes makes JetStream
            // refuse to start once accounts are configured ("JetStream cluster requires
            // configured routes ... for the system account").
            cluster = if routes.is_empty() {
                String::new()
            } else {
                format!(
                    "cluster {{\n  name: ekattest\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
                    p.route,
                    routes.join(", ")
                )
            },
            mqtt = p.mqtt,
            replicas = mqtt_replicas(self.ports.len()),
            accounts = if self.access.is_some() {
                "include \"accounts.conf\"\n"
            } else {
                ""
            },
        );
        let path = self.base.join(format!("n{i}.conf"));
        fs::write(&path, conf).map_err(|source| process::io("write", &path, source))?;
        Ok(path)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let start = Instant::now();
        let want = self.nodes.len() - 1;
        for i in 0..self.nodes.len() {
            let ports = self.ports[i];
            let what = format!("nats-server n{i} on 127.0.0.1:{}", ports.client);
            if let Some(node) = self.nodes[i].as_mut() {
                node.wait_ports(&what, &[ports.client, ports.http], READY_TIMEOUT)?;
            }
        }
        loop {
            let mut pending = None;
            for (i, p) in self.ports.iter().enumerate() {
                let routes = http_get(p.http, "/routez")
                    .and_then(|b| json_number(&b, "num_routes"))
                    .unwrap_or(0);
                let healthy = http_get(p.http, "/healthz").is_some_and(|b| b.contains("\"ok\""));
                let mqtt = process::accepts(p.mqtt);
                if routes < want || !healthy || !mqtt {
                    pending = Some(format!(
                        "n{i}: {routes}/{want} routes, healthz {}, mqtt listener {}",
                        if healthy { "ok" } else { "not ok" },
                        if mqtt { "up" } else { "down" }
                    ));
                    break;
                }
                // Healthy is not yet usable: the MQTT streams may still be placed, and a
                // QoS 1 subscription (a JetStream consumer) refused until they are.
                if let Err(why) = mqtt_probe(p.mqtt, i, self.access.as_ref()) {
                    pending = Some(format!("n{i}: MQTT not usable yet: {why}"));
                    break;
                }
            }
            let Some(reason) = pending else {
                return Ok(());
            };
            if start.elapsed() > READY_TIMEOUT {
                let log = self.base.join("n0.log");
                return Err(Error::NotReady {
                    what: format!("nats-server cluster of {} nodes", self.nodes.len()),
                    reason,
                    output: process::tail(&log),
                    log,
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The nodes' ports, in node order.
    pub fn ports(&self) -> &[NodePorts] {
        &self.ports
    }

    /// `nats://127.0.0.1:PORT` of every node (for a server's `nats-url`).
    pub fn nats_urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{}", p.client))
            .collect()
    }

    /// `mqtt://127.0.0.1:PORT` of every node's MQTT listener (for agents).
    pub fn mqtt_urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("mqtt://127.0.0.1:{}", p.mqtt))
            .collect()
    }

    /// How many nodes the cluster was started with (killed ones included).
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Node `i`'s pid while it runs (`None` once killed).
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes.get(i)?.as_ref()?.pid()
    }

    /// SIGKILL to node `i` (a crash, as clients and peers see it). Idempotent.
    pub fn kill(&mut self, i: usize) {
        if let Some(node) = self.nodes.get_mut(i).and_then(Option::take) {
            let mut node = node;
            node.kill();
        }
    }

    /// Node `i`'s log (for failure output).
    pub fn log(&self, i: usize) -> String {
        process::read_text(&self.base.join(format!("n{i}.log")))
    }

    /// One line on node `i`'s log for a report: how many `[ERR]` and `[WRN]` lines it has,
    /// how many of those are MQTT clients it could not serve, and the last `[ERR]` line
    /// (shortened). The log is read whole (nats-server logs are small at the default level).
    pub fn log_summary(&self, i: usize) -> String {
        let log = self.log(i);
        let errors: Vec<&str> = log.lines().filter(|l| l.contains("[ERR]")).collect();
        let warnings = log.lines().filter(|l| l.contains("[WRN]")).count();
        let routes = errors
            .iter()
            .filter(|l| l.contains("Error trying to connect to route"))
            .count();
        let last = errors
            .iter()
            .rev()
            .find(|l| !l.contains("Error trying to connect to route"))
            .map(|l| {
                let text = l.split_once("[ERR] ").map_or(*l, |(_, t)| t);
                text.chars().take(240).collect::<String>()
            });
        format!(
            "NATS node n{i}: {} [ERR] lines ({routes} failed route dials), {warnings} [WRN]{}",
            errors.len(),
            last.map(|l| format!("; last other error: {l}"))
                .unwrap_or_default()
        )
    }

    /// The folder holding configs, stores and logs.
    pub fn dir(&self) -> &Path {
        &self.base
    }
}

/// `mqtt.stream_replicas` for an `n`-node cluster: 3 from 3 nodes up (1 or 2 below).
///
/// Never left to nats-server: unset, it counts the `routes` of the node's own config (here
/// the `n - 1` others) and so makes R2 streams on 3 nodes. Measured: with R2, SIGKILLing a
/// node that holds a replica leaves `$MQTT_msgs` and the session consumers without quorum
/// ("has NO quorum, stalled"), every MQTT QoS 1 publish and subscribe on the surviving
/// nodes times out ("timeout for request type MS/CC") and devices never recover.
pub fn mqtt_replicas(n: usize) -> usize {
    n.clamp(1, 3)
}

/// Connects to the MQTT listener on 127.0.0.1:`port` (clean session), subscribes QoS 1 and
/// waits (at most 5 s) for a SUBACK that grants it. With `access`, as its probe user, to a
/// topic the shipped admin permissions allow.
fn mqtt_probe(port: u16, node: usize, access: Option<&Access>) -> std::result::Result<(), String> {
    use rumqttc::{Client, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};
    let mut options = MqttOptions::new(format!("ekattest-probe-n{node}"), "127.0.0.1", port);
    options
        .set_clean_session(true)
        .set_keep_alive(Duration::from_secs(10));
    let topic = match access {
        Some(a) => {
            options.set_credentials(a.probe.user.clone(), a.probe.password.clone());
            format!("{}/probe/config", ekattest_protocol::topic::DEFAULT_PREFIX)
        }
        None => "ekattest-probe/ready".to_owned(),
    };
    let (client, mut connection) = Client::new(options, 4);
    client
        .subscribe(topic, QoS::AtLeastOnce)
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let outcome = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break Err("no SUBACK within 5 s".to_owned());
        }
        match connection.recv_timeout(left) {
            Ok(Ok(Event::Incoming(Packet::SubAck(ack)))) => {
                break if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure))
                {
                    Err("QoS 1 subscription refused".to_owned())
                } else {
                    Ok(())
                };
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => break Err(e.to_string()),
            Err(_) => break Err("no SUBACK within 5 s".to_owned()),
        }
    };
    let _ = client.try_disconnect();
    for _ in 0..10 {
        match connection.recv_timeout(Duration::from_millis(100)) {
            Ok(Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect))) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(_)) => {}
        }
    }
    outcome
}

/// GET `path` from 127.0.0.1:`port`; the body, or `None` on any failure.
fn http_get(port: u16, path: &str) -> Option<String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut body = Vec::new();
    s.take(1 << 20).read_to_end(&mut body).ok()?;
    let text = String::from_utf8_lossy(&body).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200")
        .then(|| body.to_owned())
        .or_else(|| head.starts_with("HTTP/1.0 200").then(|| body.to_owned()))
}

fn json_number(body: &str, key: &str) -> Option<usize> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    v.get(key)?.as_u64().and_then(|n| usize::try_from(n).ok())
}
