use super::*;

const MINIMAL: &str = "\
broker: mqtt://127.0.0.1:1883
cluster-id: c-123abc
trust-domain: example.org
ca-cert: ca.pem
ca-key: /etc/ekattest/ca.key
";

fn parse(text: &str) -> Result<ServerConfig, ServerConfigError> {
    ServerConfig::parse(Path::new("/etc/ekattest/server.yaml"), text)
}

fn error(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn minimal_config_gets_the_documented_defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.broker.host, "127.0.0.1");
    assert_eq!(c.broker.port, 1883);
    assert!(!c.broker.tls);
    assert_eq!(c.cluster_id, "c-123abc");
    assert_eq!(c.topic_prefix, "ekattest/v1");
    assert_eq!(c.trust_domain, "example.org");
    // Relative paths resolve against the config file's folder.
    assert_eq!(c.ca_cert, Path::new("/etc/ekattest/ca.pem"));
    assert_eq!(c.ca_key, Path::new("/etc/ekattest/ca.key"));
    assert_eq!(c.svid_ttl, Duration::from_secs(3600));
    assert_eq!(c.sessions.ttl, Duration::from_secs(300));
    assert_eq!(
        c.sessions.max_sessions,
        SessionConfig::default().max_sessions
    );
    assert_eq!(
        c.metrics_address,
        Some("127.0.0.1:9464".parse::<SocketAddr>().unwrap())
    );
    assert!(c.policy_files.is_empty());
    assert_eq!(c.reload_interval, Duration::from_secs(2));
    assert_eq!(c.log_level, log::LevelFilter::Info);
    assert_eq!(
        c.workers,
        std::thread::available_parallelism().map_or(1, usize::from)
    );
    assert!(
        c.node_id.ends_with(&format!("-{}", std::process::id())),
        "{}",
        c.node_id
    );
    assert!(topic::validate(Part::Node, &c.node_id).is_ok());
    assert!(c.username.is_none() && c.password.is_none());
    assert_eq!(c.login_limit, LoginLimit::default());
    assert_eq!(c.login_limit.burst, 3);
    assert_eq!(c.login_limit.interval, Duration::from_secs(10));
}

#[test]
fn every_key_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    write_private(&pw, "s3cret\nignored\n");
    let text = format!(
        "broker: mqtts://broker.example:8884
tls:
  ca: tls/ca.pem
  cert: tls/client.pem
  key: tls/client.key
username: server1
password-file: {}
cluster-id: c-1
node-id: node-a
topic-prefix: acme/att/v1
trust-domain: acme.example
ca-cert: ca.pem
ca-key: ca.key
svid-ttl: 90m
session-ttl: 30s
max-sessions: 500
metrics-address: 0.0.0.0:9100
policy-files: [a.yaml, /abs/b.yaml]
reload-interval: 500ms
log-level: debug
workers: 3
login-burst: 5
login-interval: 2s
",
        pw.display()
    );
    let c = ServerConfig::parse(&dir.path().join("server.yaml"), &text).unwrap();
    assert!(c.broker.tls);
    assert_eq!(
        (c.broker.host.as_str(), c.broker.port),
        ("broker.example", 8884)
    );
    assert_eq!(c.tls.ca, Some(dir.path().join("tls/ca.pem")));
    assert_eq!(c.tls.cert, Some(dir.path().join("tls/client.pem")));
    assert_eq!(c.tls.key, Some(dir.path().join("tls/client.key")));
    assert_eq!(c.username.as_deref(), Some("server1"));
    assert_eq!(c.password.as_ref().map(Password::expose), Some("s3cret"));
    assert_eq!(c.node_id, "node-a");
    assert_eq!(c.topic_prefix, "acme/att/v1");
    assert_eq!(c.svid_ttl, Duration::from_secs(90 * 60));
    assert_eq!(c.sessions.ttl, Duration::from_secs(30));
    assert_eq!(c.sessions.max_sessions, 500);
    assert_eq!(c.metrics_address, Some("0.0.0.0:9100".parse().unwrap()));
    assert_eq!(
        c.policy_files,
        [dir.path().join("a.yaml"), PathBuf::from("/abs/b.yaml")]
    );
    assert_eq!(c.reload_interval, Duration::from_millis(500));
    assert_eq!(c.log_level, log::LevelFilter::Debug);
    assert_eq!(c.workers, 3);
    assert_eq!(
        (c.login_limit.burst, c.login_limit.interval),
        (5, Duration::from_secs(2))
    );
    // The password never shows in Debug output.
    assert!(!format!("{c:?}").contains("s3cret"));
}

