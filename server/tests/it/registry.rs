//! The registry's storage backends against a real SQLite file (in a temporary directory) and
//! a real PostgreSQL (testkit's private server on a free loopback port, a fresh cluster per
//! test): every test body runs on both (`registry::<test>::sqlite` and `::postgres`), with
//! the same assertions. The SQL the tests run by hand (a version-1 row, a damaged row, a
//! schema version from the future) is written against the documented schema, not through
//! the store, so a change to a shipped migration shows up here.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr as _;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use ekattest_server::registry::postgres::PostgresStore;
use ekattest_server::registry::schema::LATEST;
use ekattest_server::registry::sqlite::SqliteStore;
use ekattest_server::registry::{
    Accepted, Applied, AuditEntry, Ban, BanTarget, EkHash, Event, Failure, Outcome, Record, Store,
    StoreError, UnixSeconds,
};
use ekattest_testkit::postgres::Postgres;

const WINDOW: Duration = Duration::from_secs(1000);
const EK_A: EkHash = [0xa1; 32];
const EK_B: EkHash = [0xb2; 32];
const EK_C: EkHash = [0x0c; 32];
const EK_D: EkHash = [0xd4; 32];

/// Runs each named test body on a fresh SQLite file and a fresh PostgreSQL database.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn sqlite() {
                super::$name(&super::Fixture::sqlite());
            }
            #[test]
            fn postgres() {
                super::$name(&super::Fixture::postgres());
            }
        }
    )*};
}

on_both!(
    records_keep_every_field,
    agent_ids_keep_their_order_and_conflicts_follow_the_window,
    several_events_of_one_ek_in_one_batch_are_one_write,
    bans_are_added_replaced_and_lifted,
    evict_forgets_the_record_but_not_its_audit_lines,
    list_since_and_records_of_agent,
    audit_walks_oldest_first_stops_early_and_prunes,
    a_long_audit_trail_is_walked_whole_and_stopped_exactly,
    a_version_one_database_is_upgraded_with_its_rows,
    a_database_from_a_newer_server_is_refused,
    a_damaged_row_is_reported_not_skipped,
    concurrent_writers_lose_no_update,
);

/// One database, and how to reach it (through the store and by hand).
enum Fixture {
    Sqlite {
        _dir: tempfile::TempDir,
        path: PathBuf,
    },
    Postgres(Postgres),
}

impl Fixture {
    fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/registry.db");
        Self::Sqlite { _dir: dir, path }
    }

    fn postgres() -> Self {
        Self::Postgres(Postgres::start().unwrap())
    }

    /// A new connection at the latest schema (creating the database on first use).
    fn open(&self) -> Box<dyn Store> {
        self.try_open().unwrap()
    }

    fn try_open(&self) -> Result<Box<dyn Store>, StoreError> {
        Ok(match self {
            Self::Sqlite { path, .. } => Box::new(SqliteStore::open(path)?),
            Self::Postgres(pg) => Box::new(PostgresStore::connect(&pg.url(), Some(pg.password()))?),
        })
    }

    /// A new connection that migrates only up to `version`.
    fn open_at(&self, version: i64) -> Box<dyn Store> {
        match self {
            Self::Sqlite { path, .. } => {
                Box::new(SqliteStore::open_at_version(path, version).unwrap())
            }
            Self::Postgres(pg) => Box::new(
                PostgresStore::connect_at_version(&pg.url(), Some(pg.password()), version).unwrap(),
            ),
        }
    }

    fn is_postgres(&self) -> bool {
        matches!(self, Self::Postgres(_))
    }

    /// Runs statements by hand, outside the store.
    fn exec(&self, sql: &str) {
        match self {
            Self::Sqlite { path, .. } => rusqlite::Connection::open(path)
                .unwrap()
                .execute_batch(sql)
                .unwrap(),
            Self::Postgres(pg) => pg_client(pg).batch_execute(sql).unwrap(),
        }
    }

    /// The first column of every row of `sql`.
    fn column<T>(&self, sql: &str) -> Vec<T>
    where
        T: rusqlite::types::FromSql + for<'a> postgres::types::FromSql<'a>,
    {
        match self {
            Self::Sqlite { path, .. } => {
                let conn = rusqlite::Connection::open(path).unwrap();
                let mut stmt = conn.prepare(sql).unwrap();
                stmt.query_map([], |r| r.get(0))
                    .unwrap()
                    .map(Result::unwrap)
                    .collect()
            }
            Self::Postgres(pg) => pg_client(pg)
                .query(sql, &[])
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect(),
        }
    }

    /// The first column of every row of `sql`, as integers.
    fn ints(&self, sql: &str) -> Vec<i64> {
        self.column(sql)
    }

    /// The first column of every row of `sql`, as text.
    fn texts(&self, sql: &str) -> Vec<String> {
        self.column(sql)
    }

    fn table_exists(&self, table: &str) -> bool {
        let sql = match self {
            Self::Sqlite { .. } => {
                format!(
                    "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '{table}'"
                )
            }
            Self::Postgres(_) => format!(
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_name = '{table}'"
            ),
        };
        self.ints(&sql) == [1]
    }

    /// The name the store gives its database in messages.
    fn db_name(&self) -> String {
        match self {
            Self::Sqlite { path, .. } => path.display().to_string(),
            Self::Postgres(pg) => format!("postgres://ekattest@127.0.0.1:{}/ekattest", pg.port()),
        }
    }
}

