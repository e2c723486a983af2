//! Session store behaviour, driven by an injected clock (no sleeps).

use super::*;
use crate::credential::{FixedRandom, SystemRandom};

fn store(ttl_secs: u64, max: usize) -> SessionStore {
    SessionStore::new(SessionConfig {
        ttl: Duration::from_secs(ttl_secs),
        max_sessions: max,
    })
}

#[test]
fn right_answer_returns_the_agent() {
    let mut s = store(300, 10);
    let t0 = Instant::now();
    let (id, secret) = s.begin("ek-1", (), t0, &mut SystemRandom).unwrap();
    let agent = s
        .answer(&id, secret.as_bytes(), t0 + Duration::from_secs(1))
        .unwrap();
    assert_eq!(agent.0.as_str(), "ek-1");
    assert!(s.is_empty());
}

#[test]
fn answer_is_single_use() {
    let mut s = store(300, 10);
    let t0 = Instant::now();
    let (id, secret) = s.begin("ek-1", (), t0, &mut SystemRandom).unwrap();
    s.answer(&id, secret.as_bytes(), t0).unwrap();
    let replay = s.answer(&id, secret.as_bytes(), t0).unwrap_err();
    assert!(matches!(replay, SessionError::Unknown(i) if i == id));
    assert_eq!(replay.to_string(), "unknown session ID");
}

#[test]
fn wrong_secret_fails_and_removes_the_session() {
    let mut s = store(300, 10);
    let t0 = Instant::now();
    let (id, secret) = s.begin("ek-1", (), t0, &mut SystemRandom).unwrap();
    let mut wrong = *secret.as_bytes();
    wrong[31] ^= 1;
    let err = s.answer(&id, &wrong, t0).unwrap_err();
    assert!(matches!(err, SessionError::WrongSecret(i, _) if i == id));
    assert_eq!(err.to_string(), "challenge response secret does not match");
    // The right secret afterwards is too late: the session went with the wrong answer.
    assert!(matches!(
        s.answer(&id, secret.as_bytes(), t0),
        Err(SessionError::Unknown(_))
    ));
    // A secret of another length is simply wrong, not a panic.
    let (id2, _) = s.begin("ek-1", (), t0, &mut SystemRandom).unwrap();
    assert!(matches!(
        s.answer(&id2, &[1, 2, 3], t0),
        Err(SessionError::WrongSecret(..))
    ));
}

#[test]
fn unknown_id_is_refused() {
    let mut s = store(300, 10);
    let t0 = Instant::now();
    s.begin("ek-1", (), t0, &mut SystemRandom).unwrap();
    let err = s.answer(&SessionId([7; 16]), &[0; 32], t0).unwrap_err();
    assert!(matches!(err, SessionError::Unknown(_)));
    assert_eq!(s.len(), 1, "a stray answer must not touch other sessions");
}

#[test]
fn session_expires_at_ttl() {
    let mut s = store(300, 10);
    let t0 = Instant::now();
    let (id, secret) = s.begin("ek-1", (), t0, &mut SystemRandom).unwrap();
    let (id2, secret2) = s.begin("ek-2", (), t0, &mut SystemRandom).unwrap();
    // One nanosecond before the deadline: still valid.
    let just_before = t0 + Duration::from_secs(300) - Duration::from_nanos(1);
    s.answer(&id2, secret2.as_bytes(), just_before).unwrap();
    // At the deadline: expired, answered as unknown, and removed.
    let err = s
        .answer(&id, secret.as_bytes(), t0 + Duration::from_secs(300))
        .unwrap_err();
    assert!(matches!(err, SessionError::Unknown(i) if i == id));
    assert!(s.is_empty());
}

#[test]
fn sweep_removes_only_expired_sessions() {
    let mut s = store(10, 100);
    let t0 = Instant::now();
    let mut live = Vec::new();
    for i in 0..5u64 {
        let t = t0 + Duration::from_secs(i);
        live.push(
            s.begin(&format!("ek-{i}"), (), t, &mut SystemRandom)
                .unwrap(),
        );
    }
    assert_eq!(s.sweep(t0 + Duration::from_secs(9)), 0);
    // Sessions begun at 0, 1, 2 have deadlines 10, 11, 12.
    assert_eq!(s.sweep(t0 + Duration::from_secs(12)), 3);
    assert_eq!(s.len(), 2);
    let (id3, secret3) = &live[3];
    assert_eq!(
        s.answer(id3, secret3.as_bytes(), t0 + Duration::from_secs(12))
            .unwrap()
            .0
            .as_str(),
        "ek-3"
    );
    assert_eq!(s.sweep(t0 + Duration::from_secs(100)), 1);
    assert!(s.is_empty());
}

#[test]
fn new_login_replaces_the_agents_pending_session() {
    let mut s = store(300, 10);
    let t0 = Instant::now();
    let (old, old_secret) = s.begin("ek-1", (), t0, &mut SystemRandom).unwrap();
    let (other, other_secret) = s.begin("ek-2", (), t0, &mut SystemRandom).unwrap();
    let (new, new_secret) = s.begin("ek-1", (), t0, &mut SystemRandom).unwrap();
    assert_ne!(old, new);
    assert_eq!(s.len(), 2);
    assert!(matches!(
        s.answer(&old, old_secret.as_bytes(), t0),
        Err(SessionError::Unknown(_))
    ));
    assert_eq!(
        s.answer(&new, new_secret.as_bytes(), t0)
            .unwrap()
            .0
            .as_str(),
        "ek-1"
    );
    assert_eq!(
        s.answer(&other, other_secret.as_bytes(), t0)
            .unwrap()
            .0
            .as_str(),
        "ek-2"
    );
}

