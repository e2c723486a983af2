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

use crate::config::signed::SigningKey;

const NOW: u64 = 1_800_000_000;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// A reloader taking topic documents for cluster `c-1` signed by the returned key.
fn topic_reloader() -> (Reloader, SigningKey) {
    let (key, _) = SigningKey::generate().unwrap();
    let mut signers = Signers::new();
    signers.add_pem(key.public_pem().as_bytes()).unwrap();
    let r = Reloader::with_topic(TopicRules {
        cluster: "c-1".to_owned(),
        signers,
    });
    (r, key)
}

fn signed(key: &SigningKey, doc: &[u8], issued: u64) -> Vec<u8> {
    key.sign(doc, "c-1", issued).unwrap()
}

fn refused(d: &Decision) -> Option<DocumentRefusal> {
    match d {
        Decision::Refused { reason, .. } => Some(*reason),
        _ => None,
    }
}

#[test]
fn valid_document_is_applied_with_its_hash() {
    let mut r = Reloader::new();
    let a = doc("a", 1);
    match r.consider_files(&one("a.yaml", &a), None) {
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
    let (mut r, key) = topic_reloader();
    let a = doc("a", 1);
    assert!(matches!(
        r.consider_files(&one("a.yaml", &a), None),
        Decision::Applied { .. }
    ));
    match r.consider_topic(&signed(&key, BAD_PEM, NOW), at(NOW)) {
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
    let (mut r, key) = topic_reloader();
    let a = signed(&key, &doc("a", 1), NOW);
    assert!(matches!(
        r.consider_topic(&a, at(NOW)),
        Decision::Applied { .. }
    ));
    assert!(matches!(r.consider_topic(&a, at(NOW)), Decision::Unchanged));
    // An invalid document is also considered once only.
    let bad = signed(&key, BAD_PEM, NOW + 1);
    assert!(matches!(
        r.consider_topic(&bad, at(NOW)),
        Decision::Invalid { .. }
    ));
    assert!(matches!(
        r.consider_topic(&bad, at(NOW)),
        Decision::Unchanged
    ));
}

#[test]
fn latest_applied_wins_whichever_source() {
    let (mut r, key) = topic_reloader();
    let (a, b, c) = (doc("a", 1), doc("b", 2), doc("c", 3));
    let signed_b = signed(&key, &b, NOW);
    assert!(matches!(
        r.consider_files(&one("f", &a), None),
        Decision::Applied { .. }
    ));
    assert!(matches!(
        r.consider_topic(&signed_b, at(NOW)),
        Decision::Applied { .. }
    ));
    // The log and in_force name the document's hash, not the envelope's.
    assert_eq!(r.in_force(), Some(sha(&b).as_str()));
    // The retained topic document re-delivered after a reconnect does not undo a newer file.
    assert!(matches!(
        r.consider_files(&one("f", &c), None),
        Decision::Applied { .. }
    ));
    assert!(matches!(
        r.consider_topic(&signed_b, at(NOW)),
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
    match r.consider_files(&parts, None) {
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
    match r.consider_files(&dup, None) {
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
    let (mut r, key) = topic_reloader();
    assert!(state.current().is_none());
    let d = r.consider_topic(&signed(&key, &doc("a", 1), NOW), at(NOW));
    apply(&d, "t", &state, &metrics);
    let first = state.current().unwrap();
    let d = r.consider_topic(&signed(&key, BAD_PEM, NOW), at(NOW));
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
    let (mut reloader, key) = topic_reloader();
    let state = Arc::new(PolicyState::default());
    let metrics = Arc::new(Metrics::default());
    let d = reloader.consider_files(&read_files(&files).unwrap(), newest_modification(&files));
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
    // Signed after the file edit (the next second at the earliest).
    let later = newest_modification(std::slice::from_ref(&file))
        .unwrap()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 1;
    inbox.put(signed(&key, &doc("ccc", 3), later));
    wait_for("ccc");
    inbox.put(doc("dddd", 4));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(state.current().unwrap().policies()[0].name, "ccc");
    inbox.put(signed(&key, BAD_PEM, later));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(state.current().unwrap().policies()[0].name, "ccc");
    inbox.stop();
    thread.join().unwrap();
}

#[test]
fn unsigned_wrongly_signed_and_other_cluster_documents_are_refused() {
    let (mut r, key) = topic_reloader();
    let a = doc("a", 1);
    assert!(matches!(
        r.consider_files(&one("f", &a), None),
        Decision::Applied { .. }
    ));
    let (other, _) = SigningKey::generate().unwrap();
    let tampered = String::from_utf8(signed(&key, &doc("b", 2), NOW))
        .unwrap()
        .replace("name: b", "name: x")
        .into_bytes();
    let cases = [
        (doc("b", 2), DocumentRefusal::Unsigned),
        (
            signed(&other, &doc("b", 2), NOW),
            DocumentRefusal::UnknownSigner,
        ),
        (tampered, DocumentRefusal::BadSignature),
        (
            key.sign(&doc("b", 2), "c-2", NOW).unwrap(),
            DocumentRefusal::WrongCluster,
        ),
        (
            [
                doc("b", 2),
                b"# -----BEGIN EKATTEST POLICY SIGNATURE-----\n".to_vec(),
            ]
            .concat(),
            DocumentRefusal::Malformed,
        ),
        (
            signed(&key, &doc("b", 2), NOW + MAX_CLOCK_SKEW.as_secs() + 1),
            DocumentRefusal::Future,
        ),
    ];
    for (payload, want) in cases {
        let d = r.consider_topic(&payload, at(NOW));
        assert_eq!(refused(&d), Some(want), "{d:?}");
        if let Decision::Refused { previous, .. } = d {
            assert_eq!(previous, Some(sha(&a)));
        }
        assert_eq!(r.in_force(), Some(sha(&a).as_str()));
    }
}

#[test]
fn policy_topic_false_refuses_even_signed_documents() {
    let (_, key) = topic_reloader();
    let mut r = Reloader::new();
    let d = r.consider_topic(&signed(&key, &doc("a", 1), NOW), at(NOW));
    assert_eq!(refused(&d), Some(DocumentRefusal::Unsigned));
    assert_eq!(r.in_force(), None);
}

#[test]
fn an_older_topic_document_cannot_roll_back_a_newer_one() {
    let (mut r, key) = topic_reloader();
    let old = signed(&key, &doc("old", 1), NOW - 100);
    let new = signed(&key, &doc("new", 2), NOW - 10);
    assert!(matches!(
        r.consider_topic(&new, at(NOW)),
        Decision::Applied { .. }
    ));
    let d = r.consider_topic(&old, at(NOW));
    assert_eq!(refused(&d), Some(DocumentRefusal::Stale));
    assert_eq!(r.in_force(), Some(sha(&doc("new", 2)).as_str()));
    // A document issued in the same second as the one in force is not older.
    let same = signed(&key, &doc("same", 3), NOW - 10);
    assert!(matches!(
        r.consider_topic(&same, at(NOW)),
        Decision::Applied { .. }
    ));
}

#[test]
fn a_topic_document_never_overrides_files_changed_later() {
    let (mut r, key) = topic_reloader();
    let file_doc = doc("file", 1);
    // Files edited at NOW - 50 (as after a restart that reads them first).
    assert!(matches!(
        r.consider_files(&one("f", &file_doc), Some(at(NOW - 50))),
        Decision::Applied { .. }
    ));
    for issued in [NOW - 100, NOW - 50] {
        let d = r.consider_topic(&signed(&key, &doc("topic", 2), issued), at(NOW));
        assert_eq!(
            refused(&d),
            Some(DocumentRefusal::OlderThanFiles),
            "{issued}"
        );
        if let Decision::Refused { message, .. } = &d {
            assert!(
                message.contains("not newer than the policy files"),
                "{message}"
            );
        }
    }
    assert_eq!(r.in_force(), Some(sha(&file_doc).as_str()));
    // Signed after the edit: applied.
    let d = r.consider_topic(&signed(&key, &doc("topic", 2), NOW - 49), at(NOW));
    assert!(matches!(d, Decision::Applied { .. }), "{d:?}");
    // A later file edit wins again.
    let edited = doc("edited", 3);
    assert!(matches!(
        r.consider_files(&one("f", &edited), Some(at(NOW))),
        Decision::Applied { .. }
    ));
    assert_eq!(r.in_force(), Some(sha(&edited).as_str()));
}

#[test]
fn refusals_are_logged_counted_and_keep_the_document() {
    let state = PolicyState::default();
    let metrics = Metrics::default();
    let (mut r, _key) = topic_reloader();
    let d = r.consider_files(&one("f", &doc("a", 1)), None);
    apply(&d, "f", &state, &metrics);
    let first = state.current().unwrap();
    let d = r.consider_topic(&doc("b", 2), at(NOW));
    apply(&d, "config topic", &state, &metrics);
    assert!(Arc::ptr_eq(&first, &state.current().unwrap()));
    let text = metrics.render();
    assert!(
        text.contains("attestation_policy_documents_refused_total{reason=\"unsigned\"} 1\n"),
        "{text}"
    );
    assert!(text.contains("attestation_policy_documents_refused_total{reason=\"stale\"} 0\n"));
    assert!(text.contains("attestation_policy_reloads_total{result=\"invalid\"} 0\n"));
}

#[test]
fn rescan_wakes_the_reload_thread_once_and_keeps_a_payload() {
    let inbox = Inbox::default();
    inbox.put(b"doc".to_vec());
    inbox.rescan();
    let wake = inbox.wait(Duration::ZERO).unwrap();
    assert!(wake.rescan);
    assert_eq!(wake.payload.as_deref(), Some(&b"doc"[..]));
    let wake = inbox.wait(Duration::ZERO).unwrap();
    assert!(!wake.rescan && wake.payload.is_none());
    // A rescan wakes a waiting thread before its timeout.
    let inbox = Arc::new(Inbox::default());
    let waker = Arc::clone(&inbox);
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        waker.rescan();
    });
    let started = std::time::Instant::now();
    assert!(inbox.wait(Duration::from_secs(30)).unwrap().rescan);
    assert!(started.elapsed() < Duration::from_secs(10));
    t.join().unwrap();
    inbox.stop();
    assert!(inbox.wait(Duration::ZERO).is_err());
}

#[test]
fn an_empty_retained_message_clears_the_topic_and_keeps_the_document_in_force() {
    let (mut r, key) = topic_reloader();
    let a = signed(&key, &doc("a", 1), NOW);
    let applied = match r.consider_topic(&a, at(NOW)) {
        Decision::Applied { sha256, .. } => sha256,
        other => panic!("{other:?}"),
    };
    match r.consider_topic(&[], at(NOW)) {
        Decision::Cleared { previous } => assert_eq!(previous.as_deref(), Some(applied.as_str())),
        other => panic!("{other:?}"),
    }
    assert_eq!(r.in_force(), Some(applied.as_str()));
    // The same document published again after the clear is in force already.
    assert!(matches!(r.consider_topic(&a, at(NOW)), Decision::Unchanged));
}
