//! Unit tests of the daemons' config rendering and the log / metrics helpers (no binaries).

use std::path::PathBuf;
use std::time::Duration;

use serde_norway::Value;

use super::*;

fn key<'a>(doc: &'a Value, k: &str) -> &'a Value {
    doc.get(k)
        .unwrap_or_else(|| panic!("key {k} missing in {doc:?}"))
}

#[test]
fn server_yaml_has_every_set_key_and_nothing_else() {
    let mut s = ServerSpec::new(
        "mqtts://localhost:8883",
        "c-abc123",
        "node-1",
        "example.org",
        "/tmp/ca.pem",
        "/tmp/ca.key",
    );
    s.tls_ca = Some(PathBuf::from("/tmp/broker ca.pem"));
    s.username = Some("ekattest-server".into());
    s.password_file = Some(PathBuf::from("/tmp/pw"));
    s.policy_files = vec![PathBuf::from("/tmp/a.yaml"), PathBuf::from("/tmp/b.yaml")];
    s.session_ttl = Some(Duration::from_millis(1500));
    s.svid_ttl = Some(Duration::from_secs(600));
    s.metrics_address = Some("127.0.0.1:9999".into());
    s.reload_interval = Some(Duration::from_millis(200));
    s.log_level = Some("debug".into());
    s.workers = Some(3);
    s.max_sessions = Some(100);
    s.agent_id_from_ek = Some(false);
    s.policy_topic = true;
    s.policy_signers = vec![PathBuf::from("/tmp/signer.pub")];
    let doc: Value = serde_norway::from_str(&s.to_yaml().unwrap()).unwrap();
    assert_eq!(key(&doc, "broker").as_str(), Some("mqtts://localhost:8883"));
    assert_eq!(
        key(key(&doc, "tls"), "ca").as_str(),
        Some("/tmp/broker ca.pem")
    );
    assert_eq!(key(&doc, "username").as_str(), Some("ekattest-server"));
    assert_eq!(key(&doc, "password-file").as_str(), Some("/tmp/pw"));
    assert_eq!(key(&doc, "cluster-id").as_str(), Some("c-abc123"));
    assert_eq!(key(&doc, "node-id").as_str(), Some("node-1"));
    assert_eq!(key(&doc, "trust-domain").as_str(), Some("example.org"));
    assert_eq!(key(&doc, "ca-cert").as_str(), Some("/tmp/ca.pem"));
    assert_eq!(key(&doc, "ca-key").as_str(), Some("/tmp/ca.key"));
    assert_eq!(key(&doc, "session-ttl").as_str(), Some("1500ms"));
    assert_eq!(key(&doc, "svid-ttl").as_str(), Some("600s"));
    assert_eq!(
        key(&doc, "metrics-address").as_str(),
        Some("127.0.0.1:9999")
    );
    assert_eq!(key(&doc, "reload-interval").as_str(), Some("200ms"));
    assert_eq!(key(&doc, "log-level").as_str(), Some("debug"));
    assert_eq!(key(&doc, "workers").as_u64(), Some(3));
    assert_eq!(key(&doc, "max-sessions").as_u64(), Some(100));
    assert_eq!(key(&doc, "agent-id-from-ek").as_bool(), Some(false));
    let files: Vec<_> = key(&doc, "policy-files")
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(files, ["/tmp/a.yaml", "/tmp/b.yaml"]);
    assert_eq!(key(&doc, "policy-topic").as_bool(), Some(true));
    assert_eq!(
        key(&doc, "policy-signers").as_sequence().unwrap()[0].as_str(),
        Some("/tmp/signer.pub")
    );
    let keys = doc.as_mapping().unwrap().len();
    assert_eq!(keys, 20, "{doc:?}");
}

#[test]
fn server_yaml_leaves_unset_keys_out() {
    let s = ServerSpec::new("mqtt://127.0.0.1:1883", "c1", "n1", "td", "/c", "/k");
    let doc: Value = serde_norway::from_str(&s.to_yaml().unwrap()).unwrap();
    let mut keys: Vec<_> = doc
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "broker",
            "ca-cert",
            "ca-key",
            "cluster-id",
            "node-id",
            "trust-domain"
        ]
    );
}

