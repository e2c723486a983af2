//! Unit tests of the registry's pure parts: folding events into a record, duplicate agent
//! ids, bans in memory, EK hash parsing.

use std::time::Duration;

use super::*;

const EK: EkHash = [7; 32];
const DAY: Duration = Duration::from_secs(86_400);

fn accepted(agent: &str, at: UnixSeconds, serial: Option<&str>) -> Event {
    Event {
        at,
        agent: agent.into(),
        ek: Some(EK),
        outcome: Outcome::Accepted(Box::new(Accepted {
            spiffe_id: format!("spiffe://example.org/{agent}"),
            policy: "fleet".into(),
            attributes: vec![("tpm_ek.public_hash".into(), hex::encode(EK))],
            svid_serial: serial.map(str::to_owned),
            svid_not_after: serial.map(|_| at + 3600),
            svid_der: Vec::new(),
        })),
    }
}

fn rejected(agent: &str, at: UnixSeconds) -> Event {
    Event {
        at,
        agent: agent.into(),
        ek: Some(EK),
        outcome: Outcome::Rejected {
            code: "ek_chain".into(),
            reason: "failed to verify EK certificate chain: expired".into(),
        },
    }
}

#[test]
fn an_acceptance_fills_every_field_and_a_refusal_only_the_failure() {
    let mut r = Record::new(EK);
    assert_eq!(r.apply(&rejected("ek-a", 50), "n1", DAY), None);
    assert_eq!(r.count, 0);
    assert!(
        r.agent_ids.is_empty(),
        "a refusal does not vouch for the agent id"
    );
    assert_eq!(r.first_attested, None);

    assert_eq!(r.apply(&accepted("ek-a", 100, Some("0a")), "n1", DAY), None);
    assert_eq!(r.apply(&accepted("ek-a", 200, None), "n2", DAY), None);
    assert_eq!(r.agent_ids, ["ek-a"]);
    assert_eq!((r.first_attested, r.last_attested), (Some(100), Some(200)));
    assert_eq!(r.count, 2);
    assert_eq!(r.node.as_deref(), Some("n2"));
    assert_eq!(r.spiffe_id.as_deref(), Some("spiffe://example.org/ek-a"));
    assert_eq!(r.policy.as_deref(), Some("fleet"));
    // The Login without an SVID key keeps the last SVID's serial.
    assert_eq!(r.svid_serial.as_deref(), Some("0a"));
    assert_eq!(r.svid_not_after, Some(3700));
    let failure = r.last_failure.clone().unwrap();
    assert_eq!((failure.code.as_str(), failure.at), ("ek_chain", 50));
}

#[test]
fn a_second_agent_id_within_the_window_is_a_conflict_each_time_it_alternates() {
    let mut r = Record::new(EK);
    assert_eq!(r.apply(&accepted("ek-a", 100, None), "n", DAY), None);
    assert_eq!(
        r.apply(&accepted("relay", 200, None), "n", DAY).as_deref(),
        Some("ek-a")
    );
    // Back to the first id: the same EK flapping between two ids is reported again.
    assert_eq!(
        r.apply(&accepted("ek-a", 300, None), "n", DAY).as_deref(),
        Some("relay")
    );
    assert_eq!(r.agent_ids, ["relay", "ek-a"]);
    assert_eq!(r.last_agent(), Some("ek-a"));
    // Past the window: a device re-provisioned under a new id a day later is not flagged.
    assert_eq!(
        r.apply(&accepted("new-id", 300 + 86_401, None), "n", DAY),
        None
    );
    // A refusal under another id never is.
    assert_eq!(r.apply(&rejected("other", 300 + 86_402), "n", DAY), None);
}

#[test]
fn events_out_of_order_keep_the_latest_last_attested() {
    let mut r = Record::new(EK);
    r.apply(&accepted("ek-a", 500, None), "n", DAY);
    r.apply(&accepted("ek-a", 400, None), "n", DAY);
    assert_eq!((r.first_attested, r.last_attested), (Some(500), Some(500)));
}

#[test]
fn bans_match_by_ek_first_then_agent_id() {
    let list = BanList::new();
    assert!(list.check("ek-a", Some(&EK)).is_none());
    list.replace(vec![
        Ban {
            target: BanTarget::Ek(EK),
            reason: "stolen".into(),
            at: 1,
            by: "ops".into(),
        },
        Ban {
            target: BanTarget::Agent("gw-9".into()),
            reason: String::new(),
            at: 2,
            by: "ops".into(),
        },
    ]);
    assert_eq!(list.len(), 2);
    let ban = list.check("anything", Some(&EK)).unwrap();
    assert_eq!(ban.target, BanTarget::Ek(EK));
    assert!(ban.refusal().contains("(stolen)"), "{}", ban.refusal());
    assert!(
        ban.refusal()
            .contains(&format!("ekattestctl agent unban --ek {}", hex::encode(EK))),
        "{}",
        ban.refusal()
    );
    assert_eq!(
        list.check("gw-9", Some(&[1; 32])).unwrap().target,
        BanTarget::Agent("gw-9".into())
    );
    assert!(list.check("gw-9x", Some(&[1; 32])).is_none());
    assert!(
        list.check("gw-9", None).is_some(),
        "an agent ban needs no EK"
    );
    list.replace(Vec::new());
    assert!(list.is_empty());
    assert!(list.check("gw-9", Some(&EK)).is_none());
}

#[test]
fn ban_targets_round_trip_through_their_stored_form() {
    for t in [BanTarget::Ek([0xab; 32]), BanTarget::Agent("ek-1".into())] {
        assert_eq!(BanTarget::from_stored(t.kind(), &t.value()).unwrap(), t);
    }
    assert!(
        BanTarget::from_stored("host", "x")
            .unwrap_err()
            .contains("host")
    );
    assert!(BanTarget::from_stored("ek", "zz").is_err());
}

#[test]
fn ek_hashes_parse_from_64_hex_digits_only() {
    let h = "AB".repeat(32);
    assert_eq!(parse_ek_hash(&h).unwrap(), [0xab; 32]);
    let e = parse_ek_hash(&h[..62]).unwrap_err();
    assert!(e.contains("64 hex digits"), "{e}");
    assert!(parse_ek_hash(&format!("{h}00")).is_err());
}

#[test]
fn a_postgres_password_never_shows_in_debug() {
    let b = Backend::Postgres {
        url: "postgres://ekattest@db/ekattest".into(),
        password: Some("hunter2".into()),
    };
    let text = format!("{b:?}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("redacted"), "{text}");
}
