//! Challenge sessions: the state between a Challenge sent and its Answer received.
//!
//! Sans-IO: every method is handed the time (`now: Instant`) and, where it needs fresh bytes,
//! a [`Random`] source, so tests drive expiry with an injected clock and never sleep. The store
//! never does I/O, never logs a secret and never grows beyond `max_sessions` live sessions.
//!
//! Rules (DESIGN.md section 5, the seed's "Session expiry"):
//! - a session has a 128-bit random [`SessionId`] and a 32-byte random [`Secret`], and
//!   lives for `ttl` (5 minutes by default);
//! - it is removed on the first answer, right or wrong, so a replayed right answer fails;
//! - the secret is compared in constant time ([`subtle::ConstantTimeEq`]);
//! - an agent has at most one pending session: a new login replaces the old one;
//! - at most `max_sessions` are pending; beyond that [`SessionError::Busy`].
//!
//! An answer for an expired session is answered like one for a session that never existed:
//! [`SessionError::Unknown`] (`unknown session ID`). The seed says an expired session "is
//! discarded", and whether the sweep already ran must not change what the agent sees.
//!
//! Layout (about 150 bytes per live session, measured by `benches/sessions.rs`): sessions
//! live in a slab (`Vec<Slot>`) indexed by two `hashbrown::HashTable<u32>` (by id and by agent;
//! 4 bytes per bucket each) and by an insertion-ordered expiry queue. Because the TTL is uniform,
//! the queue is sorted by deadline, so [`SessionStore::sweep`] pops only expired entries
//! (O(expired)). Answered or replaced sessions leave a stale queue entry behind (lazy deletion);
//! the queue is compacted when stale entries outnumber live ones, so its size stays bounded.

use std::collections::VecDeque;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::time::{Duration, Instant};

use hashbrown::HashTable;
use subtle::ConstantTimeEq;

use crate::credential::{Random, RandomError};

/// Length of a [`SessionId`] in bytes (128 bits).
pub use ekattest_protocol::limits::SESSION_ID_LEN;
/// Length of a challenge [`Secret`] in bytes.
pub const SECRET_LEN: usize = 32;
/// Default session lifetime: 5 minutes (the seed's "Session expiry").
pub const DEFAULT_TTL: Duration = Duration::from_secs(5 * 60);
/// Default cap on pending sessions (about 15 MB of session state).
pub const DEFAULT_MAX_SESSIONS: usize = 100_000;
/// Longest agent id accepted, in bytes; agent ids are MQTT client ids chosen by devices.
pub const MAX_AGENT_ID_LEN: usize = 256;

/// A session's 128-bit random identifier, as carried in Challenge and Answer (the wire type).
pub use ekattest_protocol::msg::SessionId;

/// The 32-byte challenge secret: the credential handed to MakeCredential. `Debug` never
/// prints it, and it has no `PartialEq`: answers are compared in constant time by
/// [`SessionStore::answer`] only.
#[derive(Clone)]
pub struct Secret(pub [u8; SECRET_LEN]);

impl Secret {
    /// The secret's bytes (pass them to MakeCredential; never log them).
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; SECRET_LEN] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The agent a session belongs to (its MQTT client id), returned by a right answer.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct AgentId(Box<str>);

impl AgentId {
    /// The id as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AgentId({:?})", &*self.0)
    }
}

/// Session store settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// How long a challenge may stay unanswered ([`DEFAULT_TTL`]).
    pub ttl: Duration,
    /// Most sessions pending at once; more logins get [`SessionError::Busy`].
    pub max_sessions: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            ttl: DEFAULT_TTL,
            max_sessions: DEFAULT_MAX_SESSIONS,
        }
    }
}