#[test]
fn agent_yaml_starts_with_the_seed_keys() {
    let mut a = AgentSpec::new(
        "mqtt://127.0.0.1:1883",
        "c-xxxxxx",
        "swtpm:127.0.0.1:2321",
        "/tmp/bundle.pem",
        "/tmp/data",
    );
    a.agent_id = Some("ek-0123".into());
    a.retry_initial = Some(Duration::from_millis(100));
    a.retry_max = Some(Duration::from_secs(2));
    a.response_timeout = Some(Duration::from_secs(5));
    a.ek = Some("p256".into());
    a.log_level = Some("debug".into());
    let text = a.to_yaml().unwrap();
    // The seed's Linux installation keys come first, verbatim.
    assert!(
        text.starts_with(
            "cluster-id: c-xxxxxx\ndisable-kubernetes-attestation: true\nagent-attestors:\n- type: tpm_ek\n"
        ),
        "{text}"
    );
    let doc: Value = serde_norway::from_str(&text).unwrap();
    assert_eq!(key(&doc, "tpm").as_str(), Some("swtpm:127.0.0.1:2321"));
    assert_eq!(key(&doc, "ek").as_str(), Some("p256"));
    assert_eq!(key(&doc, "trust-bundle").as_str(), Some("/tmp/bundle.pem"));
    assert_eq!(key(&doc, "data-dir").as_str(), Some("/tmp/data"));
    assert_eq!(key(&doc, "agent-id").as_str(), Some("ek-0123"));
    assert_eq!(key(key(&doc, "retry"), "initial").as_str(), Some("100ms"));
    assert_eq!(key(key(&doc, "retry"), "max").as_str(), Some("2s"));
    assert_eq!(key(&doc, "response-timeout").as_str(), Some("5s"));
    assert!(doc.get("tls").is_none());
    assert!(doc.get("username").is_none());
    assert_eq!(key(&doc, "broker").as_str(), Some("mqtt://127.0.0.1:1883"));
}

#[test]
fn durations_render_in_the_daemons_syntax() {
    assert_eq!(duration(Duration::from_secs(90)), "90s");
    assert_eq!(duration(Duration::from_millis(250)), "250ms");
    assert_eq!(duration(Duration::from_micros(10)), "1ms");
}

#[test]
fn metric_value_matches_the_whole_series() {
    let text = "# HELP attestation_signer_proof x\n\
                # TYPE attestation_signer_proof counter\n\
                attestation_signer_proof{attestor_type=\"tpm_ek\",outcome=\"success\"} 3\n\
                attestation_signer_proof{attestor_type=\"tpm_ek\",outcome=\"failed\",reason=\"ek_not_trusted\"} 2\n\
                attestation_sessions_active 0\n";
    assert_eq!(
        metric_value(
            text,
            "attestation_signer_proof{attestor_type=\"tpm_ek\",outcome=\"success\"}"
        ),
        Some(3.0)
    );
    assert_eq!(
        metric_value(
            text,
            "attestation_signer_proof{attestor_type=\"tpm_ek\",outcome=\"failed\",reason=\"ek_not_trusted\"}"
        ),
        Some(2.0)
    );
    assert_eq!(metric_value(text, "attestation_sessions_active"), Some(0.0));
    // A prefix of a longer name is not that series.
    assert_eq!(metric_value(text, "attestation_sessions"), None);
}

#[test]
fn json_lines_skips_other_output() {
    let text = "plain text\n{\"msg\":\"a\",\"agentId\":\"ek-1\"}\n{broken\n{\"msg\":\"b\"}\n";
    let v = json_lines(text);
    assert_eq!(v.len(), 2);
    assert_eq!(v[0]["agentId"], "ek-1");
    assert_eq!(v[1]["msg"], "b");
}

#[test]
fn missing_binary_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let spec = AgentSpec::new("mqtt://127.0.0.1:1", "c1", "/dev/null", "/b", "/d");
    let err = AgentProcess::spawn(
        std::path::Path::new("/nonexistent/ekattest-agent"),
        &spec,
        dir.path(),
        true,
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(err.contains("cargo build -p ekattest-agent"), "{err}");
}

#[test]
fn http_get_reads_a_200_body_and_rejects_other_statuses() {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let t = std::thread::spawn(move || {
        for (i, conn) in l.incoming().take(2).enumerate() {
            let mut c = conn.unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 512];
            while !req.ends_with(b"\r\n\r\n") {
                let n = c.read(&mut buf).unwrap();
                assert!(n > 0, "request cut short: {req:?}");
                req.extend_from_slice(&buf[..n]);
            }
            assert!(String::from_utf8_lossy(&req).starts_with("GET /metrics HTTP/1.1\r\n"));
            let reply = if i == 0 {
                "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nup 1\nx 2\n"
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
            };
            c.write_all(reply.as_bytes()).unwrap();
        }
    });
    assert_eq!(http_get(&addr, "/metrics").unwrap(), "up 1\nx 2\n");
    let err = http_get(&addr, "/metrics").unwrap_err().to_string();
    assert!(err.contains("404"), "{err}");
    t.join().unwrap();
}
