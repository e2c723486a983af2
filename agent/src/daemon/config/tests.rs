use super::*;

/// The seed's "Linux Installation" snippet, verbatim.
const SEED: &str = "cluster-id: c-xxxxxx
disable-kubernetes-attestation: true
agent-attestors:
- type: tpm_ek
";

fn with(extra: &str) -> Result<Config, ConfigError> {
    Config::parse(&format!("{SEED}{extra}"))
}

fn err(text: &str) -> String {
    Config::parse(text).unwrap_err().to_string()
}

#[test]
fn seed_example_parses_with_defaults() {
    let c = Config::parse(SEED).unwrap();
    assert_eq!(c.cluster_id, "c-xxxxxx");
    assert_eq!(
        c.broker,
        Broker {
            tls: false,
            host: "localhost".into(),
            port: 1883
        }
    );
    assert_eq!(c.tpm, TpmSpec::Default);
    assert_eq!(c.ek, None);
    assert_eq!(c.trust_bundle, PathBuf::from("/etc/ekattest/bundle.pem"));
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/ekattest"));
    assert_eq!(c.topic_prefix, "ekattest/v1");
    assert_eq!(c.log_level, log::LevelFilter::Info);
    assert_eq!(c.retry.initial, Duration::from_secs(1));
    assert_eq!(c.retry.max, Duration::from_secs(300));
    assert_eq!(c.response_timeout, Duration::from_secs(30));
    assert!((c.renew_before - 0.33).abs() < 1e-9);
    assert_eq!(c.agent_id, None);
    assert_eq!(c.metrics_textfile, None);
    assert!(
        c.parameter_encryption,
        "parameter encryption is on by default"
    );
}

#[test]
fn committed_example_parses() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/agent.yaml");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let c = Config::parse(&text).unwrap();
    assert!(c.broker.tls);
    assert_eq!(c.broker.port, 8883);
    assert!(c.tls.as_ref().unwrap().ca.is_some());
    // Off in the example: the textfile folder exists only where node_exporter runs.
    assert!(c.metrics_textfile.is_none());
}

#[test]
fn every_key_is_read() {
    let c = with(
        "broker: mqtts://[::1]:18883
tls: {ca: /ca.pem, cert: /c.pem, key: /k.pem}
username: dev1
password-file: /etc/ekattest/password
tpm: swtpm:127.0.0.1:2321
ek: p384
trust-bundle: /b.pem
data-dir: /d
agent-id: gw-7
topic-prefix: acme/att
log-level: debug
metrics-textfile: /m.prom
retry: {initial: 500ms, max: 2m}
response-timeout: 10s
renew-before: 0.5
parameter-encryption: false
",
    )
    .unwrap();
    assert_eq!(
        c.broker,
        Broker {
            tls: true,
            host: "::1".into(),
            port: 18883
        }
    );
    assert_eq!(c.tls.unwrap().key, Some(PathBuf::from("/k.pem")));
    assert_eq!(c.username.as_deref(), Some("dev1"));
    assert_eq!(
        c.tpm,
        TpmSpec::Swtpm {
            host: "127.0.0.1".into(),
            port: 2321
        }
    );
    assert_eq!(c.ek, Some(EkKind::P384));
    assert_eq!(c.agent_id.as_deref(), Some("gw-7"));
    assert_eq!(c.topic_prefix, "acme/att");
    assert_eq!(c.log_level, log::LevelFilter::Debug);
    assert_eq!(c.retry.initial, Duration::from_millis(500));
    assert_eq!(c.retry.max, Duration::from_secs(120));
    assert_eq!(c.response_timeout, Duration::from_secs(10));
    assert!((c.renew_before - 0.5).abs() < 1e-9);
    assert!(!c.parameter_encryption);
}

#[test]
fn unknown_key_is_an_error() {
    let e = with("brokr: mqtt://x\n").unwrap_err().to_string();
    assert!(e.contains("unknown field `brokr`"), "{e}");
    let e = with("tls: {ca: /a, certificate: /b}\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `certificate`"), "{e}");
}