fn pg_client(pg: &Postgres) -> postgres::Client {
    let mut config = postgres::Config::from_str(&pg.url()).unwrap();
    config.password(pg.password());
    config.connect(postgres::NoTls).unwrap()
}

fn attributes(ek: EkHash, extra: &str) -> Vec<(String, String)> {
    vec![
        ("tpm_ek.public_hash".to_owned(), hex::encode(ek)),
        ("tpm_ek.manufacturer".to_owned(), extra.to_owned()),
    ]
}

fn accepted(ek: EkHash, agent: &str, at: UnixSeconds, serial: Option<&str>) -> Event {
    Event {
        at,
        agent: agent.to_owned(),
        ek: Some(ek),
        outcome: Outcome::Accepted(Box::new(Accepted {
            spiffe_id: format!("spiffe://example.org/agent/{agent}"),
            policy: format!("policy-{at}"),
            attributes: attributes(ek, &format!("vendor \"{at}\" ü\n[{agent}]")),
            svid_serial: serial.map(str::to_owned),
            svid_not_after: serial.map(|_| at + 3600),
            svid_der: Vec::new(),
        })),
    }
}

fn rejected(ek: Option<EkHash>, agent: &str, at: UnixSeconds, code: &str) -> Event {
    Event {
        at,
        agent: agent.to_owned(),
        ek,
        outcome: Outcome::Rejected {
            code: code.to_owned(),
            reason: format!("{code} at {at}: it's \"refused\""),
        },
    }
}

fn apply(store: &mut dyn Store, node: &str, events: &[Event]) -> Applied {
    store.apply(node, events, WINDOW).unwrap()
}

fn audit_all(store: &mut dyn Store, since: Option<UnixSeconds>) -> Vec<AuditEntry> {
    let mut out = Vec::new();
    store
        .audit(since, &mut |e| {
            out.push(e);
            true
        })
        .unwrap();
    out
}

fn eks(records: &[Record]) -> Vec<EkHash> {
    records.iter().map(|r| r.ek).collect()
}

