//! Jittered exponential backoff between attempts (broker connections, logins).
//!
//! The bound starts at `initial` (default 1 s), doubles after each failure and is capped at
//! `max` (default 5 min); each delay is drawn uniformly from `[0, bound]` ("full jitter"), so
//! a fleet that lost its broker at the same moment does not come back in lockstep. A success
//! resets the bound to `initial`. The random source is a small seeded generator (seeded from
//! the OS in production, fixed in tests); it is for spreading load, never for secrets.

use std::time::Duration;

/// Backoff state.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    bound: Duration,
    state: u64,
}

impl Backoff {
    /// A backoff from `initial` up to `max`, seeded from the OS random source.
    #[must_use]
    pub fn new(initial: Duration, max: Duration) -> Self {
        let mut seed = [0u8; 8];
        // A failed OS source only makes the jitter predictable, which is harmless.
        let _ = getrandom::getrandom(&mut seed);
        Self::with_seed(initial, max, u64::from_le_bytes(seed))
    }

    /// A backoff with a fixed seed (tests).
    #[must_use]
    pub fn with_seed(initial: Duration, max: Duration, seed: u64) -> Self {
        let initial = initial.min(max);
        Self {
            initial,
            max,
            bound: initial,
            state: seed,
        }
    }

    /// The current upper bound of the next delay.
    #[must_use]
    pub fn bound(&self) -> Duration {
        self.bound
    }

    /// The delay before the next attempt (uniform in `[0, bound]`); doubles the bound.
    pub fn next_delay(&mut self) -> Duration {
        let bound_ms = u64::try_from(self.bound.as_millis()).unwrap_or(u64::MAX);
        let delay = Duration::from_millis(self.random() % bound_ms.saturating_add(1));
        self.bound = self.bound.saturating_mul(2).min(self.max);
        delay
    }

    /// Back to `initial` after a success.
    pub fn reset(&mut self) {
        self.bound = self.initial;
    }

    /// splitmix64.
    fn random(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn bounds_double_cap_and_reset() {
        let mut b = Backoff::with_seed(S, 5 * 60 * S, 7);
        let mut bounds = Vec::new();
        for _ in 0..12 {
            let bound = b.bound();
            let d = b.next_delay();
            assert!(d <= bound, "{d:?} > {bound:?}");
            bounds.push(bound.as_secs());
        }
        assert_eq!(bounds, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        b.reset();
        assert_eq!(b.bound(), S);
        assert!(b.next_delay() <= S);
    }

    #[test]
    fn jitter_spreads_over_the_whole_range() {
        let bound = Duration::from_secs(60);
        let mut b = Backoff::with_seed(bound, bound, 42);
        let mut buckets = [0u32; 10];
        for _ in 0..10_000 {
            let d = b.next_delay();
            assert!(d <= bound);
            let i = usize::try_from(d.as_millis() * 10 / (bound.as_millis() + 1)).unwrap();
            buckets[i] += 1;
        }
        // Uniform: each tenth holds about 1000; allow a wide margin.
        for (i, n) in buckets.iter().enumerate() {
            assert!((800..1200).contains(n), "bucket {i}: {n} ({buckets:?})");
        }
        // Two devices with different seeds do not retry in lockstep.
        let mut a = Backoff::with_seed(bound, bound, 1);
        let mut c = Backoff::with_seed(bound, bound, 2);
        let same = (0..100)
            .filter(|_| a.next_delay() == c.next_delay())
            .count();
        assert!(same < 5, "{same} equal delays");
    }

    #[test]
    fn initial_above_max_is_capped() {
        let mut b = Backoff::with_seed(10 * S, 2 * S, 3);
        assert_eq!(b.bound(), 2 * S);
        assert!(b.next_delay() <= 2 * S);
    }
}