#[test]
fn cluster_id_is_required_and_checked() {
    let e = err("agent-attestors: [{type: tpm_ek}]\n");
    assert!(e.contains("cluster-id: missing"), "{e}");
    let e = err("cluster-id: c/x\nagent-attestors: [{type: tpm_ek}]\n");
    assert!(e.contains("config key cluster-id"), "{e}");
}

#[test]
fn attestors_must_be_tpm_ek() {
    let e = err("cluster-id: c-1\n");
    assert!(e.contains("agent-attestors: missing"), "{e}");
    let e = err("cluster-id: c-1\nagent-attestors: []\n");
    assert!(e.contains("must contain {type: tpm_ek}"), "{e}");
    let e = err("cluster-id: c-1\nagent-attestors: [{type: tpm_ek}, {type: k8s_psat}]\n");
    assert!(
        e.contains("\"k8s_psat\" is not supported by this agent (supported: tpm_ek)"),
        "{e}"
    );
}

#[test]
fn bad_broker_urls() {
    for (url, what) in [
        ("http://x", "unknown scheme"),
        ("mqtt://", "missing host"),
        ("mqtt://h:0", "port is not a number"),
        ("mqtt://h:99999", "port is not a number"),
        ("mqtt://h/path", "path"),
        ("mqtt://u@h", "user"),
        ("mqtt://[::1", "unclosed"),
    ] {
        let e = Broker::parse(url).unwrap_err().to_string();
        assert!(e.contains(what), "{url}: {e}");
    }
    assert_eq!(Broker::parse("mqtts://b.example").unwrap().port, 8883);
    assert_eq!(Broker::parse("mqtt://b.example/").unwrap().port, 1883);
    let e = with("broker: mqtts://b\n").unwrap_err().to_string();
    assert!(e.contains("needs tls: {ca: FILE}"), "{e}");
}

#[test]
fn bad_values_name_the_key() {
    for (extra, key) in [
        ("tls: {cert: /c}\n", "tls"),
        ("tpm: com1\n", "tpm"),
        ("ek: rsa1024\n", "ek"),
        ("agent-id: a+b\n", "agent-id"),
        ("topic-prefix: a//b\n", "topic-prefix"),
        ("log-level: loud\n", "log-level"),
        ("log-format: logfmt\n", "log-format"),
        ("retry: {initial: 1x}\n", "retry.initial"),
        ("retry: {initial: 10m, max: 1m}\n", "retry"),
        ("response-timeout: 0s\n", "response-timeout"),
        ("renew-before: 1.5\n", "renew-before"),
        ("renew-before: .nan\n", "renew-before"),
    ] {
        let e = with(extra).unwrap_err().to_string();
        assert!(e.contains(&format!("config key {key}")), "{extra}: {e}");
    }
    let e = with("cluster-id: again\n").unwrap_err().to_string();
    assert!(e.contains("duplicate"), "{e}");
}

#[test]
fn durations() {
    assert_eq!(parse_duration("k", "5m").unwrap(), Duration::from_secs(300));
    assert_eq!(
        parse_duration("k", "1h").unwrap(),
        Duration::from_secs(3600)
    );
    assert_eq!(
        parse_duration("k", "250ms").unwrap(),
        Duration::from_millis(250)
    );
    for bad in ["", "5", "m", "-1s", "1.5s", "18446744073709551615h"] {
        assert!(parse_duration("k", bad).is_err(), "{bad}");
    }
}