fn records_keep_every_field(f: &Fixture) {
    let mut s = f.open();
    let applied = apply(
        &mut *s,
        "node-1",
        &[
            rejected(Some(EK_A), "agent-a", 90, "ek_chain"),
            accepted(EK_A, "agent-a", 100, Some("0a1b")),
            rejected(Some(EK_B), "agent-b", 120, "banned"),
            rejected(None, "ghost", 130, "malformed"),
        ],
    );
    assert_eq!(
        applied,
        Applied {
            records: 2,
            audit: 4,
            conflicts: Vec::new()
        },
        "an event without an EK is audited, not recorded"
    );
    let a = s.record(&EK_A).unwrap().unwrap();
    assert_eq!(
        a,
        Record {
            ek: EK_A,
            agent_ids: vec!["agent-a".into()],
            attributes: attributes(EK_A, "vendor \"100\" ü\n[agent-a]"),
            spiffe_id: Some("spiffe://example.org/agent/agent-a".into()),
            policy: Some("policy-100".into()),
            first_attested: Some(100),
            last_attested: Some(100),
            count: 1,
            svid_serial: Some("0a1b".into()),
            svid_not_after: Some(3700),
            node: Some("node-1".into()),
            last_failure: Some(Failure {
                code: "ek_chain".into(),
                reason: "ek_chain at 90: it's \"refused\"".into(),
                at: 90,
            }),
        }
    );
    let b = s.record(&EK_B).unwrap().unwrap();
    assert_eq!(
        b,
        Record {
            last_failure: Some(Failure {
                code: "banned".into(),
                reason: "banned at 120: it's \"refused\"".into(),
                at: 120,
            }),
            ..Record::new(EK_B)
        },
        "a refusal vouches for nothing: no agent id, no count"
    );
    assert_eq!(s.record(&EK_C).unwrap(), None);
    assert_eq!(s.count().unwrap(), 2);

    // A later batch on another node (a new connection: nothing cached in the store), with no
    // SVID this time: the last SVID stays, everything else moves on.
    drop(s);
    let mut s = f.open();
    apply(&mut *s, "node-2", &[accepted(EK_A, "agent-a", 200, None)]);
    let a2 = s.record(&EK_A).unwrap().unwrap();
    assert_eq!(a2.count, 2);
    assert_eq!(
        (a2.first_attested, a2.last_attested),
        (Some(100), Some(200))
    );
    assert_eq!(a2.node.as_deref(), Some("node-2"));
    assert_eq!(a2.policy.as_deref(), Some("policy-200"));
    assert_eq!(
        a2.attributes,
        attributes(EK_A, "vendor \"200\" ü\n[agent-a]")
    );
    assert_eq!(
        (a2.svid_serial.as_deref(), a2.svid_not_after),
        (Some("0a1b"), Some(3700))
    );
    assert_eq!(
        a2.last_failure, a.last_failure,
        "an acceptance keeps the last failure"
    );
    // Stored as documented: lowercase hex key, JSON lists.
    assert_eq!(
        f.texts("SELECT ek FROM devices ORDER BY ek"),
        [hex::encode(EK_A), hex::encode(EK_B)]
    );
    assert_eq!(
        f.texts(&format!(
            "SELECT agent_ids FROM devices WHERE ek = '{}'",
            hex::encode(EK_A)
        )),
        [r#"["agent-a"]"#]
    );
}

fn agent_ids_keep_their_order_and_conflicts_follow_the_window(f: &Fixture) {
    let mut s = f.open();
    assert!(
        apply(&mut *s, "n", &[accepted(EK_A, "a", 100, None)])
            .conflicts
            .is_empty()
    );
    // Another id 400 s later (window 1000 s), in a separate batch: the previous id is read
    // back from the database, not from memory.
    drop(s);
    let mut s = f.open();
    let applied = apply(&mut *s, "n", &[accepted(EK_A, "b", 500, None)]);
    assert_eq!(applied.conflicts, [(EK_A, "b".to_owned(), "a".to_owned())]);
    // The same id again: no conflict. A refusal under a third id: none either, and it does
    // not join the agent ids.
    let applied = apply(
        &mut *s,
        "n",
        &[
            accepted(EK_A, "b", 900, None),
            rejected(Some(EK_A), "c", 950, "wrong_secret"),
        ],
    );
    assert!(applied.conflicts.is_empty(), "{:?}", applied.conflicts);
    // Back to the first id, past the window (1901 s after 900): not reported, and it moves
    // to the end of the list without being listed twice.
    let applied = apply(&mut *s, "n", &[accepted(EK_A, "a", 1901, None)]);
    assert!(applied.conflicts.is_empty(), "{:?}", applied.conflicts);
    let r = s.record(&EK_A).unwrap().unwrap();
    assert_eq!(r.agent_ids, ["b", "a"]);
    assert_eq!(r.last_agent(), Some("a"));
    assert_eq!(r.count, 4);
    // Exactly at the window's edge is still within it.
    let applied = apply(&mut *s, "n", &[accepted(EK_A, "b", 2901, None)]);
    assert_eq!(applied.conflicts, [(EK_A, "b".to_owned(), "a".to_owned())]);
}

fn several_events_of_one_ek_in_one_batch_are_one_write(f: &Fixture) {
    let mut s = f.open();
    let applied = apply(
        &mut *s,
        "n1",
        &[
            accepted(EK_A, "a", 100, Some("01")),
            accepted(EK_B, "x", 100, None),
            accepted(EK_A, "b", 150, None),
            rejected(Some(EK_A), "b", 160, "policy"),
            accepted(EK_A, "b", 170, Some("02")),
        ],
    );
    assert_eq!(applied.records, 2, "one write per EK");
    assert_eq!(applied.audit, 5);
    assert_eq!(applied.conflicts, [(EK_A, "b".to_owned(), "a".to_owned())]);
    let a = s.record(&EK_A).unwrap().unwrap();
    assert_eq!(a.count, 3);
    assert_eq!(a.agent_ids, ["a", "b"]);
    assert_eq!((a.first_attested, a.last_attested), (Some(100), Some(170)));
    assert_eq!(a.svid_serial.as_deref(), Some("02"));
    assert_eq!(
        a.last_failure.map(|f| (f.code, f.at)),
        Some(("policy".into(), 160))
    );
    assert_eq!(s.record(&EK_B).unwrap().unwrap().count, 1);
    assert_eq!(audit_all(&mut *s, None).len(), 5);
    // An empty batch writes nothing and fails nothing.
    assert_eq!(apply(&mut *s, "n1", &[]), Applied::default());
}

fn bans_are_added_replaced_and_lifted(f: &Fixture) {
    let mut s = f.open();
    assert!(s.bans().unwrap().is_empty());
    let ek_ban = Ban {
        target: BanTarget::Ek(EK_A),
        reason: "stolen".into(),
        at: 10,
        by: "root@ops".into(),
    };
    // An agent id that looks like the EK's hash: the kind keeps them apart.
    let agent_ban = Ban {
        target: BanTarget::Agent(hex::encode(EK_A)),
        reason: String::new(),
        at: 11,
        by: "alice@ops".into(),
    };
    s.ban(&ek_ban).unwrap();
    s.ban(&agent_ban).unwrap();
    let replaced = Ban {
        reason: "decommissioned; it's gone".into(),
        at: 20,
        by: "bob@ops".into(),
        ..ek_ban.clone()
    };
    s.ban(&replaced).unwrap();
    // Read on another connection (another node): ordered by kind, then value.
    let mut other = f.open();
    assert_eq!(other.bans().unwrap(), [agent_ban.clone(), replaced.clone()]);
    assert_eq!(
        f.texts("SELECT kind || ':' || value FROM bans ORDER BY kind"),
        [
            format!("agent:{}", hex::encode(EK_A)),
            format!("ek:{}", hex::encode(EK_A))
        ]
    );
    for ban in other.bans().unwrap() {
        let t = &ban.target;
        assert_eq!(&BanTarget::from_stored(t.kind(), &t.value()).unwrap(), t);
    }
    assert!(other.unban(&BanTarget::Ek(EK_A)).unwrap());
    assert!(
        !other.unban(&BanTarget::Ek(EK_A)).unwrap(),
        "already lifted"
    );
    assert!(
        !other
            .unban(&BanTarget::Agent("never-banned".into()))
            .unwrap()
    );
    assert_eq!(s.bans().unwrap(), [agent_ban]);
    // A ban edited by hand into something unreadable is an error naming it, not a ban lost.
    f.exec("INSERT INTO bans (kind, value, reason, at, by_whom) VALUES ('ekk', 'x', '', 1, 'me')");
    let err = s.bans().unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("ekk"), "{err}");
}

