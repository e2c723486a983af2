//! The per-agent login rate limit: a token bucket per agent id (`login-burst` logins at
//! once, one more every `login-interval`), checked by the router right after the topic is
//! parsed, before the frame is decoded.
//!
//! The table is bounded: it keeps two generations of at most `table / 2` agents each. A
//! Login looks its agent up in the current generation, then in the previous one (moving it
//! forward); when the current generation is full it becomes the previous one and the old
//! previous generation is dropped whole. An agent idle for a whole generation therefore
//! starts again with a full bucket, which is exactly what an absent entry means, and a flood
//! of distinct fake agent ids costs O(1) per Login and can never grow the table past
//! `table` entries. This module never blocks, never allocates per Login beyond one entry,
//! and never panics on any agent id or clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Default `login-burst`: logins an agent may send back to back.
pub const DEFAULT_LOGIN_BURST: u32 = 3;
/// Default `login-interval`: one more login allowed per interval.
pub const DEFAULT_LOGIN_INTERVAL: Duration = Duration::from_secs(10);
/// Default bound on the agents tracked (both generations together).
pub const DEFAULT_LOGIN_TABLE: usize = 65_536;

/// The login rate limit's settings (`login-burst`, `login-interval`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginLimit {
    /// Logins an agent may send back to back; `0` disables the limit.
    pub burst: u32,
    /// One more login is allowed per interval.
    pub interval: Duration,
    /// Most agents tracked (both generations together; at least 2).
    pub table: usize,
}

impl Default for LoginLimit {
    fn default() -> Self {
        Self {
            burst: DEFAULT_LOGIN_BURST,
            interval: DEFAULT_LOGIN_INTERVAL,
            table: DEFAULT_LOGIN_TABLE,
        }
    }
}

/// One agent's bucket: tokens as of `at`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The per-agent token buckets (see the module docs). Owned by the router task: no lock.
#[derive(Debug)]
pub struct LoginLimiter {
    limit: LoginLimit,
    current: HashMap<Box<str>, Bucket>,
    previous: HashMap<Box<str>, Bucket>,
}

impl LoginLimiter {
    /// An empty table with `limit`.
    pub fn new(limit: LoginLimit) -> Self {
        Self {
            limit,
            current: HashMap::new(),
            previous: HashMap::new(),
        }
    }

    /// Agents tracked now (never more than the table bound).
    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    /// Whether no agent is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn generation_max(&self) -> usize {
        (self.limit.table / 2).max(1)
    }

    /// Takes one login token for `agent` at `now`: `Ok(())` if allowed, else `Err(wait)`,
    /// how long until the next login would be allowed.
    ///
    /// # Errors
    /// The time to wait when the agent's bucket is empty.
    pub fn check(&mut self, agent: &str, now: Instant) -> Result<(), Duration> {
        if self.limit.burst == 0 {
            return Ok(());
        }
        let burst = f64::from(self.limit.burst);
        let interval = self.limit.interval.as_secs_f64();
        let found = self
            .current
            .get(agent)
            .copied()
            .or_else(|| self.previous.remove(agent));
        let mut bucket = match found {
            Some(mut b) => {
                let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
                let refill = if interval > 0.0 {
                    elapsed / interval
                } else {
                    burst
                };
                b.tokens = (b.tokens + refill).min(burst);
                b.at = now;
                b
            }
            None => Bucket {
                tokens: burst,
                at: now,
            },
        };
        let verdict = if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                ((1.0 - bucket.tokens) * interval).clamp(0.0, 1e9),
            ))
        };
        if let Some(slot) = self.current.get_mut(agent) {
            *slot = bucket;
        } else {
            if self.current.len() >= self.generation_max() {
                self.previous = std::mem::take(&mut self.current);
            }
            self.current.insert(agent.into(), bucket);
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(burst: u32, secs: u64, table: usize) -> LoginLimiter {
        LoginLimiter::new(LoginLimit {
            burst,
            interval: Duration::from_secs(secs),
            table,
        })
    }

    #[test]
    fn allows_a_burst_then_one_per_interval() {
        let mut l = limiter(3, 10, 100);
        let t0 = Instant::now();
        for i in 0..3 {
            assert_eq!(l.check("a", t0), Ok(()), "login {i} of the burst");
        }
        let wait = l.check("a", t0).unwrap_err();
        assert!(
            wait > Duration::from_secs(9) && wait <= Duration::from_secs(10),
            "{wait:?}"
        );
        // Half an interval later: still refused, with about 5 s to wait.
        let wait = l.check("a", t0 + Duration::from_secs(5)).unwrap_err();
        assert!(
            wait > Duration::from_secs(4) && wait <= Duration::from_secs(5),
            "{wait:?}"
        );
        assert_eq!(l.check("a", t0 + Duration::from_secs(10)), Ok(()));
        assert!(l.check("a", t0 + Duration::from_secs(10)).is_err());
        // Another agent has its own bucket.
        assert_eq!(l.check("b", t0), Ok(()));
        // A long idle period refills to the burst, not beyond.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(l.check("a", later), Ok(()));
        }
        assert!(l.check("a", later).is_err());
    }

    #[test]
    fn burst_zero_disables_the_limit() {
        let mut l = limiter(0, 10, 4);
        let t0 = Instant::now();
        for _ in 0..100 {
            assert_eq!(l.check("a", t0), Ok(()));
        }
        assert!(l.is_empty());
    }

    #[test]
    fn a_flood_of_distinct_ids_cannot_grow_the_table() {
        let mut l = limiter(3, 10, 1000);
        let t0 = Instant::now();
        for i in 0..100_000 {
            assert_eq!(l.check(&format!("fake-{i}"), t0), Ok(()));
            assert!(l.len() <= 1000, "{} entries after {i}", l.len());
        }
        assert!(l.len() >= 500);
    }

    #[test]
    fn an_active_agent_survives_a_generation_change() {
        let mut l = limiter(2, 10, 10);
        let t0 = Instant::now();
        assert_eq!(l.check("loop", t0), Ok(()));
        assert_eq!(l.check("loop", t0), Ok(()));
        // 4 other agents fill the current generation (5 max): "loop" moves to previous.
        for i in 0..4 {
            assert_eq!(l.check(&format!("x{i}"), t0), Ok(()));
        }
        assert_eq!(l.check("new", t0), Ok(()));
        // Still limited: found in the previous generation and moved forward.
        assert!(l.check("loop", t0).is_err());
        assert!(l.len() <= 10);
    }

    #[test]
    fn a_clock_going_backwards_refills_nothing() {
        let mut l = limiter(1, 10, 10);
        let t0 = Instant::now() + Duration::from_secs(100);
        assert_eq!(l.check("a", t0), Ok(()));
        assert!(l.check("a", t0 - Duration::from_secs(50)).is_err());
    }
}