#[test]
fn load_reports_the_path() {
    let e = Config::load(Path::new("/no/such/agent.yaml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("/no/such/agent.yaml"), "{e}");
}

#[test]
fn broker_takes_one_url_or_a_list() {
    let one = with("broker: mqtt://a.example:1884\ninsecure-plaintext: true\n").unwrap();
    assert_eq!(one.broker, Broker::parse("mqtt://a.example:1884").unwrap());
    assert!(one.fallback_brokers.is_empty());
    assert_eq!(one.brokers().count(), 1);

    let list =
        with("broker: [mqtt://a:1883, mqtt://b, 'mqtt://[::1]:1885']\ninsecure-plaintext: true\n")
            .unwrap();
    assert_eq!(list.broker.host, "a");
    let urls: Vec<String> = list.brokers().map(Broker::url).collect();
    assert_eq!(
        urls,
        ["mqtt://a:1883", "mqtt://b:1883", "mqtt://[::1]:1885"]
    );

    // The block form, and a one-element list, are the same key.
    let block =
        with("broker:\n  - mqtt://a:1883\n  - mqtt://b:1883\ninsecure-plaintext: true\n").unwrap();
    assert_eq!(block.fallback_brokers.len(), 1);
    let single = with("broker: [mqtt://a:1883]\ninsecure-plaintext: true\n").unwrap();
    assert!(single.fallback_brokers.is_empty());

    // mqtts lists share the tls: block (its ca is required as for one URL).
    let tls = with("broker: [mqtts://a, mqtts://b:18883]\ntls: {ca: /ca.pem}\n").unwrap();
    assert!(tls.brokers().all(|b| b.tls));
    assert_eq!(tls.fallback_brokers[0].port, 18883);
    let e = with("broker: [mqtts://a, mqtts://b]\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("needs tls: {ca: FILE}"), "{e}");
}

#[test]
fn bad_broker_lists_name_the_problem() {
    for (value, what) in [
        ("[]", "an empty list"),
        ("[mqtt://a, mqtts://b]", "mixes mqtt:// and mqtts://"),
        ("[mqtts://a, mqtt://b]", "a failover must never drop TLS"),
        ("[mqtt://a, mqtt://a:1883]", "listed twice"),
        ("[mqtt://a, http://b]", "unknown scheme"),
        ("[mqtt://a, '']", "unknown scheme"),
        ("{url: mqtt://a}", "a broker URL or a list of broker URLs"),
        ("[mqtt://a, [mqtt://b]]", "expected a string"),
    ] {
        let e = with(&format!("broker: {value}\ntls: {{ca: /ca.pem}}\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(what), "broker: {value}: {e}");
    }
    let many: Vec<String> = (0..=BROKERS_MAX).map(|i| format!("mqtt://h{i}")).collect();
    let e = with(&format!("broker: [{}]\n", many.join(", ")))
        .unwrap_err()
        .to_string();
    assert!(e.contains(&format!("at most {BROKERS_MAX}")), "{e}");
    let fits = &many[..BROKERS_MAX];
    let c = with(&format!(
        "broker: [{}]\ninsecure-plaintext: true\n",
        fits.join(", ")
    ))
    .unwrap();
    assert_eq!(c.brokers().count(), BROKERS_MAX);
}

#[test]
fn command_line_brokers_replace_the_list() {
    let mut c = with("broker: [mqtt://a, mqtt://b]\ninsecure-plaintext: true\n").unwrap();
    c.set_brokers("mqtt://x:1, mqtt://y:2").unwrap();
    let urls: Vec<String> = c.brokers().map(Broker::url).collect();
    assert_eq!(urls, ["mqtt://x:1", "mqtt://y:2"]);
    c.set_brokers("mqtt://z:3").unwrap();
    assert_eq!(c.brokers().count(), 1);
    assert_eq!(c.broker.port, 3);
    let e = c.set_brokers("mqtts://z").unwrap_err().to_string();
    assert!(e.contains("config key tls"), "{e}");
    let e = c.set_brokers("mqtt://a,mqtts://b").unwrap_err().to_string();
    assert!(e.contains("mixes"), "{e}");
    // A refused list leaves the brokers as they were.
    assert_eq!(c.broker.port, 3);
}

#[test]
fn plaintext_to_a_non_loopback_host_is_refused_unless_insecure_plaintext() {
    for broker in [
        "mqtt://10.0.2.2:1883",
        "mqtt://broker.example",
        "[mqtt://127.0.0.1:1883, mqtt://192.168.1.5:1883]",
    ] {
        let e = with(&format!("broker: {broker}\n"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("config key broker: "), "{broker}: {e}");
        assert!(e.contains("which is not a loopback host"), "{broker}: {e}");
        assert!(e.contains("set insecure-plaintext: true"), "{broker}: {e}");
        let c = with(&format!("broker: {broker}\ninsecure-plaintext: true\n")).unwrap();
        assert!(c.insecure_plaintext);
    }
    let e = with("broker: mqtt://10.0.2.2:1883\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"10.0.2.2\""), "{e}");
    // Loopback and TLS need nothing.
    for broker in [
        "mqtt://localhost:1883",
        "mqtt://127.0.0.1:1",
        "'mqtt://[::1]:1883'",
        "[mqtt://127.0.0.1:1, mqtt://127.0.0.2:2]",
    ] {
        let c = with(&format!("broker: {broker}\n")).unwrap();
        assert!(!c.insecure_plaintext, "{broker}");
    }
    with("broker: mqtts://broker.example\ntls: {ca: /ca.pem}\n").unwrap();
    // --broker on the command line follows the same rule.
    let mut c = Config::parse(SEED).unwrap();
    let e = c
        .set_brokers("mqtt://10.1.1.1:1883")
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a loopback host"), "{e}");
    assert_eq!(c.broker.host, "localhost");
    c.insecure_plaintext = true;
    c.set_brokers("mqtt://10.1.1.1:1883").unwrap();
}

#[cfg(unix)]
#[test]
fn group_readable_password_and_key_files_are_refused_with_the_chmod() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    let key = dir.path().join("client.key");
    std::fs::write(&pw, "secret\n").unwrap();
    std::fs::write(&key, "key").unwrap();
    let config = dir.path().join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "{SEED}broker: mqtts://127.0.0.1:8883\ntls: {{ca: /ca.pem, cert: /c.pem, key: {}}}\n\
             username: dev\npassword-file: {}\n",
            key.display(),
            pw.display()
        ),
    )
    .unwrap();
    let set = |p: &Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    set(&pw, 0o640);
    set(&key, 0o600);
    let e = Config::load(&config).unwrap_err().to_string();
    assert!(e.starts_with("config key password-file: "), "{e}");
    assert!(e.contains("(mode 0640)"), "{e}");
    assert!(
        e.contains(&format!("run `chmod 600 {}`", pw.display())),
        "{e}"
    );
    set(&pw, 0o600);
    set(&key, 0o604);
    let e = Config::load(&config).unwrap_err().to_string();
    assert!(e.starts_with("config key tls.key: "), "{e}");
    assert!(
        e.contains(&format!("run `chmod 600 {}`", key.display())),
        "{e}"
    );
    set(&key, 0o400);
    let c = Config::load(&config).unwrap();
    // The MQTT client checks again when it reads the file.
    set(&pw, 0o644);
    let e = crate::daemon::mqtt::Session::new(&c, &c.broker, "ek-1", "down")
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(e.contains(&format!("chmod 600 {}", pw.display())), "{e}");
}

#[test]
fn svid_key_is_software_by_default_or_tpm() {
    let c = with("").unwrap();
    assert_eq!(c.svid_key, SvidKeyKind::Software);
    let c = with("svid-key: tpm\n").unwrap();
    assert_eq!(c.svid_key, SvidKeyKind::Tpm);
    assert_eq!(c.svid_key.as_str(), "tpm");
    let e = with("svid-key: hsm\n").unwrap_err().to_string();
    assert!(
        e.contains("svid-key") && e.contains("software (default), tpm"),
        "{e}"
    );
}

#[test]
fn log_format_is_text_by_default_or_json() {
    assert_eq!(Config::parse(SEED).unwrap().log_format, LogFormat::Text);
    assert_eq!(
        with("log-format: text\n").unwrap().log_format,
        LogFormat::Text
    );
    assert_eq!(
        with("log-format: json\n").unwrap().log_format,
        LogFormat::Json
    );
    let e = with("log-format: JSON\n").unwrap_err().to_string();
    assert!(e.contains("expected text or json"), "{e}");
}

#[test]
fn a_tab_in_the_indentation_is_named_with_its_line() {
    let e = with("retry:\n\tinitial: 1s\n").unwrap_err().to_string();
    assert!(
        e.contains("line 6: a tab in the indentation; YAML indents with spaces only"),
        "{e}"
    );
}

#[test]
fn the_kubernetes_example_parses() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/kubernetes/agent.yaml"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let c = Config::parse(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert!(c.broker.tls);
    assert_eq!(c.data_dir, std::path::PathBuf::from("/var/lib/ekattest"));
}