fn evict_forgets_the_record_but_not_its_audit_lines(f: &Fixture) {
    let mut s = f.open();
    apply(
        &mut *s,
        "n",
        &[
            accepted(EK_A, "a", 100, None),
            accepted(EK_B, "b", 100, None),
        ],
    );
    assert!(s.evict(&EK_A).unwrap());
    assert!(!s.evict(&EK_A).unwrap(), "already evicted");
    assert!(!s.evict(&EK_C).unwrap(), "never known");
    assert_eq!(s.record(&EK_A).unwrap(), None);
    assert_eq!(s.count().unwrap(), 1);
    let audited: Vec<Option<String>> = audit_all(&mut *s, None).into_iter().map(|e| e.ek).collect();
    assert_eq!(audited, [Some(hex::encode(EK_A)), Some(hex::encode(EK_B))]);
    // The device may attest again: a fresh record, not the old one revived.
    apply(&mut *s, "n", &[accepted(EK_A, "a2", 300, None)]);
    let a = s.record(&EK_A).unwrap().unwrap();
    assert_eq!((a.count, a.first_attested), (1, Some(300)));
    assert_eq!(a.agent_ids, ["a2"]);
}

fn list_since_and_records_of_agent(f: &Fixture) {
    let mut s = f.open();
    apply(
        &mut *s,
        "n",
        &[
            accepted(EK_A, "shared", 100, None),
            rejected(Some(EK_B), "b", 300, "ek_chain"),
            accepted(EK_C, "c", 200, None),
            rejected(Some(EK_C), "c", 400, "policy"),
            accepted(EK_D, "x", 240, None),
            accepted(EK_D, "shared", 250, None),
        ],
    );
    // Oldest last activity (acceptance or refusal) first: A 100, D 250, B 300, C 400.
    assert_eq!(eks(&s.list(None).unwrap()), [EK_A, EK_D, EK_B, EK_C]);
    // `since` is inclusive and counts refusals: B (refused at 300) and C (accepted at 200,
    // refused at 400) are in.
    assert_eq!(eks(&s.list(Some(250)).unwrap()), [EK_D, EK_B, EK_C]);
    assert_eq!(eks(&s.list(Some(301)).unwrap()), [EK_C]);
    assert!(s.list(Some(401)).unwrap().is_empty());
    let listed = s.list(None).unwrap();
    assert_eq!(
        listed[0],
        s.record(&EK_A).unwrap().unwrap(),
        "list returns whole records"
    );

    assert_eq!(eks(&s.records_of_agent("shared").unwrap()), [EK_A, EK_D]);
    // A past agent id counts; a prefix, a JSON fragment or an id only refused does not.
    assert_eq!(eks(&s.records_of_agent("x").unwrap()), [EK_D]);
    for not_an_id in ["sha", "shared\"", "\"shared\"", "[", "b", "%"] {
        assert!(
            s.records_of_agent(not_an_id).unwrap().is_empty(),
            "{not_an_id:?} matched"
        );
    }
}

