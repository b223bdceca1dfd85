//! Rate limits: a token bucket per key, kept as one number (GCRA: the time at which the bucket
//! would be full again), so a limiter over many keys costs a map entry per key that is
//! currently below its full bucket, and nothing for the others.
//!
//! Used for issuance per SPIFFE identity and per node (the signer's pipeline) and for calls
//! to one Vault server (its client), where a call may wait for its turn instead of failing.

use std::collections::HashMap;
use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A sustained rate and the burst allowed above it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Time that earns one call.
    interval: Duration,
    /// Calls allowed at once from a full bucket.
    burst: NonZeroU32,
}

impl Rate {
    /// `n` calls per `period` on average, `burst` at once.
    pub fn new(n: NonZeroU32, period: Duration, burst: NonZeroU32) -> Self {
        Self {
            interval: period / n.get(),
            burst,
        }
    }

    /// How far ahead of now the bucket's "full again" time may run: `burst - 1` intervals.
    fn tolerance(&self) -> Duration {
        self.interval * (self.burst.get() - 1)
    }

    /// The decision for a bucket whose "full again" time is `tat` (nanoseconds on the
    /// limiter's clock; `now` on the same clock): the new `tat` and how long the call must
    /// wait, or how long until it could go when that is more than `max_wait`.
    fn decide(&self, tat: u64, now: u64, max_wait: Duration) -> Result<(u64, Duration), Duration> {
        let tat = tat.max(now);
        let earliest = tat.saturating_sub(nanos(self.tolerance()));
        let wait = Duration::from_nanos(earliest.saturating_sub(now));
        if wait > max_wait {
            return Err(wait);
        }
        Ok((tat + nanos(self.interval), wait))
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// One bucket: calls reserve their turn and wait for it.
pub struct Limiter {
    rate: Rate,
    start: Instant,
    tat: Mutex<u64>,
}

impl Limiter {
    pub fn new(rate: Rate) -> Self {
        Self {
            rate,
            start: Instant::now(),
            tat: Mutex::new(0),
        }
    }

    /// Reserves the next turn if it comes within `max_wait`: `Ok(wait)` (sleep that long, then
    /// go), or `Err(retry_after)` with nothing reserved. Turns are handed out in the order
    /// they were asked for.
    pub fn reserve(&self, max_wait: Duration) -> Result<Duration, Duration> {
        let now = nanos(self.start.elapsed());
        let mut tat = self.tat.lock().unwrap_or_else(|e| e.into_inner());
        let (next, wait) = self.rate.decide(*tat, now, max_wait)?;
        *tat = next;
        Ok(wait)
    }
}

/// Keys tracked at most; beyond it (after dropping full buckets) a new key is not limited and
/// the overflow is reported by [`KeyedLimiter::check`]'s caller through [`Verdict::Untracked`].
pub const MAX_TRACKED_KEYS: usize = 100_000;

/// What [`KeyedLimiter::check`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Over the limit; the next call would be allowed after this long.
    Limited(Duration),
    /// Allowed without being counted: the limiter tracks [`MAX_TRACKED_KEYS`] keys already.
    Untracked,
}

/// One bucket per key; a call is allowed or refused at once (never waits).
pub struct KeyedLimiter<K> {
    rate: Rate,
    start: Instant,
    buckets: Mutex<HashMap<K, u64>>,
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    pub fn new(rate: Rate) -> Self {
        Self {
            rate,
            start: Instant::now(),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a call for `key` if its bucket has room.
    pub fn check(&self, key: &K) -> Verdict {
        let now = nanos(self.start.elapsed());
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tat) = buckets.get_mut(key) {
            return match self.rate.decide(*tat, now, Duration::ZERO) {
                Ok((next, _)) => {
                    *tat = next;
                    Verdict::Allowed
                }
                Err(retry_after) => Verdict::Limited(retry_after),
            };
        }
        if buckets.len() >= MAX_TRACKED_KEYS {
            // A bucket whose time has passed is full: the same as no entry.
            buckets.retain(|_, tat| *tat > now);
            if buckets.len() >= MAX_TRACKED_KEYS {
                return Verdict::Untracked;
            }
        }
        let (next, _) = self
            .rate
            .decide(0, now, Duration::ZERO)
            .expect("a full bucket always has room");
        buckets.insert(key.clone(), next);
        Verdict::Allowed
    }

    /// Keys with a bucket below full (for tests and metrics).
    pub fn tracked(&self) -> usize {
        let now = nanos(self.start.elapsed());
        let buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        buckets.values().filter(|tat| **tat > now).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let rate = Rate::new(nz(60), Duration::from_secs(60), nz(3));
        let s = 1_000_000_000u64;
        let mut tat = 0;
        // Three at once from a full bucket, the fourth must wait a second.
        for _ in 0..3 {
            let (next, wait) = rate.decide(tat, 10 * s, Duration::ZERO).unwrap();
            assert_eq!(wait, Duration::ZERO);
            tat = next;
        }
        assert_eq!(
            rate.decide(tat, 10 * s, Duration::ZERO),
            Err(Duration::from_secs(1))
        );
        // Allowed to wait: reserved one second ahead.
        let (next, wait) = rate.decide(tat, 10 * s, Duration::from_secs(1)).unwrap();
        assert_eq!(wait, Duration::from_secs(1));
        // One second later that reserved turn is the one that came free: no room now; without
        // the reservation there would have been.
        assert!(rate.decide(next, 11 * s, Duration::ZERO).is_err());
        assert!(rate.decide(tat, 11 * s, Duration::ZERO).is_ok());
        // Long idle: a full bucket again, not a saved-up credit beyond the burst.
        let mut tat = next;
        for _ in 0..3 {
            tat = rate.decide(tat, 100 * s, Duration::ZERO).unwrap().0;
        }
        assert!(rate.decide(tat, 100 * s, Duration::ZERO).is_err());
    }

    #[test]
    fn keys_are_limited_apart_and_full_buckets_are_forgotten() {
        let limiter = KeyedLimiter::new(Rate::new(nz(1), Duration::from_millis(20), nz(2)));
        assert_eq!(limiter.check(&"a"), Verdict::Allowed);
        assert_eq!(limiter.check(&"a"), Verdict::Allowed);
        assert!(matches!(limiter.check(&"a"), Verdict::Limited(_)));
        assert_eq!(
            limiter.check(&"b"),
            Verdict::Allowed,
            "another key has its own"
        );
        assert_eq!(limiter.tracked(), 2);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(limiter.tracked(), 0, "refilled buckets cost nothing");
        assert_eq!(limiter.check(&"a"), Verdict::Allowed);
    }

    #[test]
    fn the_outbound_limiter_hands_out_turns_in_order() {
        let limiter = Limiter::new(Rate::new(nz(10), Duration::from_secs(1), nz(1)));
        assert_eq!(limiter.reserve(Duration::ZERO), Ok(Duration::ZERO));
        let second = limiter.reserve(Duration::from_secs(1)).unwrap();
        let third = limiter.reserve(Duration::from_secs(1)).unwrap();
        assert!(second > Duration::from_millis(50) && second <= Duration::from_millis(100));
        assert!(
            third > second + Duration::from_millis(90),
            "{second:?} {third:?}"
        );
        assert!(
            limiter.reserve(Duration::from_millis(10)).is_err(),
            "no turn within 10 ms: nothing reserved"
        );
        let fourth = limiter.reserve(Duration::from_secs(1)).unwrap();
        assert!(fourth > third + Duration::from_millis(90));
    }
}