#[test]
fn empty_metrics_address_disables_metrics() {
    let c = parse(&format!("{MINIMAL}metrics-address: \"\"\n")).unwrap();
    assert_eq!(c.metrics_address, None);
}

#[test]
fn unknown_key_is_named_with_the_file() {
    let e = error(&format!("{MINIMAL}policy-file: x.yaml\n"));
    assert!(e.starts_with("/etc/ekattest/server.yaml: "), "{e}");
    assert!(e.contains("unknown field `policy-file`"), "{e}");
    let e = error(&format!("{MINIMAL}tls:\n  cafile: x\n"));
    assert!(e.contains("unknown field `cafile`"), "{e}");
}

#[test]
fn missing_required_keys_are_named() {
    for key in ["broker", "cluster-id", "trust-domain", "ca-cert", "ca-key"] {
        let text: String = MINIMAL
            .lines()
            .filter(|l| !l.starts_with(&format!("{key}:")))
            .map(|l| format!("{l}\n"))
            .collect();
        let e = error(&text);
        assert!(e.contains(&format!("missing field `{key}`")), "{key}: {e}");
    }
}

#[test]
fn bad_durations_name_the_key() {
    for (key, value) in [
        ("session-ttl", "5 minutes"),
        ("svid-ttl", "1y"),
        ("reload-interval", "-2s"),
        ("session-ttl", "s"),
    ] {
        let e = error(&format!("{MINIMAL}{key}: \"{value}\"\n"));
        assert!(
            e.starts_with(&format!("/etc/ekattest/server.yaml: {key}: ")),
            "{e}"
        );
        assert!(e.contains("is not a duration"), "{e}");
    }
    let e = error(&format!("{MINIMAL}session-ttl: 0s\n"));
    assert!(e.contains("session-ttl: 0ns is too short"), "{e}");
}