fn audit_walks_oldest_first_stops_early_and_prunes(f: &Fixture) {
    let mut s = f.open();
    apply(
        &mut *s,
        "n1",
        &[
            rejected(Some(EK_A), "a", 30, "banned"),
            accepted(EK_A, "a", 10, None),
            rejected(None, "ghost", 20, "malformed"),
        ],
    );
    apply(&mut *s, "n2", &[accepted(EK_B, "b", 10, None)]);
    let all = audit_all(&mut *s, None);
    let shape: Vec<(UnixSeconds, &str, &str)> = all
        .iter()
        .map(|e| (e.at, e.node.as_str(), e.agent.as_str()))
        .collect();
    assert_eq!(
        shape,
        [
            (10, "n1", "a"),
            (10, "n2", "b"),
            (20, "n1", "ghost"),
            (30, "n1", "a")
        ],
        "by time, then by position in the trail"
    );
    assert!(all[0].id < all[1].id, "ties go in write order");
    let ids: std::collections::BTreeSet<i64> = all.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), 4, "ids are unique");
    assert_eq!(
        all[0],
        AuditEntry {
            id: all[0].id,
            at: 10,
            node: "n1".into(),
            agent: "a".into(),
            ek: Some(hex::encode(EK_A)),
            outcome: "accepted".into(),
            code: None,
            reason: None,
            spiffe_id: Some("spiffe://example.org/agent/a".into()),
        }
    );
    assert_eq!(
        all[2],
        AuditEntry {
            id: all[2].id,
            at: 20,
            node: "n1".into(),
            agent: "ghost".into(),
            ek: None,
            outcome: "rejected".into(),
            code: Some("malformed".into()),
            reason: Some("malformed at 20: it's \"refused\"".into()),
            spiffe_id: None,
        }
    );
    let since: Vec<UnixSeconds> = audit_all(&mut *s, Some(20)).iter().map(|e| e.at).collect();
    assert_eq!(since, [20, 30], "since is inclusive");
    let mut seen = 0;
    s.audit(None, &mut |_| {
        seen += 1;
        seen < 2
    })
    .unwrap();
    assert_eq!(seen, 2, "returning false stops the walk");
    // The store is usable after a walk stopped early.
    assert_eq!(s.count().unwrap(), 2);

    assert_eq!(
        s.prune_audit(20).unwrap(),
        2,
        "strictly older than `before`"
    );
    let left: Vec<UnixSeconds> = audit_all(&mut *s, None).iter().map(|e| e.at).collect();
    assert_eq!(left, [20, 30]);
    assert_eq!(s.prune_audit(20).unwrap(), 0);
    assert_eq!(
        s.count().unwrap(),
        2,
        "pruning the audit trail keeps the records"
    );
    // Ids keep growing after a prune (never reused).
    let before = all.iter().map(|e| e.id).max().unwrap();
    apply(&mut *s, "n1", &[rejected(None, "late", 5, "x")]);
    let late = audit_all(&mut *s, None);
    assert_eq!(late[0].agent, "late");
    assert!(late[0].id > before);
}

fn a_long_audit_trail_is_walked_whole_and_stopped_exactly(f: &Fixture) {
    // More lines than one PostgreSQL page (1000) of the walk.
    let mut s = f.open();
    let events: Vec<Event> = (0..2500)
        .map(|i| rejected(None, &format!("agent-{i}"), i, "malformed"))
        .collect();
    for chunk in events.chunks(1000) {
        apply(&mut *s, "n", chunk);
    }
    let all = audit_all(&mut *s, None);
    assert_eq!(all.len(), 2500);
    assert!(all.windows(2).all(|w| w[0].at < w[1].at));
    assert_eq!(all[2499].agent, "agent-2499");
    let mut seen = Vec::new();
    s.audit(Some(100), &mut |e| {
        seen.push(e.at);
        seen.len() < 1500
    })
    .unwrap();
    assert_eq!(seen.len(), 1500);
    assert_eq!((seen[0], seen[1499]), (100, 1599));
}

