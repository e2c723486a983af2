//! Unit tests of the schema's pure parts: which migration runs next, the version row, and
//! the mapping between records and rows.

use std::time::Duration;

use super::*;
use crate::registry::Accepted;

const DB: &str = "test.db";
const DAY: Duration = Duration::from_secs(86_400);

fn accepted(ek: EkHash, agent: &str, at: UnixSeconds) -> Event {
    Event {
        at,
        agent: agent.into(),
        ek: Some(ek),
        outcome: Outcome::Accepted(Box::new(Accepted {
            spiffe_id: format!("spiffe://example.org/{agent}"),
            policy: "fleet".into(),
            attributes: vec![
                ("tpm_ek.public_hash".into(), hex::encode(ek)),
                (
                    "tpm_ek.manufacturer".into(),
                    "id:49465800 \"quoted\", [x]".into(),
                ),
            ],
            svid_serial: Some("0a1b".into()),
            svid_not_after: Some(at + 3600),
            svid_der: Vec::new(),
        })),
    }
}

fn rejected(ek: Option<EkHash>, agent: &str, at: UnixSeconds) -> Event {
    Event {
        at,
        agent: agent.into(),
        ek,
        outcome: Outcome::Rejected {
            code: "banned".into(),
            reason: "EK is banned".into(),
        },
    }
}

#[test]
fn migrations_are_numbered_one_to_latest_in_order() {
    let versions: Vec<i64> = MIGRATIONS.iter().map(|m| m.version).collect();
    let expected: Vec<i64> = (1..=LATEST).collect();
    assert_eq!(versions, expected);
    for m in MIGRATIONS {
        assert!(!m.sqlite.trim().is_empty() && !m.postgres.trim().is_empty());
    }
}

#[test]
fn an_empty_database_runs_every_step_in_order_then_stops() {
    let mut found = stored_version(DB, &[]).unwrap();
    assert_eq!(found, 0);
    let mut ran = Vec::new();
    while let Some(step) = next_step(DB, found, LATEST).unwrap() {
        assert_eq!(step.version, found + 1, "one step at a time");
        ran.push(step.version);
        found = step.version;
    }
    assert_eq!(ran, [1, 2]);
    assert_eq!(next_step(DB, LATEST, LATEST).unwrap(), None);
}

#[test]
fn a_version_one_database_gets_only_the_audit_step() {
    let step = next_step(DB, 1, LATEST).unwrap().unwrap();
    assert_eq!(step.version, 2);
    assert!(step.sqlite.contains("CREATE TABLE audit"));
    assert!(step.postgres.contains("BIGSERIAL"));
    assert!(
        !step.sqlite.contains("devices"),
        "step 2 must not touch step 1's tables"
    );
}

#[test]
fn migrating_to_an_older_target_never_downgrades() {
    assert_eq!(next_step(DB, 2, 1).unwrap(), None);
    assert_eq!(next_step(DB, 0, 1).unwrap().map(|m| m.version), Some(1));
}

#[test]
fn a_newer_database_is_refused_naming_both_versions() {
    let err = next_step(DB, LATEST + 1, LATEST).unwrap_err();
    assert!(
        matches!(err, StoreError::TooNew { found, supported, .. } if found == LATEST + 1 && supported == LATEST),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("test.db"), "{text}");
    assert!(
        text.contains(&format!("schema version {}", LATEST + 1)),
        "{text}"
    );
    assert!(text.contains(&format!("this server's {LATEST}")), "{text}");
    // Even when only asked for version 1: the database is not ours to read.
    assert!(matches!(
        next_step(DB, LATEST + 1, 1),
        Err(StoreError::TooNew { .. })
    ));
}

#[test]
fn an_unknown_target_is_an_error_not_a_silent_no_op() {
    for target in [0, -1, LATEST + 1] {
        let err = next_step(DB, 0, target).unwrap_err();
        assert!(matches!(err, StoreError::Open { .. }), "{target}: {err:?}");
        assert!(err.to_string().contains(&target.to_string()));
    }
}

#[test]
fn the_version_row_must_be_single_and_not_negative() {
    assert_eq!(stored_version(DB, &[2]).unwrap(), 2);
    assert!(matches!(
        stored_version(DB, &[1, 2]),
        Err(StoreError::Corrupt { .. })
    ));
    assert!(matches!(
        stored_version(DB, &[-1]),
        Err(StoreError::Corrupt { .. })
    ));
}