/// Why a session could not be created or answered. `Display` strings are operator strings.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// No pending session has this id: never issued, already answered, replaced by a newer
    /// login of the same agent, or expired.
    #[error("unknown session ID")]
    Unknown(SessionId),
    /// The answer's secret differs from the challenge's; the session is gone now.
    #[error("challenge response secret does not match")]
    WrongSecret(SessionId, AgentId),
    /// The store holds `max_sessions` pending sessions; the agent should retry later.
    #[error("server busy: {limit} challenge sessions pending, retry later")]
    Busy {
        /// The configured cap.
        limit: usize,
    },
    /// The agent id is longer than [`MAX_AGENT_ID_LEN`].
    #[error("agent id is {len} bytes, longer than the {limit}-byte limit")]
    AgentIdTooLong {
        /// Length received.
        len: usize,
        /// [`MAX_AGENT_ID_LEN`].
        limit: usize,
    },
    /// The random source failed; no session was created.
    #[error("cannot create a session: no random bytes")]
    Random(#[source] RandomError),
}

#[derive(Debug)]
struct Slot<T> {
    id: SessionId,
    secret: [u8; SECRET_LEN],
    /// Nanoseconds after `SessionStore::epoch`.
    deadline: u64,
    /// `None` marks a free slot.
    live: Option<Live<T>>,
}

#[derive(Debug)]
struct Live<T> {
    agent: Box<str>,
    data: T,
}

/// Pending challenge sessions (sans-IO; see the module docs). Each session carries `T`, what
/// the caller needs back when the answer arrives (the attestation flow keeps the agent's
/// verified identity there); `()` for none.
#[derive(Debug)]
pub struct SessionStore<T = ()> {
    config: SessionConfig,
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    by_id: HashTable<u32>,
    by_agent: HashTable<u32>,
    /// (slot, deadline) in insertion order, hence in deadline order.
    expiry: VecDeque<(u32, u64)>,
    hasher: RandomState,
    epoch: Option<Instant>,
}

impl<T> SessionStore<T> {
    /// An empty store with `config`. Allocates nothing until the first session.
    #[must_use]
    pub fn new(config: SessionConfig) -> Self {
        // Slots are addressed by u32; 4 billion sessions would need about 600 GB anyway.
        let max_sessions = config.max_sessions.min(u32::MAX as usize);
        Self {
            config: SessionConfig {
                max_sessions,
                ..config
            },
            slots: Vec::new(),
            free: Vec::new(),
            by_id: HashTable::new(),
            by_agent: HashTable::new(),
            expiry: VecDeque::new(),
            hasher: RandomState::new(),
            epoch: None,
        }
    }