fn a_version_one_database_is_upgraded_with_its_rows(f: &Fixture) {
    let old_ban = Ban {
        target: BanTarget::Agent("old-agent".into()),
        reason: "written at version 1".into(),
        at: 5,
        by: "root@old".into(),
    };
    {
        let mut v1 = f.open_at(1);
        v1.ban(&old_ban).unwrap();
    }
    assert_eq!(f.ints("SELECT version FROM ekattest_schema"), [1]);
    assert!(f.table_exists("devices"));
    assert!(!f.table_exists("audit"), "version 1 has no audit trail");
    // A device row as a version-1 server wrote it (by hand: the schema as documented).
    f.exec(&format!(
        "INSERT INTO devices (ek, agent_ids, attributes, spiffe_id, policy, first_attested, \
         last_attested, count, svid_serial, svid_not_after, node, failure_code, \
         failure_reason, failure_at) VALUES ('{}', '[\"old-agent\",\"newer\"]', \
         '[[\"tpm_ek.public_hash\",\"{}\"]]', 'spiffe://example.org/old', 'p1', 10, 20, 7, \
         'ff', 99, 'node-old', 'ek_chain', 'expired', 15)",
        hex::encode(EK_A),
        hex::encode(EK_A)
    ));

    let mut s = f.open();
    assert_eq!(f.ints("SELECT version FROM ekattest_schema"), [LATEST]);
    assert!(f.table_exists("audit"));
    assert_eq!(s.bans().unwrap(), [old_ban]);
    let expected = Record {
        ek: EK_A,
        agent_ids: vec!["old-agent".into(), "newer".into()],
        attributes: vec![("tpm_ek.public_hash".into(), hex::encode(EK_A))],
        spiffe_id: Some("spiffe://example.org/old".into()),
        policy: Some("p1".into()),
        first_attested: Some(10),
        last_attested: Some(20),
        count: 7,
        svid_serial: Some("ff".into()),
        svid_not_after: Some(99),
        node: Some("node-old".into()),
        last_failure: Some(Failure {
            code: "ek_chain".into(),
            reason: "expired".into(),
            at: 15,
        }),
    };
    assert_eq!(s.record(&EK_A).unwrap().unwrap(), expected);
    // The upgraded database takes batches: the old record goes on, the trail starts.
    let applied = apply(&mut *s, "node-new", &[accepted(EK_A, "newer", 30, None)]);
    assert!(applied.conflicts.is_empty(), "same id as the last one");
    let r = s.record(&EK_A).unwrap().unwrap();
    assert_eq!(
        (r.count, r.first_attested, r.last_attested),
        (8, Some(10), Some(30))
    );
    assert_eq!(audit_all(&mut *s, None).len(), 1);
    // Opening again runs nothing and changes nothing.
    drop(s);
    let mut again = f.open();
    assert_eq!(f.ints("SELECT version FROM ekattest_schema"), [LATEST]);
    assert_eq!(again.count().unwrap(), 1);
    // And an older target never downgrades.
    drop(again);
    let _v1 = f.open_at(1);
    assert_eq!(f.ints("SELECT version FROM ekattest_schema"), [LATEST]);
}

fn a_database_from_a_newer_server_is_refused(f: &Fixture) {
    {
        let mut s = f.open();
        apply(&mut *s, "n", &[accepted(EK_A, "a", 1, None)]);
    }
    f.exec(&format!(
        "UPDATE ekattest_schema SET version = {}",
        LATEST + 1
    ));
    let err = f.try_open().err().unwrap();
    match &err {
        StoreError::TooNew {
            db,
            found,
            supported,
        } => {
            assert_eq!((*found, *supported), (LATEST + 1, LATEST));
            assert_eq!(*db, f.db_name());
        }
        other => panic!("expected TooNew, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains(&format!("schema version {}", LATEST + 1)),
        "{text}"
    );
    assert!(text.contains(&format!("this server's {LATEST}")), "{text}");
    assert!(text.contains(&f.db_name()), "{text}");
    assert!(text.contains("upgrade this server"), "{text}");
    // Refusing touched nothing.
    assert_eq!(f.ints("SELECT version FROM ekattest_schema"), [LATEST + 1]);
    assert_eq!(f.ints("SELECT COUNT(*) FROM devices"), [1]);
}

fn a_damaged_row_is_reported_not_skipped(f: &Fixture) {
    let mut s = f.open();
    apply(&mut *s, "n", &[accepted(EK_A, "a", 1, None)]);
    f.exec(&format!(
        "UPDATE devices SET agent_ids = 'not json' WHERE ek = '{}'",
        hex::encode(EK_A)
    ));
    let err = s.record(&EK_A).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains(&hex::encode(EK_A)), "{err}");
    assert!(
        s.list(None).is_err(),
        "a listing does not silently drop the row"
    );
    // A batch for that EK fails whole (nothing of it is written) rather than overwrite it.
    let before = audit_all(&mut *s, None).len();
    assert!(
        s.apply("n", &[accepted(EK_A, "a", 2, None)], WINDOW)
            .is_err()
    );
    assert_eq!(audit_all(&mut *s, None).len(), before);
}