#[test]
fn duration_parser_accepts_the_documented_forms() {
    assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
    assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
    assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
    assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
    for bad in ["", "5", "m", "5x", "1.5h", "99999999999999h", "5m-"] {
        assert!(parse_duration(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn identifiers_are_validated_as_topic_levels() {
    let e = error(&MINIMAL.replace("c-123abc", "c/1"));
    assert!(e.contains("cluster-id: cluster id has '/'"), "{e}");
    let e = error(&format!("{MINIMAL}node-id: \"n+1\"\n"));
    assert!(e.contains("node-id: node id has '+'"), "{e}");
    let e = error(&format!("{MINIMAL}topic-prefix: \"a//b\"\n"));
    assert!(e.contains("topic-prefix:"), "{e}");
    let e = error(&MINIMAL.replace("example.org", "spiffe://example.org"));
    assert!(e.contains("trust-domain: "), "{e}");
}

#[test]
fn broker_urls() {
    let b = Broker::parse("mqtts://[::1]:8883").unwrap();
    assert_eq!((b.host.as_str(), b.port, b.tls), ("::1", 8883, true));
    assert_eq!(Broker::parse("mqtts://h").unwrap().port, 8883);
    assert_eq!(Broker::parse("mqtt://h/").unwrap().port, 1883);
    for bad in [
        "tcp://h:1",
        "mqtt://",
        "mqtt://h:0",
        "mqtt://h:99999",
        "mqtt://u:p@h:1",
        "mqtt://h:1/x",
        "mqtt://[::1",
    ] {
        assert!(Broker::parse(bad).is_err(), "{bad}");
    }
    let e = error(&MINIMAL.replace("mqtt://127.0.0.1:1883", "http://x"));
    assert!(
        e.contains("broker: \"http://x\" is not a broker URL"),
        "{e}"
    );
}

#[test]
fn tls_rules() {
    let e = error(&MINIMAL.replace("mqtt://", "mqtts://"));
    assert!(
        e.contains("tls.ca: required with an mqtts:// broker"),
        "{e}"
    );
    let e = error(&format!("{MINIMAL}tls:\n  ca: ca.pem\n"));
    assert!(e.contains("tls: set, but broker is an mqtt:// URL"), "{e}");
    let e = error(&format!(
        "{}tls:\n  ca: ca.pem\n  cert: c.pem\n",
        MINIMAL.replace("mqtt://", "mqtts://")
    ));
    assert!(
        e.contains("tls.key: tls.cert and tls.key go together"),
        "{e}"
    );
}

#[test]
fn credentials_rules() {
    let e = error(&format!("{MINIMAL}password-file: /nonexistent/pw\n"));
    assert!(e.contains("password-file: set without username"), "{e}");
    let e = error(&format!(
        "{MINIMAL}username: u\npassword-file: /nonexistent/pw\n"
    ));
    assert!(
        e.contains("cannot read password-file /nonexistent/pw"),
        "{e}"
    );
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    write_private(&pw, "\n");
    let e = error(&format!(
        "{MINIMAL}username: u\npassword-file: {}\n",
        pw.display()
    ));
    assert!(e.contains("is empty"), "{e}");
}

#[test]
fn numeric_limits() {
    assert!(error(&format!("{MINIMAL}workers: 0\n")).contains("workers: must be at least 1"));
    assert!(error(&format!("{MINIMAL}max-sessions: 0\n")).contains("max-sessions: must be"));
    assert!(error(&format!("{MINIMAL}login-burst: 5000\n")).contains("login-burst: 5000"));
    assert!(error(&format!("{MINIMAL}login-burst: -1\n")).contains("login-burst"));
    assert!(error(&format!("{MINIMAL}login-interval: 0s\n")).contains("login-interval"));
    assert!(error(&format!("{MINIMAL}login-interval: soon\n")).contains("login-interval"));
    assert_eq!(
        parse(&format!("{MINIMAL}login-burst: 0\n"))
            .unwrap()
            .login_limit
            .burst,
        0
    );
    assert!(error(&format!("{MINIMAL}log-level: loud\n")).contains("log-level: \"loud\""));
    assert!(
        error(&format!("{MINIMAL}metrics-address: localhost\n"))
            .contains("metrics-address: \"localhost\" is not IP:PORT")
    );
}

#[test]
fn default_node_id_is_sanitized_and_bounded() {
    assert_eq!(node_id_from("host.local", 42), "host.local-42");
    assert_eq!(node_id_from("a b/c", 7), "a-b-c-7");
    assert_eq!(node_id_from("", 7), "ekattest-7");
    let long = "x".repeat(200);
    let id = node_id_from(&long, 1234);
    assert_eq!(id.len(), ekattest_protocol::limits::NODE_ID_MAX);
    assert!(id.ends_with("-1234"));
}

const EXAMPLE: &str = include_str!("../../../../deploy/server.yaml");

#[test]
fn the_deploy_example_parses_and_documents_every_key() {
    // The example names a systemd credential path for the password; parse without it.
    let text: String = EXAMPLE
        .lines()
        .filter(|l| !l.starts_with("password-file:") && !l.starts_with("username:"))
        .map(|l| format!("{l}\n"))
        .collect();
    let c = parse(&text).unwrap();
    assert_eq!(c.cluster_id, "c-xxxxxx");
    assert!(c.broker.tls);
    for key in [
        "bus",
        "nats-url",
        "broker",
        "tls",
        "ca",
        "cert",
        "key",
        "username",
        "password-file",
        "cluster-id",
        "node-id",
        "topic-prefix",
        "trust-domain",
        "ca-cert",
        "ca-key",
        "svid-ttl",
        "session-ttl",
        "max-sessions",
        "metrics-address",
        "policy-files",
        "reload-interval",
        "log-level",
        "workers",
        "login-burst",
        "login-interval",
        "insecure-plaintext",
        "policy-topic",
        "policy-signers",
        "agent-id-from-ek",
    ] {
        let documented = EXAMPLE.lines().any(|l| {
            let l = l.trim_start().trim_start_matches('#').trim_start();
            l.starts_with(&format!("{key}:"))
        });
        assert!(documented, "deploy/server.yaml does not show {key}");
    }
    // Every commented-out key still parses when uncommented.
    let uncommented: String =
        text.lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest)
                    if rest.contains(": ")
                        && !rest.contains("  ")
                        && rest.split(':').next().is_some_and(|k| {
                            k.chars().all(|c| c.is_ascii_lowercase() || c == '-')
                        }) =>
                {
                    format!("{rest}\n")
                }
                _ => format!("{l}\n"),
            })
            .collect();
    let c = parse(&uncommented).unwrap();
    assert_eq!(c.node_id, "server-a");
    assert_eq!(c.workers, 4);
    assert_eq!(c.login_limit, LoginLimit::default());
}

#[test]
fn new_keys_default_to_the_secure_choice() {
    let c = parse(MINIMAL).unwrap();
    assert!(!c.policy_topic);
    assert!(c.policy_signers.is_empty());
    assert!(!c.insecure_plaintext);
    assert!(c.agent_id_from_ek);
    assert!(c.plaintext_hosts().is_empty());
    let c = parse(&format!("{MINIMAL}agent-id-from-ek: false\n")).unwrap();
    assert!(!c.agent_id_from_ek);
    let e = error(&format!("{MINIMAL}agent-id-from-ek: maybe\n"));
    assert!(e.contains("agent-id-from-ek"), "{e}");
    let e = error(&format!("{MINIMAL}policy-topic: yes please\n"));
    assert!(e.contains("policy-topic"), "{e}");
    assert!(!c.require_tpm_svid_key);
    let c = parse(&format!("{MINIMAL}require-tpm-svid-key: true\n")).unwrap();
    assert!(c.require_tpm_svid_key);
    let e = error(&format!("{MINIMAL}require-tpm-svid-key: sometimes\n"));
    assert!(e.contains("require-tpm-svid-key"), "{e}");
}

#[test]
fn policy_topic_needs_pinned_signers() {
    let e = error(&format!("{MINIMAL}policy-topic: true\n"));
    assert!(
        e.starts_with(
            "/etc/ekattest/server.yaml: policy-signers: policy-topic: true needs \
                       policy-signers"
        ),
        "{e}"
    );
    assert!(e.contains("ekattestctl config keygen"), "{e}");
    let e = error(&format!(
        "{MINIMAL}policy-topic: true\npolicy-signers: []\n"
    ));
    assert!(e.contains("policy-topic: true needs policy-signers"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let (key, private) = crate::config::signed::SigningKey::generate().unwrap();
    let public = dir.path().join("signer.pub");
    std::fs::write(&public, key.public_pem()).unwrap();
    let c = ServerConfig::parse(
        &dir.path().join("server.yaml"),
        &format!("{MINIMAL}policy-topic: true\npolicy-signers: [signer.pub]\n"),
    )
    .unwrap();
    assert!(c.policy_topic);
    assert_eq!(c.policy_signers.len(), 1);
    // Signers without the topic are parsed (and unused).
    let c = ServerConfig::parse(
        &dir.path().join("server.yaml"),
        &format!("{MINIMAL}policy-signers: [signer.pub]\n"),
    )
    .unwrap();
    assert!(!c.policy_topic);

    // A private key, a missing file, or not a key at all: each names the file.
    let private_path = dir.path().join("signer.key");
    write_private(&private_path, &private);
    for (file, what) in [
        ("signer.key", "no PEM PUBLIC KEY block"),
        ("missing.pub", "cannot read policy-signers file"),
    ] {
        let e = ServerConfig::parse(
            &dir.path().join("server.yaml"),
            &format!("{MINIMAL}policy-topic: true\npolicy-signers: [{file}]\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains(what) && e.contains(file), "{file}: {e}");
    }
}

#[test]
fn plaintext_to_a_non_loopback_host_is_refused_unless_insecure_plaintext() {
    for (from, to) in [
        ("mqtt://127.0.0.1:1883", "mqtt://10.0.0.5:1883"),
        ("mqtt://127.0.0.1:1883", "mqtt://broker.example.org"),
    ] {
        let text = MINIMAL.replace(from, to);
        let e = error(&text);
        assert!(e.contains("broker: plaintext connection to"), "{e}");
        assert!(e.contains("not a loopback host"), "{e}");
        assert!(e.contains("insecure-plaintext: true"), "{e}");
        let c = parse(&format!("{text}insecure-plaintext: true\n")).unwrap();
        assert!(c.insecure_plaintext);
        assert_eq!(c.plaintext_hosts().len(), 1);
    }
    for ok in [
        "mqtt://localhost:1883",
        "mqtt://127.9.9.9:1",
        "mqtt://[::1]:1883",
    ] {
        let c = parse(&MINIMAL.replace("mqtt://127.0.0.1:1883", ok)).unwrap();
        assert!(c.plaintext_hosts().is_empty(), "{ok}");
    }
    // NATS: nats:// to a remote node is refused as well, tls:// is fine.
    let nats = MINIMAL.replace("broker: mqtt://127.0.0.1:1883\n", "bus: nats\n");
    let e = error(&format!(
        "{nats}nats-url: [nats://127.0.0.1:4222, nats://10.1.1.1:4222]\n"
    ));
    assert!(
        e.contains("nats-url: plaintext connection to \"10.1.1.1\""),
        "{e}"
    );
    assert!(e.contains("use tls://"), "{e}");
    parse(&format!("{nats}nats-url: nats://127.0.0.1:4222\n")).unwrap();
    parse(&format!(
        "{nats}nats-url: tls://10.1.1.1:4222\ntls:\n  ca: ca.pem\n"
    ))
    .unwrap();
}

#[test]
fn group_readable_password_and_key_files_are_refused_with_the_chmod() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    write_private(&pw, "s3cret\n");
    let ca_key = dir.path().join("ca.key");
    write_private(&ca_key, "key");
    let tls_key = dir.path().join("client.key");
    write_private(&tls_key, "key");
    let text = format!(
        "broker: mqtts://127.0.0.1:8883\ntls:\n  ca: ca.pem\n  cert: c.pem\n  key: {}\n\
         username: u\npassword-file: {}\ncluster-id: c-1\ntrust-domain: example.org\n\
         ca-cert: ca.pem\nca-key: {}\n",
        tls_key.display(),
        pw.display(),
        ca_key.display()
    );
    parse(&text).unwrap();
    for (path, key, mode) in [
        (&pw, "password-file", 0o660),
        (&ca_key, "ca-key", 0o644),
        (&tls_key, "tls.key", 0o604),
    ] {
        chmod(path, mode);
        let e = error(&text);
        assert!(
            e.starts_with(&format!(
                "/etc/ekattest/server.yaml: {key}: {}",
                path.display()
            )),
            "{e}"
        );
        assert!(e.contains(&format!("(mode {mode:04o})")), "{e}");
        assert!(
            e.contains(&format!("run `chmod 600 {}`", path.display())),
            "{e}"
        );
        chmod(path, 0o600);
    }
    chmod(&ca_key, 0o400);
    parse(&text).unwrap();
    // Group read: accepted on a root-owned file only (a Kubernetes Secret volume).
    chmod(&ca_key, 0o440);
    let root_owned = {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(&ca_key).unwrap().uid() == 0
    };
    assert_eq!(
        parse(&text).is_ok(),
        root_owned,
        "0440, root-owned: {root_owned}"
    );
    chmod(&ca_key, 0o600);
}

#[test]
fn the_nats_deploy_example_parses_with_the_secure_defaults() {
    let text = include_str!("../../../../deploy/nats/server.yaml");
    let c = parse(text).unwrap();
    assert!(matches!(c.bus, Bus::Nats { ref urls } if urls.len() == 3));
    assert!(c.broker.tls);
    assert!(c.plaintext_hosts().is_empty());
}

#[test]
fn a_tab_in_the_indentation_is_named_with_its_line() {
    let e = error(&format!("{MINIMAL}retry:\n\tinitial: 1s\n"));
    assert!(
        e.starts_with("/etc/ekattest/server.yaml: line 7: a tab in the indentation"),
        "{e}"
    );
}

#[test]
fn the_registry_defaults_to_sqlite_under_state_dir() {
    let c = parse(&format!("{MINIMAL}state-dir: state\n")).unwrap();
    assert_eq!(c.state_dir, Path::new("/etc/ekattest/state"));
    let r = &c.registry;
    assert_eq!(
        r.backend,
        Backend::Sqlite(PathBuf::from("/etc/ekattest/state/registry.db"))
    );
    assert_eq!(r.flush_interval, Duration::from_secs(1));
    assert_eq!(r.batch_max, 2000);
    assert_eq!(r.queue_max, 100_000);
    assert_eq!(r.ban_refresh, Duration::from_secs(2));
    assert_eq!(r.audit_retention, Duration::from_secs(90 * 86_400));
    assert_eq!(r.duplicate_window, Duration::from_secs(86_400));
    // Without state-dir: systemd's STATE_DIRECTORY or /var/lib/ekattest-server.
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.state_dir, default_state_dir());
}

#[test]
fn every_registry_key_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("db.password");
    write_private(&pw, "s3cret\n");
    let text = format!(
        "{MINIMAL}registry:\n  backend: postgres\n  url: postgres://ekattest@db:5433/reg\n  \
         password-file: {}\n  flush-interval: 250ms\n  batch-max: 10\n  queue-max: 50\n  \
         ban-refresh: 500ms\n  audit-retention: 2d\n  duplicate-window: 1h\n",
        pw.display()
    );
    let r = parse(&text).unwrap().registry;
    assert_eq!(
        r.backend,
        Backend::Postgres {
            url: "postgres://ekattest@db:5433/reg".into(),
            password: Some("s3cret".into()),
        }
    );
    assert_eq!(
        (r.flush_interval, r.batch_max, r.queue_max),
        (Duration::from_millis(250), 10, 50)
    );
    assert_eq!(r.ban_refresh, Duration::from_millis(500));
    assert_eq!(r.audit_retention, Duration::from_secs(2 * 86_400));
    assert_eq!(r.duplicate_window, Duration::from_secs(3600));
    let none = parse(&format!("{MINIMAL}registry: {{backend: none}}\n")).unwrap();
    assert_eq!(none.registry.backend, Backend::None);
}

#[test]
fn registry_mistakes_name_the_key_and_the_fix() {
    let cases = [
        (
            "registry: {backend: mysql}",
            "registry.backend",
            "sqlite, postgres or none",
        ),
        ("registry: {backend: postgres}", "registry.url", "needs url"),
        (
            "registry: {backend: postgres, url: \"postgres://u:pw@db/x\"}",
            "registry.url",
            "password-file",
        ),
        (
            "registry: {backend: postgres, url: \"postgres://db/x?password=pw\"}",
            "registry.url",
            "password-file",
        ),
        (
            "registry: {backend: postgres, url: \"mysql://db/x\"}",
            "registry.url",
            "postgres://",
        ),
        (
            "registry: {url: \"postgres://db/x\"}",
            "registry.url",
            "backend: postgres",
        ),
        (
            "registry: {backend: postgres, url: \"postgres://db/x\", path: r.db}",
            "registry.path",
            "backend: sqlite",
        ),
        (
            "registry: {flush-interval: 1ms}",
            "registry.flush-interval",
            "minimum",
        ),
        (
            "registry: {ban-refresh: 10ms}",
            "registry.ban-refresh",
            "minimum",
        ),
        (
            "registry: {audit-retention: 10m}",
            "registry.audit-retention",
            "minimum",
        ),
        (
            "registry: {batch-max: 0}",
            "registry.batch-max",
            "between 1 and",
        ),
        (
            "registry: {queue-max: 20000000}",
            "registry.queue-max",
            "between 1 and",
        ),
        ("registry: {flush-intervall: 1s}", "flush-intervall", ""),
    ];
    for (yaml, key, hint) in cases {
        let e = error(&format!("{MINIMAL}{yaml}\n"));
        assert!(e.contains(key) && e.contains(hint), "{yaml}: {e}");
        assert!(!e.contains("pw@"), "{yaml}: the password is echoed: {e}");
    }
}

#[test]
fn a_registry_password_file_others_can_read_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("db.password");
    write_private(&pw, "s3cret\n");
    chmod(&pw, 0o644);
    let e = error(&format!(
        "{MINIMAL}registry: {{backend: postgres, url: \"postgres://u@db/x\", password-file: {}}}\n",
        pw.display()
    ));
    assert!(
        e.contains("registry.password-file") && e.contains("chmod 600"),
        "{e}"
    );
}