    /// The settings this store was made with.
    #[must_use]
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Pending sessions (expired ones count until [`SessionStore::sweep`] or the next
    /// [`SessionStore::begin`] removes them).
    #[must_use]
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether no session is pending.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Starts a session for `agent` at `now` carrying `data`: draws a fresh id and secret from
    /// `rng`. A pending
    /// session of the same agent is removed first (one login per agent). Expired sessions are
    /// swept before the cap is checked.
    ///
    /// # Errors
    /// [`SessionError::Busy`] at the cap, [`SessionError::AgentIdTooLong`],
    /// [`SessionError::Random`] if `rng` fails.
    pub fn begin<R: Random + ?Sized>(
        &mut self,
        agent: &str,
        data: T,
        now: Instant,
        rng: &mut R,
    ) -> Result<(SessionId, Secret), SessionError> {
        if agent.len() > MAX_AGENT_ID_LEN {
            return Err(SessionError::AgentIdTooLong {
                len: agent.len(),
                limit: MAX_AGENT_ID_LEN,
            });
        }
        self.sweep(now);
        let agent_hash = self.hasher.hash_one(agent);
        let previous = self
            .by_agent
            .find(agent_hash, |&s| self.slot_agent(s) == Some(agent));
        if let Some(&slot) = previous {
            self.remove(slot);
        }
        if self.by_id.len() >= self.config.max_sessions {
            return Err(SessionError::Busy {
                limit: self.config.max_sessions,
            });
        }
        let mut secret = [0u8; SECRET_LEN];
        rng.fill(&mut secret).map_err(SessionError::Random)?;
        // A 128-bit id from a CSPRNG does not collide in practice; a broken or fixed source
        // could repeat one, and the store must stay consistent even then.
        let (id, id_hash) = loop {
            let mut id = [0u8; SESSION_ID_LEN];
            rng.fill(&mut id).map_err(SessionError::Random)?;
            let id = SessionId(id);
            let id_hash = self.hasher.hash_one(id.0);
            if self
                .by_id
                .find(id_hash, |&s| self.slot_id(s) == Some(id))
                .is_none()
            {
                break (id, id_hash);
            }
        };
        let deadline = self
            .offset(now)
            .saturating_add(duration_nanos(self.config.ttl));
        let slot = self.allocate(Slot {
            id,
            secret,
            deadline,
            live: Some(Live {
                agent: Box::from(agent),
                data,
            }),
        });
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.by_id
            .insert_unique(id_hash, slot, |&s| hasher.hash_one(slots[s as usize].id.0));
        self.by_agent.insert_unique(agent_hash, slot, |&s| {
            hasher.hash_one(slots[s as usize].live.as_ref().map_or("", |l| &*l.agent))
        });
        self.expiry.push_back((slot, deadline));
        Ok((id, Secret(secret)))
    }

    /// Takes the session `id` and checks `secret` against it in constant time. The session is
    /// removed whatever the outcome, so every answer is single use. A right answer returns the
    /// session's key and data.
    ///
    /// # Errors
    /// [`SessionError::Unknown`] if no live session has this id (including expired ones);
    /// [`SessionError::WrongSecret`] if the secret differs.
    pub fn answer(
        &mut self,
        id: &SessionId,
        secret: &[u8],
        now: Instant,
    ) -> Result<(AgentId, T), SessionError> {
        self.answer_with(id, now, |s, _| bool::from(s.as_slice().ct_eq(secret)))
    }

    /// Takes the session `id` and asks `check` whether the answer proves its secret (wire
    /// version 2: `check` recomputes the Answer's MAC with the secret and compares in
    /// constant time). The session is removed whatever the outcome, so every answer is
    /// single use; `check` is not called for an expired session. A right answer returns the
    /// session's key and data.
    ///
    /// # Errors
    /// [`SessionError::Unknown`] if no live session has this id (including expired ones);
    /// [`SessionError::WrongSecret`] if `check` says no.
    pub fn answer_with(
        &mut self,
        id: &SessionId,
        now: Instant,
        check: impl FnOnce(&[u8; SECRET_LEN], &T) -> bool,
    ) -> Result<(AgentId, T), SessionError> {
        let id_hash = self.hasher.hash_one(id.0);
        let Some(&slot) = self.by_id.find(id_hash, |&s| self.slot_id(s) == Some(*id)) else {
            return Err(SessionError::Unknown(*id));
        };
        let now = self.offset(now);
        let expired = self
            .slots
            .get(slot as usize)
            .is_none_or(|s| s.deadline <= now);
        let matches = !expired
            && self
                .slots
                .get(slot as usize)
                .and_then(|s| s.live.as_ref().map(|l| (&s.secret, &l.data)))
                .is_some_and(|(secret, data)| check(secret, data));
        let live = self.remove(slot);
        match live {
            Some(_) if expired => Err(SessionError::Unknown(*id)),
            Some(live) if matches => Ok((AgentId(live.agent), live.data)),
            Some(live) => Err(SessionError::WrongSecret(*id, AgentId(live.agent))),
            None => Err(SessionError::Unknown(*id)),
        }
    }

    /// The data of the pending session `id`, if any (expired ones included until swept).
    #[must_use]
    pub fn peek(&self, id: &SessionId) -> Option<&T> {
        let id_hash = self.hasher.hash_one(id.0);
        let &slot = self
            .by_id
            .find(id_hash, |&s| self.slot_id(s) == Some(*id))?;
        self.slots
            .get(slot as usize)
            .and_then(|s| s.live.as_ref())
            .map(|l| &l.data)
    }

    /// Removes the session `id` without an answer (its challenge could not be sent); returns
    /// whether it existed.
    pub fn cancel(&mut self, id: &SessionId) -> bool {
        let id_hash = self.hasher.hash_one(id.0);
        let Some(&slot) = self.by_id.find(id_hash, |&s| self.slot_id(s) == Some(*id)) else {
            return false;
        };
        self.remove(slot).is_some()
    }

    /// Removes every session whose deadline is at or before `now`; returns how many. Costs
    /// O(expired + stale queue entries), never a scan of live sessions.
    pub fn sweep(&mut self, now: Instant) -> usize {
        let now = self.offset(now);
        let mut removed = 0;
        while let Some(&(slot, deadline)) = self.expiry.front() {
            if deadline > now {
                break;
            }
            self.expiry.pop_front();
            // The slot may have been freed or reused since; remove what is there only if it is
            // itself expired (a reuse expiring later has its own queue entry).
            let expired = self
                .slots
                .get(slot as usize)
                .is_some_and(|s| s.live.is_some() && s.deadline <= now);
            if expired {
                self.remove(slot);
                removed += 1;
            }
        }
        removed
    }

    /// Bytes held by the store's own tables (slab, indexes, queue, free list), excluding the
    /// agent id strings on the heap. For capacity planning and metrics.
    #[must_use]
    pub fn table_bytes(&self) -> usize {
        self.slots.capacity() * size_of::<Slot<T>>()
            + self.free.capacity() * size_of::<u32>()
            + self.by_id.allocation_size()
            + self.by_agent.allocation_size()
            + self.expiry.capacity() * size_of::<(u32, u64)>()
    }

    fn offset(&mut self, now: Instant) -> u64 {
        let epoch = *self.epoch.get_or_insert(now);
        duration_nanos(now.saturating_duration_since(epoch))
    }

    fn slot_id(&self, slot: u32) -> Option<SessionId> {
        self.slots
            .get(slot as usize)
            .filter(|s| s.live.is_some())
            .map(|s| s.id)
    }

    fn slot_agent(&self, slot: u32) -> Option<&str> {
        self.slots
            .get(slot as usize)
            .and_then(|s| s.live.as_ref())
            .map(|l| &*l.agent)
    }

    fn allocate(&mut self, new: Slot<T>) -> u32 {
        if let Some(slot) = self.free.pop()
            && let Some(s) = self.slots.get_mut(slot as usize)
        {
            *s = new;
            return slot;
        }
        // `new` caps max_sessions at u32::MAX and `begin` never passes the cap.
        let slot = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
        self.slots.push(new);
        slot
    }

    /// Unlinks `slot` from both indexes, wipes its secret and frees it; returns its agent and
    /// data.
    fn remove(&mut self, slot: u32) -> Option<Live<T>> {
        let s = self.slots.get_mut(slot as usize)?;
        let live = s.live.take()?;
        s.secret = [0; SECRET_LEN];
        let id = s.id;
        let id_hash = self.hasher.hash_one(id.0);
        if let Ok(entry) = self.by_id.find_entry(id_hash, |&x| x == slot) {
            entry.remove();
        }
        let agent_hash = self.hasher.hash_one(&*live.agent);
        if let Ok(entry) = self.by_agent.find_entry(agent_hash, |&x| x == slot) {
            entry.remove();
        }
        self.free.push(slot);
        self.compact_expiry();
        Some(live)
    }

    /// Drops stale queue entries once they outnumber live sessions (amortised O(1)).
    fn compact_expiry(&mut self) {
        let live = self.by_id.len();
        if self.expiry.len() > 2 * live + 64 {
            let slots = &self.slots;
            self.expiry.retain(|&(slot, deadline)| {
                slots
                    .get(slot as usize)
                    .is_some_and(|s| s.live.is_some() && s.deadline == deadline)
            });
        }
    }
}

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