fn concurrent_writers_lose_no_update(f: &Fixture) {
    // Four writers (server nodes, or ekattestctl and the server on one SQLite file), each on
    // its own connection, write batches over the same EKs at the same moment, in opposite
    // orders; the EKs are new, so the first batches also race to create the rows.
    const WRITERS: usize = 4;
    const BATCHES: usize = 15;
    let keys: Vec<EkHash> = (0u8..12).map(|i| [i.wrapping_mul(37); 32]).collect();
    let stores: Vec<Box<dyn Store>> = (0..WRITERS).map(|_| f.open()).collect();
    let barrier = Arc::new(Barrier::new(WRITERS));
    let threads: Vec<_> = stores
        .into_iter()
        .enumerate()
        .map(|(w, mut store)| {
            let barrier = Arc::clone(&barrier);
            let keys = keys.clone();
            std::thread::spawn(move || {
                barrier.wait();
                for b in 0..BATCHES {
                    let mut order = keys.clone();
                    if w % 2 == 1 {
                        order.reverse();
                    }
                    let at = i64::try_from(b).unwrap();
                    let mut events: Vec<Event> = order
                        .iter()
                        .map(|k| accepted(*k, &format!("agent-{}", k[0]), at, None))
                        .collect();
                    // Two acceptances of the first key in the same batch.
                    events.push(accepted(
                        order[0],
                        &format!("agent-{}", order[0][0]),
                        at,
                        None,
                    ));
                    let applied = store.apply(&format!("node-{w}"), &events, WINDOW).unwrap();
                    assert_eq!(applied.records, keys.len());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut s = f.open();
    let counts: BTreeMap<EkHash, u64> = s
        .list(None)
        .unwrap()
        .into_iter()
        .map(|r| (r.ek, r.count))
        .collect();
    assert_eq!(counts.len(), keys.len());
    let first_forward = keys[0];
    let first_reversed = keys[keys.len() - 1];
    for (ek, count) in counts {
        let extra = if ek == first_forward || ek == first_reversed {
            // Writers 0 and 2 doubled the first key, writers 1 and 3 the last.
            2 * BATCHES
        } else {
            0
        };
        assert_eq!(
            count,
            u64::try_from(WRITERS * BATCHES + extra).unwrap(),
            "EK {}: updates lost",
            hex::encode(ek)
        );
    }
    let mut lines = 0;
    s.audit(None, &mut |_| {
        lines += 1;
        true
    })
    .unwrap();
    assert_eq!(lines, WRITERS * BATCHES * (keys.len() + 1));
    if f.is_postgres() {
        // Nothing was left half-written by the row-creation step.
        assert_eq!(f.ints("SELECT COUNT(*) FROM devices WHERE count = 0"), [0]);
    }
}

#[test]
fn sqlite_creates_a_private_directory_and_file_in_wal_mode() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new/state/registry.db");
    let mut s = SqliteStore::open(&path).unwrap();
    apply(&mut s, "n", &[accepted(EK_A, "a", 1, None)]);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(path.parent().unwrap()), 0o700);
    assert_eq!(mode(&dir.path().join("new")), 0o700);
    let wal = path.with_extension("db-wal");
    assert!(wal.exists(), "WAL mode keeps a -wal file while open");
    assert_eq!(
        mode(&wal) & 0o077,
        0,
        "the -wal file is as private as the database"
    );
    let conn = rusqlite::Connection::open(&path).unwrap();
    let journal: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(journal, "wal");
    assert_eq!(s.name(), path.display().to_string());
    // An existing file keeps its mode: the operator's choice stands.
    drop(s);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    drop(SqliteStore::open(&path).unwrap());
    assert_eq!(mode(&path), 0o640);
}

#[test]
fn sqlite_names_the_file_it_cannot_create() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, "").unwrap();
    let path = blocker.join("registry.db");
    let err = SqliteStore::open(&path).err().unwrap();
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
}

#[test]
fn sqlite_waits_for_another_writer_instead_of_failing() {
    // ekattestctl holds the write lock for a moment; the server's batch waits (busy_timeout)
    // and then goes through.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.db");
    let mut s = SqliteStore::open(&path).unwrap();
    let (locked_tx, locked) = std::sync::mpsc::channel();
    let holder_path = path.clone();
    let release = std::thread::spawn(move || {
        let mut holder = rusqlite::Connection::open(&holder_path).unwrap();
        let tx = holder
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .unwrap();
        tx.execute("DELETE FROM bans", []).unwrap();
        locked_tx.send(()).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        tx.commit().unwrap();
    });
    locked.recv().unwrap();
    let start = std::time::Instant::now();
    apply(&mut s, "n", &[accepted(EK_A, "a", 1, None)]);
    assert!(
        start.elapsed() >= Duration::from_millis(200),
        "the batch went through while the lock was held"
    );
    release.join().unwrap();
    assert_eq!(s.count().unwrap(), 1);
}

#[test]
fn postgres_name_never_shows_the_password_and_a_bad_one_is_an_open_error() {
    let pg = Postgres::start().unwrap();
    let s = PostgresStore::connect(&pg.url(), Some(pg.password())).unwrap();
    assert_eq!(
        s.name(),
        format!("postgres://ekattest@127.0.0.1:{}/ekattest", pg.port())
    );
    // The password in the URL too: still not shown.
    let with_pw = pg
        .url()
        .replace("ekattest@", &format!("ekattest:{}@", pg.password()));
    let s2 = PostgresStore::connect(&with_pw, None).unwrap();
    assert!(!s2.name().contains(pg.password()), "{}", s2.name());
    assert!(!format!("{s2:?}").contains(pg.password()));
    let err = PostgresStore::connect(&pg.url(), Some("wrong-password-123"))
        .err()
        .unwrap();
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    let text = err.to_string();
    assert!(!text.contains("wrong-password-123"), "{text}");
    assert!(text.contains("password authentication failed"), "{text}");
    assert!(text.contains(&pg.url()), "{text}");
}

#[test]
fn postgres_nodes_starting_at_once_migrate_once() {
    let pg = Postgres::start().unwrap();
    let (url, password) = (pg.url(), pg.password().to_owned());
    let barrier = Arc::new(Barrier::new(4));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (url, password, barrier) = (url.clone(), password.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                PostgresStore::connect(&url, Some(&password)).map(|_| ())
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap().unwrap();
    }
    let mut c = pg_client(&pg);
    let versions: Vec<i64> = c
        .query("SELECT version FROM ekattest_schema", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, [LATEST]);
}

#[test]
fn postgres_reconnects_after_the_connection_is_cut() {
    let pg = Postgres::start().unwrap();
    let mut s = PostgresStore::connect(&pg.url(), Some(pg.password())).unwrap();
    apply(&mut s, "n", &[accepted(EK_A, "a", 1, None)]);
    pg.psql(
        "postgres",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'ekattest'",
    )
    .unwrap();
    // The call that finds the connection dead may fail (the writer retries the batch at the
    // next flush); the one after it reconnects.
    let first = s.apply("n", &[accepted(EK_A, "a", 2, None)], WINDOW);
    let second = s.apply("n", &[accepted(EK_A, "a", 3, None)], WINDOW);
    second.unwrap();
    let expected = if first.is_ok() { 3 } else { 2 };
    assert_eq!(s.record(&EK_A).unwrap().unwrap().count, expected);
}

#[test]
fn testkit_postgres_is_private_and_stops_on_drop() {
    let pg = Postgres::start().unwrap();
    assert_eq!(
        pg.url(),
        format!("postgres://ekattest@127.0.0.1:{}/ekattest", pg.port())
    );
    assert_ne!(pg.port(), 5432, "never the system cluster's port");
    let owner = pg
        .psql(
            "postgres",
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'ekattest'",
        )
        .unwrap();
    assert_eq!(owner.trim(), "ekattest");
    let superuser = pg
        .psql(
            "postgres",
            "SELECT rolsuper FROM pg_roles WHERE rolname = 'ekattest'",
        )
        .unwrap();
    assert_eq!(
        superuser.trim(),
        "f",
        "the test user is an ordinary database owner"
    );
    // Over TCP the password is required.
    let mut no_password = postgres::Config::from_str(&pg.url()).unwrap();
    no_password.connect_timeout(Duration::from_secs(5));
    assert!(no_password.connect(postgres::NoTls).is_err());
    let port = pg.port();
    let socket = pg.socket_dir().join(format!(".s.PGSQL.{port}"));
    assert!(socket.exists(), "{}", socket.display());
    let dir = pg.socket_dir().to_owned();
    drop(pg);
    assert!(!ekattest_testkit::process::accepts(port), "stopped on drop");
    assert!(!dir.exists(), "its directory is deleted");
}
