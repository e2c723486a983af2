use super::*;

/// Value of the series `name{labels}` (exact line match) in `text`.
fn value(text: &str, series: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ').map(str::to_owned))
}

#[test]
fn every_series_is_registered_at_zero() {
    let text = Metrics::default().render();
    assert_eq!(
        value(
            &text,
            "attestation_signer_proof{attestor_type=\"tpm_ek\",outcome=\"success\"}"
        )
        .as_deref(),
        Some("0")
    );
    for code in RejectCode::ALL {
        let series = format!(
            "attestation_signer_proof{{attestor_type=\"tpm_ek\",outcome=\"failed\",reason=\"{}\"}}",
            reason_label(*code)
        );
        assert_eq!(value(&text, &series).as_deref(), Some("0"), "{series}");
    }
    for direction in ["in", "out"] {
        let series = format!("attestation_frame_bytes_total{{direction=\"{direction}\"}}");
        assert_eq!(value(&text, &series).as_deref(), Some("0"), "{series}");
    }
    for reason in [
        "malformed",
        "oversize",
        "unknown_topic",
        "busy",
        "rate_limited",
    ] {
        let series = format!("attestation_frames_rejected_total{{reason=\"{reason}\"}}");
        assert_eq!(value(&text, &series).as_deref(), Some("0"), "{series}");
    }
    for name in [
        "attestation_signer_proof",
        "attestation_sessions_active",
        "attestation_logins_total",
        "attestation_frames_rejected_total",
        "attestation_login_duration_seconds",
        "attestation_answer_duration_seconds",
        "attestation_policy_reloads_total",
        "attestation_frame_bytes_total",
    ] {
        assert_eq!(
            text.matches(&format!("# HELP {name} ")).count(),
            1,
            "{name}"
        );
        assert_eq!(
            text.matches(&format!("# TYPE {name} ")).count(),
            1,
            "{name}"
        );
    }
}

#[test]
fn reason_labels_are_distinct_snake_case() {
    let mut seen = std::collections::HashSet::new();
    for code in RejectCode::ALL {
        let l = reason_label(*code);
        assert!(
            l.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "{l}"
        );
        assert!(seen.insert(l), "{l} twice");
    }
}

