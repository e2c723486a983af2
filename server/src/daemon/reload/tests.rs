use super::*;

fn doc(name: &str, hash_byte: u8) -> Vec<u8> {
    let hash = hex::encode([hash_byte; 32]);
    format!(
        "section: AgentAttestation\nschema: v1\nspec:\n  policies:\n  - name: {name}\n    \
         requiredAttestors:\n    - type: tpm_ek\n      config:\n        allowedHashes: [\"{hash}\"]\n"
    )
    .into_bytes()
}

const BAD_PEM: &[u8] =
    b"section: AgentAttestation\nschema: v1\nspec:\n  policies:\n  - name: p\n    \
requiredAttestors:\n    - type: tpm_ek\n      config:\n        caCerts: \"not pem\"\n";

fn one(label: &str, bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    vec![(label.to_owned(), bytes.to_vec())]
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[test]
fn valid_document_is_applied_with_its_hash() {
    let mut r = Reloader::new();
    let a = doc("a", 1);
    match r.consider(Source::Files, &one("a.yaml", &a)) {
        Decision::Applied { sha256, doc } => {
            assert_eq!(sha256, sha(&a));
            assert_eq!(doc.policies()[0].name, "a");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(r.in_force(), Some(sha(&a).as_str()));
}

#[test]
fn invalid_document_keeps_the_previous_one() {
    let mut r = Reloader::new();
    let a = doc("a", 1);
    assert!(matches!(
        r.consider(Source::Files, &one("a.yaml", &a)),
        Decision::Applied { .. }
    ));
    match r.consider(Source::Topic, &one("config topic", BAD_PEM)) {
        Decision::Invalid {
            sha256,
            error,
            previous,
        } => {
            assert_eq!(sha256, sha(BAD_PEM));
            assert_eq!(previous, Some(sha(&a)));
            let text = error.to_string();
            assert!(
                text.contains("caCerts: could not parse any PEM certificates"),
                "{text}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(r.in_force(), Some(sha(&a).as_str()));
}

#[test]
fn same_bytes_from_the_same_source_are_a_no_op() {
    let mut r = Reloader::new();
    let a = doc("a", 1);
    assert!(matches!(
        r.consider(Source::Topic, &one("t", &a)),
        Decision::Applied { .. }
    ));
    assert!(matches!(
        r.consider(Source::Topic, &one("t", &a)),
        Decision::Unchanged
    ));
    // An invalid document is also considered once only.
    assert!(matches!(
        r.consider(Source::Topic, &one("t", BAD_PEM)),
        Decision::Invalid { .. }
    ));
    assert!(matches!(
        r.consider(Source::Topic, &one("t", BAD_PEM)),
        Decision::Unchanged
    ));
}

#[test]
fn latest_applied_wins_whichever_source() {
    let mut r = Reloader::new();
    let (a, b, c) = (doc("a", 1), doc("b", 2), doc("c", 3));
    assert!(matches!(
        r.consider(Source::Files, &one("f", &a)),
        Decision::Applied { .. }
    ));
    assert!(matches!(
        r.consider(Source::Topic, &one("t", &b)),
        Decision::Applied { .. }
    ));
    assert_eq!(r.in_force(), Some(sha(&b).as_str()));
    // The retained topic document re-delivered after a reconnect does not undo a newer file.
    assert!(matches!(
        r.consider(Source::Files, &one("f", &c)),
        Decision::Applied { .. }
    ));
    assert!(matches!(
        r.consider(Source::Topic, &one("t", &b)),
        Decision::Unchanged
    ));
    assert_eq!(r.in_force(), Some(sha(&c).as_str()));
}

#[test]
fn several_files_are_merged_and_hashed_together() {
    let mut r = Reloader::new();
    let (a, b) = (doc("a", 1), doc("b", 2));
    let parts = vec![
        ("a.yaml".to_owned(), a.clone()),
        ("b.yaml".to_owned(), b.clone()),
    ];
    match r.consider(Source::Files, &parts) {
        Decision::Applied { sha256, doc } => {
            assert_eq!(sha256, sha(&[a, b].concat()));
            let names: Vec<&str> = doc.policies().iter().map(|p| p.name.as_str()).collect();
            assert_eq!(names, ["a", "b"]);
        }
        other => panic!("{other:?}"),
    }
    // The same policy name in two files is an error naming the second file.
    let dup = vec![
        ("a.yaml".to_owned(), doc("p", 1)),
        ("b.yaml".to_owned(), doc("p", 2)),
    ];
    match r.consider(Source::Files, &dup) {
        Decision::Invalid { error, .. } => {
            let text = error.to_string();
            assert!(
                text.starts_with("b.yaml: spec.policies[0].name: duplicate"),
                "{text}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn apply_installs_only_valid_documents() {
    let state = PolicyState::default();
    let metrics = Metrics::default();
    let mut r = Reloader::new();
    assert!(state.current().is_none());
    let d = r.consider(Source::Topic, &one("t", &doc("a", 1)));
    apply(&d, "t", &state, &metrics);
    let first = state.current().unwrap();
    let d = r.consider(Source::Topic, &one("t", BAD_PEM));
    apply(&d, "t", &state, &metrics);
    // The same Arc stays in force after an invalid document.
    assert!(Arc::ptr_eq(&first, &state.current().unwrap()));
    let text = metrics.render();
    assert!(text.contains("attestation_policy_reloads_total{result=\"applied\"} 1\n"));
    assert!(text.contains("attestation_policy_reloads_total{result=\"invalid\"} 1\n"));
}

#[test]
fn watcher_picks_up_file_changes_and_topic_payloads() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, doc("a", 1)).unwrap();
    let files = vec![file.clone()];
    let mut reloader = Reloader::new();
    let state = Arc::new(PolicyState::default());
    let metrics = Arc::new(Metrics::default());
    let d = reloader.consider(Source::Files, &read_files(&files).unwrap());
    apply(&d, "f", &state, &metrics);
    let inbox = Arc::new(Inbox::default());
    let thread = {
        let (inbox, state, metrics) =
            (Arc::clone(&inbox), Arc::clone(&state), Arc::clone(&metrics));
        std::thread::spawn(move || {
            watch(
                reloader,
                files,
                Duration::from_millis(50),
                inbox,
                state,
                metrics,
            );
        })
    };
    let wait_for = |name: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if state.current().unwrap().policies()[0].name == name {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("policy {name} never applied");
    };
    // A different size guarantees the (mtime, size) stamp changes.
    std::fs::write(&file, doc("bb", 2)).unwrap();
    wait_for("bb");
    inbox.put(doc("ccc", 3));
    wait_for("ccc");
    inbox.put(BAD_PEM.to_vec());
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(state.current().unwrap().policies()[0].name, "ccc");
    inbox.stop();
    thread.join().unwrap();
}