#[test]
fn cap_rejects_with_server_busy_until_sessions_leave() {
    let mut s = store(300, 2);
    let t0 = Instant::now();
    let (id1, secret1) = s.begin("ek-1", (), t0, &mut SystemRandom).unwrap();
    s.begin("ek-2", (), t0, &mut SystemRandom).unwrap();
    let err = s.begin("ek-3", (), t0, &mut SystemRandom).unwrap_err();
    assert!(matches!(err, SessionError::Busy { limit: 2 }));
    assert!(err.to_string().starts_with("server busy"), "{err}");
    // Replacing an agent's own session is allowed at the cap.
    s.begin("ek-2", (), t0, &mut SystemRandom).unwrap();
    // An answer frees a place.
    s.answer(&id1, secret1.as_bytes(), t0).unwrap();
    s.begin("ek-3", (), t0, &mut SystemRandom).unwrap();
    // Expiry frees places too: begin sweeps before checking the cap.
    assert!(s.begin("ek-4", (), t0, &mut SystemRandom).is_err());
    s.begin("ek-4", (), t0 + Duration::from_secs(300), &mut SystemRandom)
        .unwrap();
    assert_eq!(s.len(), 1);
}

#[test]
fn ids_and_secrets_come_from_the_injected_source() {
    let mut s = store(300, 10);
    let t0 = Instant::now();
    let mut rng = FixedRandom::new([vec![0xAA; 32], vec![0x11; 16]]);
    let (id, secret) = s.begin("ek-1", (), t0, &mut rng).unwrap();
    assert_eq!(id, SessionId([0x11; 16]));
    assert_eq!(secret.as_bytes(), &[0xAA; 32]);
    assert_eq!(id.to_string(), "11".repeat(16));
    assert_eq!(format!("{secret:?}"), "Secret(..)");
}

#[test]
fn repeated_id_from_a_broken_source_is_redrawn() {
    let mut s = store(300, 10);
    let t0 = Instant::now();
    let mut rng = FixedRandom::new([
        vec![1; 32],
        vec![9; 16],
        vec![2; 32],
        vec![9; 16], // collides with the first session
        vec![8; 16],
    ]);
    let (a, _) = s.begin("ek-1", (), t0, &mut rng).unwrap();
    let (b, secret_b) = s.begin("ek-2", (), t0, &mut rng).unwrap();
    assert_eq!(a, SessionId([9; 16]));
    assert_eq!(b, SessionId([8; 16]));
    assert_eq!(
        s.answer(&b, secret_b.as_bytes(), t0).unwrap().0.as_str(),
        "ek-2"
    );
}

#[test]
fn failing_randomness_creates_nothing() {
    let mut s = store(300, 10);
    let err = s
        .begin("ek-1", (), Instant::now(), &mut FixedRandom::default())
        .unwrap_err();
    assert!(matches!(err, SessionError::Random(_)));
    assert!(s.is_empty());
}

#[test]
fn overlong_agent_id_is_refused() {
    let mut s = store(300, 10);
    let long = "a".repeat(MAX_AGENT_ID_LEN + 1);
    let err = s
        .begin(&long, (), Instant::now(), &mut SystemRandom)
        .unwrap_err();
    assert!(matches!(err, SessionError::AgentIdTooLong { .. }));
}

#[test]
fn churn_keeps_the_expiry_queue_bounded() {
    // Answered sessions leave stale queue entries; compaction must keep them in check.
    let mut s = store(300, 10);
    let t0 = Instant::now();
    for i in 0..10_000 {
        let (id, secret) = s
            .begin(&format!("ek-{}", i % 7), (), t0, &mut SystemRandom)
            .unwrap();
        if i % 3 != 0 {
            s.answer(&id, secret.as_bytes(), t0).unwrap();
        }
    }
    assert!(s.len() <= 7);
    assert!(
        s.expiry.len() <= 2 * s.len() + 65,
        "queue grew to {}",
        s.expiry.len()
    );
    assert!(s.slots.len() <= 10, "slab grew to {}", s.slots.len());
}

#[test]
fn default_config_matches_the_contract() {
    let c = SessionConfig::default();
    assert_eq!(c.ttl, Duration::from_secs(300));
    assert!(c.max_sessions > 0);
}

#[test]
fn data_comes_back_only_with_the_right_answer() {
    let mut s: SessionStore<String> = SessionStore::new(SessionConfig::default());
    let t0 = Instant::now();
    let (id, secret) = s
        .begin("ek-1", "identity-1".to_owned(), t0, &mut SystemRandom)
        .unwrap();
    assert_eq!(s.peek(&id).map(String::as_str), Some("identity-1"));
    let (agent, data) = s.answer(&id, secret.as_bytes(), t0).unwrap();
    assert_eq!((agent.as_str(), data.as_str()), ("ek-1", "identity-1"));
    assert_eq!(s.peek(&id), None);

    let (id, _) = s
        .begin("ek-2", "identity-2".to_owned(), t0, &mut SystemRandom)
        .unwrap();
    assert!(matches!(
        s.answer(&id, &[0; 32], t0),
        Err(SessionError::WrongSecret(..))
    ));
    assert!(
        s.is_empty(),
        "a wrong answer drops the data with the session"
    );
}

#[test]
fn cancel_removes_a_session_once() {
    let mut s = store(300, 10);
    let t0 = Instant::now();
    let (id, secret) = s.begin("ek-1", (), t0, &mut SystemRandom).unwrap();
    assert!(s.cancel(&id));
    assert!(!s.cancel(&id));
    assert!(matches!(
        s.answer(&id, secret.as_bytes(), t0),
        Err(SessionError::Unknown(_))
    ));
    // The agent can log in again at once.
    s.begin("ek-1", (), t0, &mut SystemRandom).unwrap();
    assert_eq!(s.len(), 1);
}