#[test]
fn a_record_survives_the_row_round_trip_field_for_field() {
    let ek = [0xab; 32];
    let mut record = Record::new(ek);
    record.apply(&rejected(Some(ek), "a", 50), "n0", DAY);
    record.apply(&accepted(ek, "a", 100), "n1", DAY);
    record.apply(&accepted(ek, "b\"\\/é", 200), "n2", DAY);
    let row = DeviceRow::from_record(DB, &record).unwrap();
    assert_eq!(row.ek, "ab".repeat(32), "lowercase hex");
    assert_eq!(row.agent_ids, r#"["a","b\"\\/é"]"#);
    assert!(
        row.attributes.starts_with(r#"[["tpm_ek.public_hash",""#),
        "{}",
        row.attributes
    );
    assert_eq!(row.count, 2);
    assert_eq!(
        (row.failure_code.as_deref(), row.failure_at),
        (Some("banned"), Some(50))
    );
    assert_eq!(row.clone().into_record(DB).unwrap(), record);
}

#[test]
fn a_new_record_maps_to_empty_lists_and_nulls() {
    let row = DeviceRow::from_record(DB, &Record::new([1; 32])).unwrap();
    assert_eq!(
        (row.agent_ids.as_str(), row.attributes.as_str()),
        ("[]", "[]")
    );
    assert_eq!(
        (row.count, row.failure_code.as_deref(), row.last_attested),
        (0, None, None)
    );
    assert_eq!(row.into_record(DB).unwrap(), Record::new([1; 32]));
}

#[test]
fn damaged_rows_are_corrupt_naming_the_value() {
    let good = DeviceRow::from_record(DB, &Record::new([1; 32])).unwrap();
    let cases: Vec<(DeviceRow, &str)> = vec![
        (
            DeviceRow {
                ek: "xyz".into(),
                ..good.clone()
            },
            "ek",
        ),
        (
            DeviceRow {
                agent_ids: "not json".into(),
                ..good.clone()
            },
            "agent_ids",
        ),
        (
            DeviceRow {
                attributes: r#"[["only-a-name"]]"#.into(),
                ..good.clone()
            },
            "attributes",
        ),
        (
            DeviceRow {
                count: -1,
                ..good.clone()
            },
            "count",
        ),
        (
            DeviceRow {
                failure_code: Some("x".into()),
                ..good.clone()
            },
            "last failure",
        ),
    ];
    for (row, what) in cases {
        let err = row.into_record(DB).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{what}: {err:?}");
        assert!(err.to_string().contains(what), "{what}: {err}");
    }
}

#[test]
fn audit_rows_keep_what_each_outcome_has() {
    let ek = [3; 32];
    let a = accepted(ek, "dev", 10);
    let row = AuditRow::of(&a);
    assert_eq!((row.outcome, row.code, row.reason), (ACCEPTED, None, None));
    assert_eq!(row.spiffe_id, Some("spiffe://example.org/dev"));
    assert_eq!(row.ek, Some(hex::encode(ek)));
    let r = rejected(None, "dev", 11);
    let row = AuditRow::of(&r);
    assert_eq!(
        (row.outcome, row.code, row.reason, row.spiffe_id, row.ek),
        (REJECTED, Some("banned"), Some("EK is banned"), None, None)
    );
}

#[test]
fn batches_group_by_ek_ascending_keep_event_order_and_skip_unknown_eks() {
    let (low, high) = ([1; 32], [2; 32]);
    let events = vec![
        accepted(high, "h1", 1),
        rejected(None, "no-ek", 2),
        accepted(low, "l1", 3),
        accepted(high, "h2", 4),
    ];
    let groups = by_ek(&events);
    let shape: Vec<(EkHash, Vec<&str>)> = groups
        .iter()
        .map(|(ek, es)| (*ek, es.iter().map(|e| e.agent.as_str()).collect()))
        .collect();
    assert_eq!(shape, vec![(low, vec!["l1"]), (high, vec!["h1", "h2"])]);
}

#[test]
fn folding_continues_the_stored_record_and_reports_each_conflict() {
    let ek = [9; 32];
    let mut stored = Record::new(ek);
    stored.apply(&accepted(ek, "old", 100), "n0", DAY);
    let events = [accepted(ek, "new", 200), accepted(ek, "old", 300)];
    let refs: Vec<&Event> = events.iter().collect();
    let mut conflicts = Vec::new();
    let r = fold(Some(stored), ek, &refs, "n1", DAY, &mut conflicts);
    assert_eq!(r.count, 3);
    assert_eq!(r.agent_ids, ["new", "old"]);
    assert_eq!(r.first_attested, Some(100));
    assert_eq!(
        conflicts,
        vec![
            (ek, "new".to_owned(), "old".to_owned()),
            (ek, "old".to_owned(), "new".to_owned())
        ]
    );
    let fresh = fold(None, ek, &refs[..1], "n1", DAY, &mut conflicts);
    assert_eq!((fresh.count, fresh.first_attested), (1, Some(200)));
    assert_eq!(
        conflicts.len(),
        2,
        "a fresh record has nothing to conflict with"
    );
}