#[test]
fn renders_exact_text_for_a_known_state() {
    let m = Metrics::default();
    m.proof_succeeded();
    m.proof_succeeded();
    m.proof_failed(RejectCode::EkNotTrusted);
    m.proof_failed(RejectCode::ProofOfPossession);
    m.login_received();
    m.login_received();
    m.login_received();
    m.frame_rejected(FrameRejection::Malformed);
    m.frame_rejected(FrameRejection::Busy);
    m.set_sessions_active(7);
    m.policy_reload(true);
    m.policy_reload(false);
    m.document_refused(DocumentRefusal::BadSignature);
    m.document_refused(DocumentRefusal::OlderThanFiles);
    m.document_refused(DocumentRefusal::BadSignature);
    m.policy_reload(true);
    m.frame_received(120);
    m.frame_received(1500);
    m.frame_published(700);
    m.login_duration.observe(Duration::from_micros(50));
    m.svid_issued(false);
    m.set_broker_connected(true);
    m.login_duration.observe(Duration::from_millis(3));
    m.login_duration.observe(Duration::from_secs(2));
    let text = m.render();
    let expected_head = "\
# HELP attestation_signer_proof Attestation proofs checked by this server, by outcome.
# TYPE attestation_signer_proof counter
attestation_signer_proof{attestor_type=\"tpm_ek\",outcome=\"success\"} 2
attestation_signer_proof{attestor_type=\"tpm_ek\",outcome=\"failed\",reason=\"no_matching_policy\"} 0
attestation_signer_proof{attestor_type=\"tpm_ek\",outcome=\"failed\",reason=\"ek_not_trusted\"} 1
";
    assert!(text.starts_with(expected_head), "{text}");
    let expected_tail = "\
attestation_signer_proof{attestor_type=\"tpm_ek\",outcome=\"failed\",reason=\"proof_of_possession\"} 1
attestation_signer_proof{attestor_type=\"tpm_ek\",outcome=\"failed\",reason=\"agent_id_mismatch\"} 0
attestation_signer_proof{attestor_type=\"tpm_ek\",outcome=\"failed\",reason=\"key_certification\"} 0
attestation_signer_proof{attestor_type=\"tpm_ek\",outcome=\"failed\",reason=\"banned\"} 0
# HELP attestation_svids_issued_total X.509-SVIDs issued, by where the key lives (tpm: certified by the AK).
# TYPE attestation_svids_issued_total counter
attestation_svids_issued_total{key=\"software\"} 1
attestation_svids_issued_total{key=\"tpm\"} 0
# HELP ekattest_build_info The running ekattest-server's version and git commit (value 1).
# TYPE ekattest_build_info gauge
ekattest_build_info{version=\"0.1.0\",commit=\"{COMMIT}\"} 1
# HELP attestation_broker_connected 1 while connected to the broker (MQTT or NATS), else 0.
# TYPE attestation_broker_connected gauge
attestation_broker_connected 1
# HELP attestation_sessions_active Challenge sessions pending on this node.
# TYPE attestation_sessions_active gauge
attestation_sessions_active 7
# HELP attestation_logins_total Login messages received.
# TYPE attestation_logins_total counter
attestation_logins_total 3
# HELP attestation_frames_rejected_total Frames refused before attestation, by reason.
# TYPE attestation_frames_rejected_total counter
attestation_frames_rejected_total{reason=\"malformed\"} 1
attestation_frames_rejected_total{reason=\"oversize\"} 0
attestation_frames_rejected_total{reason=\"unknown_topic\"} 0
attestation_frames_rejected_total{reason=\"busy\"} 1
attestation_frames_rejected_total{reason=\"rate_limited\"} 0
# HELP attestation_login_duration_seconds Server time to process a Login, seconds.
# TYPE attestation_login_duration_seconds histogram
attestation_login_duration_seconds_bucket{le=\"0.0001\"} 1
attestation_login_duration_seconds_bucket{le=\"0.00025\"} 1
attestation_login_duration_seconds_bucket{le=\"0.0005\"} 1
attestation_login_duration_seconds_bucket{le=\"0.001\"} 1
attestation_login_duration_seconds_bucket{le=\"0.0025\"} 1
attestation_login_duration_seconds_bucket{le=\"0.005\"} 2
attestation_login_duration_seconds_bucket{le=\"0.01\"} 2
attestation_login_duration_seconds_bucket{le=\"0.025\"} 2
attestation_login_duration_seconds_bucket{le=\"0.05\"} 2
attestation_login_duration_seconds_bucket{le=\"0.1\"} 2
attestation_login_duration_seconds_bucket{le=\"0.25\"} 2
attestation_login_duration_seconds_bucket{le=\"0.5\"} 2
attestation_login_duration_seconds_bucket{le=\"1\"} 2
attestation_login_duration_seconds_bucket{le=\"+Inf\"} 3
attestation_login_duration_seconds_sum 2.00305
attestation_login_duration_seconds_count 3
# HELP attestation_answer_duration_seconds Server time to process an Answer, seconds.
# TYPE attestation_answer_duration_seconds histogram
";
    let expected_tail = expected_tail.replace("{COMMIT}", env!("EKATTEST_GIT_COMMIT"));
    assert!(text.contains(&expected_tail), "{text}");
    assert!(text.ends_with(
        "attestation_answer_duration_seconds_sum 0
attestation_answer_duration_seconds_count 0
# HELP attestation_policy_reloads_total Policy documents considered, by result.
# TYPE attestation_policy_reloads_total counter
attestation_policy_reloads_total{result=\"applied\"} 2
attestation_policy_reloads_total{result=\"invalid\"} 1
# HELP attestation_policy_documents_refused_total Config-topic policy documents refused before parsing (signature, cluster, ordering), by reason.
# TYPE attestation_policy_documents_refused_total counter
attestation_policy_documents_refused_total{reason=\"unsigned\"} 0
attestation_policy_documents_refused_total{reason=\"malformed\"} 0
attestation_policy_documents_refused_total{reason=\"wrong_cluster\"} 0
attestation_policy_documents_refused_total{reason=\"unknown_signer\"} 0
attestation_policy_documents_refused_total{reason=\"bad_signature\"} 2
attestation_policy_documents_refused_total{reason=\"stale\"} 0
attestation_policy_documents_refused_total{reason=\"older_than_files\"} 1
attestation_policy_documents_refused_total{reason=\"future\"} 0
# HELP attestation_frame_bytes_total Payload bytes of frames received (in) and published (out).
# TYPE attestation_frame_bytes_total counter
attestation_frame_bytes_total{direction=\"in\"} 1620
attestation_frame_bytes_total{direction=\"out\"} 700
# HELP attestation_registry_events_written_total Attestation outcomes written to the registry.
# TYPE attestation_registry_events_written_total counter
attestation_registry_events_written_total 0
# HELP attestation_registry_events_dropped_total Attestation outcomes dropped because the registry queue (queue-max) was full.
# TYPE attestation_registry_events_dropped_total counter
attestation_registry_events_dropped_total 0
# HELP attestation_registry_write_failures_total Registry batches that failed to write (kept and retried).
# TYPE attestation_registry_write_failures_total counter
attestation_registry_write_failures_total 0
# HELP attestation_registry_queue Attestation outcomes waiting to be written to the registry.
# TYPE attestation_registry_queue gauge
attestation_registry_queue 0
# HELP attestation_ek_agent_id_conflicts_total EKs accepted under a second agent id within registry.duplicate-window.
# TYPE attestation_ek_agent_id_conflicts_total counter
attestation_ek_agent_id_conflicts_total 0
# HELP attestation_bans Bans (EKs and agent ids) in force on this node.
# TYPE attestation_bans gauge
attestation_bans 0
"
    ));
}

#[test]
fn route_serves_metrics_and_refuses_the_rest() {
    let m = Metrics::default();
    m.login_received();
    let ok = String::from_utf8(route(b"GET /metrics HTTP/1.1\r\nHost: x", &m)).unwrap();
    assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
    assert!(ok.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
    let (head, body) = ok.split_once("\r\n\r\n").unwrap();
    assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())));
    assert!(body.contains("attestation_logins_total 1\n"));
    let q = String::from_utf8(route(b"GET /metrics?x=1 HTTP/1.1", &m)).unwrap();
    assert!(q.starts_with("HTTP/1.1 200 OK"));
    let nf = String::from_utf8(route(b"GET / HTTP/1.1", &m)).unwrap();
    assert!(nf.starts_with("HTTP/1.1 404 Not Found\r\n"), "{nf}");
    let post = String::from_utf8(route(b"POST /metrics HTTP/1.1", &m)).unwrap();
    assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
    let bad = String::from_utf8(route(b"\xff", &m)).unwrap();
    assert!(bad.starts_with("HTTP/1.1 400 "), "{bad}");
}

async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    // The server may answer (and close) before the whole request is written.
    let _ = s.write_all(request).await;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn http_endpoint_over_tcp() {
    let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = Arc::new(Metrics::default());
    metrics.proof_succeeded();
    let server = tokio::spawn(serve(listener, Arc::clone(&metrics)));

    let ok = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
    assert!(
        ok.contains("attestation_signer_proof{attestor_type=\"tpm_ek\",outcome=\"success\"} 1\n")
    );
    let nf = exchange(addr, b"GET /other HTTP/1.0\r\n\r\n").await;
    assert!(nf.starts_with("HTTP/1.1 404 "), "{nf}");
    // A request head that never ends within REQUEST_MAX bytes is refused, not buffered.
    let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    huge.resize(REQUEST_MAX * 4, b'a');
    let big = exchange(addr, &huge).await;
    assert!(big.starts_with("HTTP/1.1 431 "), "{big}");
    // The server still works afterwards.
    let again = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
    assert!(again.starts_with("HTTP/1.1 200 OK"));
    server.abort();
}

#[test]
fn every_frame_rejection_has_its_own_label() {
    let m = Metrics::default();
    for (i, why) in FrameRejection::ALL.iter().enumerate() {
        for _ in 0..=i {
            m.frame_rejected(*why);
        }
    }
    let text = m.render();
    let mut labels = std::collections::HashSet::new();
    for (i, why) in FrameRejection::ALL.iter().enumerate() {
        assert!(labels.insert(why.as_str()), "{} used twice", why.as_str());
        let series = format!(
            "attestation_frames_rejected_total{{reason=\"{}\"}}",
            why.as_str()
        );
        assert_eq!(value(&text, &series), Some((i + 1).to_string()), "{series}");
    }
    let mut codes = std::collections::HashSet::new();
    for code in RejectCode::ALL {
        assert!(codes.insert(reason_label(*code)), "{code:?} shares a label");
    }
}

#[test]
fn every_document_refusal_has_its_own_label() {
    let m = Metrics::default();
    for (i, why) in DocumentRefusal::ALL.iter().enumerate() {
        for _ in 0..=i {
            m.document_refused(*why);
        }
    }
    let text = m.render();
    let mut labels = std::collections::HashSet::new();
    for (i, why) in DocumentRefusal::ALL.iter().enumerate() {
        assert!(labels.insert(why.as_str()), "{} used twice", why.as_str());
        let series = format!(
            "attestation_policy_documents_refused_total{{reason=\"{}\"}}",
            why.as_str()
        );
        assert_eq!(value(&text, &series), Some((i + 1).to_string()), "{series}");
    }
}

#[test]
fn healthz_always_and_readyz_once_connected_with_a_policy() {
    let m = Metrics::default();
    let get = |path: &str| {
        let r = route(format!("GET {path} HTTP/1.1\r\nHost: x").as_bytes(), &m);
        String::from_utf8(r).unwrap()
    };
    assert!(get("/healthz").starts_with("HTTP/1.1 200 OK"));
    let r = get("/readyz");
    assert!(r.starts_with("HTTP/1.1 503"), "{r}");
    assert!(
        r.ends_with("not ready: not connected to the broker; no policy document in force\n"),
        "{r}"
    );
    m.set_broker_connected(true);
    let r = get("/readyz");
    assert!(
        r.ends_with("not ready: no policy document in force\n"),
        "{r}"
    );
    m.set_policy_loaded();
    assert!(get("/readyz").starts_with("HTTP/1.1 200 OK"));
    m.set_broker_connected(false);
    assert!(get("/readyz").starts_with("HTTP/1.1 503"));
    assert!(get("/nope").contains("/healthz or /readyz"));
}
