//! `ekattestctl agent` on a real SQLite registry: what each command prints and its exit code.

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use super::*;
use crate::registry::sqlite::SqliteStore;
use crate::registry::{Accepted, Event, Outcome};

const EK: [u8; 32] = [0x5a; 32];

fn store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let mut s = SqliteStore::open(&dir.path().join("r.db")).unwrap();
    let accepted = |agent: &str, at| Event {
        at,
        agent: agent.into(),
        ek: Some(EK),
        outcome: Outcome::Accepted(Box::new(Accepted {
            spiffe_id: "spiffe://example.org/gw".into(),
            policy: "fleet".into(),
            attributes: vec![("tpm_ek.public_hash".into(), hex::encode(EK))],
            svid_serial: Some("1f".into()),
            svid_not_after: Some(at + 3600),
            svid_der: Vec::new(),
        })),
    };
    let refused = Event {
        at: 1_700_000_100,
        agent: "ek-other".into(),
        ek: Some([1; 32]),
        outcome: Outcome::Rejected {
            code: "ek_chain".into(),
            reason: "expired".into(),
        },
    };
    s.apply(
        "node-a",
        &[accepted("ek-5a", 1_700_000_000), refused],
        Duration::from_secs(60),
    )
    .unwrap();
    (dir, s)
}

fn run(s: &mut SqliteStore, op: Op, json: bool) -> (ExitCode, String) {
    let args = Args {
        registry: Registry::ServerConfig("/nonexistent".into()),
        op,
        json,
    };
    let mut out = Vec::new();
    let code = run_on(s, &args, SystemTime::now(), &mut out).unwrap();
    (code, String::from_utf8(out).unwrap())
}

#[test]
fn list_and_show_print_every_record_as_table_or_json() {
    let (_d, mut s) = store();
    let (code, text) = run(
        &mut s,
        Op::List {
            since: None,
            bans: false,
        },
        false,
    );
    assert_eq!(code, ExitCode::SUCCESS);
    assert!(
        text.contains(&hex::encode(EK)) && text.contains("ek-5a"),
        "{text}"
    );
    assert!(
        text.contains("ek_chain") && text.ends_with("2 devices\n"),
        "{text}"
    );
    let (_, json) = run(
        &mut s,
        Op::List {
            since: None,
            bans: false,
        },
        true,
    );
    assert_eq!(json.lines().count(), 2, "{json}");
    // --since counts from now: both events are from 2023.
    let (_, recent) = run(
        &mut s,
        Op::List {
            since: Some(Duration::from_secs(3600)),
            bans: false,
        },
        true,
    );
    assert_eq!(recent, "");
    let (code, shown) = run(&mut s, Op::Show("ek-5a".into()), true);
    assert_eq!(code, ExitCode::SUCCESS);
    let v: serde_json::Value = serde_json::from_str(shown.trim()).unwrap();
    assert_eq!(v["ek"], hex::encode(EK));
    assert_eq!(v["svid_serial"], "1f");
    let (code, text) = run(&mut s, Op::Show(hex::encode(EK).to_uppercase()), false);
    assert_eq!(code, ExitCode::SUCCESS);
    assert!(
        text.contains("last attested:   2023-11-14T22:13:20Z"),
        "{text}"
    );
    let (code, text) = run(&mut s, Op::Show("nobody".into()), false);
    assert_eq!(code, ExitCode::from(1));
    assert!(text.contains("\"nobody\""), "{text}");
}

#[test]
fn ban_unban_and_evict_report_what_they_did() {
    let (_d, mut s) = store();
    let target = BanTarget::Agent("ek-5a".into());
    let (code, text) = run(
        &mut s,
        Op::Ban {
            target: target.clone(),
            reason: "lost".into(),
        },
        false,
    );
    assert_eq!(code, ExitCode::SUCCESS);
    assert!(text.contains("banned agent id ek-5a"), "{text}");
    let (_, bans) = run(
        &mut s,
        Op::List {
            since: None,
            bans: true,
        },
        true,
    );
    let v: serde_json::Value = serde_json::from_str(bans.trim()).unwrap();
    assert_eq!(
        (v["kind"].as_str(), v["reason"].as_str()),
        (Some("agent"), Some("lost"))
    );
    assert_eq!(
        run(&mut s, Op::Unban(target.clone()), false).0,
        ExitCode::SUCCESS
    );
    assert_eq!(run(&mut s, Op::Unban(target), false).0, ExitCode::from(1));
    assert_eq!(run(&mut s, Op::Evict(EK), false).0, ExitCode::SUCCESS);
    assert_eq!(run(&mut s, Op::Evict(EK), false).0, ExitCode::from(1));
    // Evicted, but its audit line stays.
    let (_, audit) = run(&mut s, Op::Audit { since: None }, false);
    assert_eq!(audit.lines().count(), 2, "{audit}");
    assert!(audit.contains("\"outcome\":\"accepted\""), "{audit}");
}

#[test]
fn registry_urls_are_sqlite_or_postgres() {
    assert_eq!(
        backend_of("sqlite:/tmp/r.db", None).unwrap(),
        Backend::Sqlite("/tmp/r.db".into())
    );
    assert!(
        backend_of("mysql://x", None)
            .unwrap_err()
            .contains("sqlite:PATH or postgres://")
    );
    let e = backend_of("sqlite:/r.db", Some(&PathBuf::from("/p"))).unwrap_err();
    assert!(e.contains("--password-file"), "{e}");
    let e = backend_of("postgres://u@h/d", Some(&PathBuf::from("/nonexistent/pw"))).unwrap_err();
    assert!(e.contains("/nonexistent/pw"), "{e}");
}
