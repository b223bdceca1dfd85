//! Rate limits: a token bucket per key, kept as one number (GCRA: the time at which the bucket
//! would be full again), so a limiter over many keys costs a map entry per key that is
//! currently below its full bucket, and nothing for the others.
//!
//! Used for issuance per SPIFFE identity and per node (the signer's pipeline), for TLS
//! handshakes per source address (the gRPC port), and for calls to one Vault server (its
//! client), where a call may wait for its turn instead of failing.

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

    /// `n` calls a second, `burst` at once; `None` (no limit) when either is 0, as the
    /// configuration spells "off".
    pub fn per_second(n: u32, burst: u32) -> Option<Self> {
        Some(Self::new(
            NonZeroU32::new(n)?,
            Duration::from_secs(1),
            NonZeroU32::new(burst)?,
        ))
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

/// Which of a [`Limiter`]'s two queues a waiting call joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Class {
    /// Goes before every waiting [`Class::Behind`] call.
    #[default]
    Ahead,
    /// Waits while any [`Class::Ahead`] call waits.
    Behind,
}

/// One bucket whose calls wait for their turn instead of failing. Waiting calls form two
/// queues: every [`Class::Ahead`] call goes before any [`Class::Behind`] one, and within a
/// queue the first come goes first. A call goes at once only when nobody waits and the bucket
/// has a turn.
///
/// No task hands the turns out: the call at the head of the queues sleeps until the bucket
/// earns the next turn, takes it, and wakes the call that is now first (as does a head that
/// gives up). A turn is taken only by the call that goes, so a cancelled call loses nobody a
/// turn.
pub struct Limiter {
    rate: Rate,
    start: tokio::time::Instant,
    state: Mutex<Turns>,
}

#[derive(Default)]
struct Turns {
    /// The bucket's "full again" time (nanoseconds since `start`).
    tat: u64,
    /// The waiting calls: [`Class::Ahead`]'s, then [`Class::Behind`]'s.
    queues: [std::collections::VecDeque<Waiter>; 2],
    next_id: u64,
}

struct Waiter {
    id: u64,
    wake: std::sync::Arc<tokio::sync::Notify>,
}

impl Turns {
    fn head(&self) -> Option<&Waiter> {
        self.queues.iter().find_map(|q| q.front())
    }

    fn is_empty(&self) -> bool {
        self.queues.iter().all(|q| q.is_empty())
    }

    /// Removes waiter `id` of `class`; if it was the head, wakes the new head.
    fn leave(&mut self, class: Class, id: u64) {
        let was_head = self.head().is_some_and(|w| w.id == id);
        let queue = &mut self.queues[class as usize];
        if let Some(i) = queue.iter().position(|w| w.id == id) {
            queue.remove(i);
        }
        if was_head && let Some(next) = self.head() {
            next.wake.notify_one();
        }
    }
}

/// What a [`Limiter`] had waiting (for metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Waiting {
    pub ahead: usize,
    pub behind: usize,
}

impl Limiter {
    pub fn new(rate: Rate) -> Self {
        Self {
            rate,
            start: tokio::time::Instant::now(),
            state: Mutex::new(Turns::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Turns> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> u64 {
        nanos(self.start.elapsed())
    }

    /// Waits for a turn in `class`'s queue, at most `max_wait`: `Ok(waited)`, or
    /// `Err(expected)` when the calls ahead of it (those waiting in its class or an earlier
    /// one, one interval each) leave no turn within `max_wait` (refused at once, nothing
    /// queued) or when `max_wait` ran out while it waited (calls of an earlier class came
    /// after it). `on_wait` runs once if the call has to queue, before it waits.
    pub async fn turn(
        &self,
        class: Class,
        max_wait: Duration,
        on_wait: impl FnOnce(),
    ) -> Result<Duration, Duration> {
        let (id, wake) = {
            let mut turns = self.lock();
            let now = self.now();
            if turns.is_empty()
                && let Ok((tat, _)) = self.rate.decide(turns.tat, now, Duration::ZERO)
            {
                turns.tat = tat;
                return Ok(Duration::ZERO);
            }
            let ahead: usize = turns.queues[..=class as usize]
                .iter()
                .map(|q| q.len())
                .sum();
            let first = turns
                .tat
                .max(now)
                .saturating_sub(nanos(self.rate.tolerance()));
            let expected = Duration::from_nanos(first.saturating_sub(now))
                + self.rate.interval * u32::try_from(ahead).unwrap_or(u32::MAX);
            if expected > max_wait {
                return Err(expected);
            }
            let id = turns.next_id;
            turns.next_id += 1;
            let wake = std::sync::Arc::new(tokio::sync::Notify::new());
            turns.queues[class as usize].push_back(Waiter {
                id,
                wake: wake.clone(),
            });
            (id, wake)
        };
        on_wait();
        /// The call's place: left when it goes, gives up or is cancelled.
        struct Place<'a> {
            limiter: &'a Limiter,
            class: Class,
            id: u64,
        }
        impl Drop for Place<'_> {
            fn drop(&mut self) {
                self.limiter.lock().leave(self.class, self.id);
            }
        }
        let _place = Place {
            limiter: self,
            class,
            id,
        };
        let since = tokio::time::Instant::now();
        let give_up = tokio::time::sleep(max_wait);
        tokio::pin!(give_up);
        loop {
            // The head sleeps until the bucket earns a turn; the others until they are woken.
            let next = {
                let mut turns = self.lock();
                if turns.head().is_some_and(|w| w.id == id) {
                    match self.rate.decide(turns.tat, self.now(), Duration::ZERO) {
                        Ok((tat, _)) => {
                            turns.tat = tat;
                            // `_place` leaves (waking the next head) once the lock is released.
                            drop(turns);
                            return Ok(since.elapsed());
                        }
                        Err(wait) => Some(tokio::time::Instant::now() + wait),
                    }
                } else {
                    None
                }
            };
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep_until(next.unwrap_or(since)), if next.is_some() => {}
                () = &mut give_up => return Err(since.elapsed()),
            }
        }
    }

    /// How many calls wait in each queue.
    pub fn waiting(&self) -> Waiting {
        let turns = self.lock();
        Waiting {
            ahead: turns.queues[0].len(),
            behind: turns.queues[1].len(),
        }
    }
}

/// One bucket whose owner is never refused: every event is counted, and the owner learns how
/// far over its rate it has gone (how long until the bucket has room for the next event).
/// Used to pace a connection whose calls keep being refused (`server::pace`).
pub struct Debt {
    rate: Rate,
    start: tokio::time::Instant,
    /// The bucket's "full again" time (nanoseconds since `start`).
    tat: u64,
}

impl Debt {
    pub fn new(rate: Rate) -> Self {
        Self {
            rate,
            start: tokio::time::Instant::now(),
            tat: 0,
        }
    }

    /// Counts one event and returns how long until the bucket has room for the next: zero
    /// within the burst, one interval more for each event beyond it. The debt is kept at most
    /// `horizon` beyond an empty bucket, so an owner that stops is even again within
    /// `horizon`.
    pub fn add(&mut self, horizon: Duration) -> Duration {
        let now = nanos(self.start.elapsed());
        let tolerance = nanos(self.rate.tolerance());
        let tat = self.tat.max(now).saturating_add(nanos(self.rate.interval));
        self.tat = tat.min(now.saturating_add(tolerance).saturating_add(nanos(horizon)));
        Duration::from_nanos(self.tat.saturating_sub(tolerance).saturating_sub(now))
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

/// One bucket per key: a call is allowed or refused at once ([`Self::check`]), or takes a turn
/// it waits for ([`Self::reserve`]).
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
        match self.take(key, Duration::ZERO) {
            Some(Ok(_)) => Verdict::Allowed,
            Some(Err(retry_after)) => Verdict::Limited(retry_after),
            None => Verdict::Untracked,
        }
    }

    /// Takes `key`'s next turn if it comes within `max_wait`: how long until it comes (the
    /// caller waits that long), or, when it is further away, how long until it would come
    /// (no turn is taken then). A key the limiter cannot track is never made to wait.
    pub fn reserve(&self, key: &K, max_wait: Duration) -> Result<Duration, Duration> {
        self.take(key, max_wait).unwrap_or(Ok(Duration::ZERO))
    }

    /// [`Self::reserve`], with `None` for a key beyond [`MAX_TRACKED_KEYS`].
    fn take(&self, key: &K, max_wait: Duration) -> Option<Result<Duration, Duration>> {
        let now = nanos(self.start.elapsed());
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tat) = buckets.get_mut(key) {
            return Some(self.rate.decide(*tat, now, max_wait).map(|(next, wait)| {
                *tat = next;
                wait
            }));
        }
        if buckets.len() >= MAX_TRACKED_KEYS {
            // A bucket whose time has passed is full: the same as no entry.
            buckets.retain(|_, tat| *tat > now);
            if buckets.len() >= MAX_TRACKED_KEYS {
                return None;
            }
        }
        let (next, wait) = self
            .rate
            .decide(0, now, max_wait)
            .expect("a full bucket always has room");
        buckets.insert(key.clone(), next);
        Some(Ok(wait))
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

    #[tokio::test(start_paused = true)]
    async fn a_debt_grows_one_interval_per_event_beyond_the_burst_and_is_capped() {
        // 10 a second, 3 at once.
        let mut debt = Debt::new(Rate::new(nz(10), Duration::from_secs(1), nz(3)));
        let ms = Duration::from_millis;
        // Two events leave room; the third empties the bucket: the next has room in 100 ms.
        assert_eq!(debt.add(ms(500)), Duration::ZERO);
        assert_eq!(debt.add(ms(500)), Duration::ZERO);
        assert_eq!(debt.add(ms(500)), ms(100));
        assert_eq!(debt.add(ms(500)), ms(200));
        // However many more, at most the horizon.
        for _ in 0..20 {
            debt.add(ms(500));
        }
        assert_eq!(debt.add(ms(500)), ms(500));
        // Paid off at the rate: room again after 500 ms, a full bucket after 700 ms.
        tokio::time::advance(ms(800)).await;
        assert_eq!(debt.add(ms(500)), Duration::ZERO);
        assert_eq!(debt.add(ms(500)), Duration::ZERO);
        assert_eq!(debt.add(ms(500)), ms(100));
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
    fn a_reserved_turn_is_taken_only_within_the_wait_allowed() {
        let limiter = KeyedLimiter::new(Rate::new(nz(1), Duration::from_secs(10), nz(2)));
        let near = |d: Duration, s: u64| {
            let want = Duration::from_secs(s);
            d <= want && want - d < Duration::from_secs(1)
        };
        assert_eq!(limiter.reserve(&"a", Duration::ZERO), Ok(Duration::ZERO));
        assert_eq!(limiter.reserve(&"a", Duration::ZERO), Ok(Duration::ZERO));
        // The third turn comes in 10 s: too far for 5, and then not taken.
        assert!(matches!(limiter.reserve(&"a", Duration::from_secs(5)), Err(d) if near(d, 10)));
        assert!(matches!(limiter.reserve(&"a", Duration::from_secs(15)), Ok(d) if near(d, 10)));
        // Taken: the next one is 10 s after it.
        assert!(matches!(limiter.reserve(&"a", Duration::from_secs(15)), Err(d) if near(d, 20)));
        assert_eq!(limiter.reserve(&"b", Duration::ZERO), Ok(Duration::ZERO));
    }

    fn every_10ms() -> Limiter {
        Limiter::new(Rate::new(nz(100), Duration::from_secs(1), nz(1)))
    }

    /// A limiter of one turn every 10 ms whose turn for now is taken.
    async fn spent() -> std::sync::Arc<Limiter> {
        let limiter = std::sync::Arc::new(every_10ms());
        let first = limiter.turn(Class::Behind, Duration::ZERO, || ()).await;
        assert_eq!(first, Ok(Duration::ZERO));
        limiter
    }

    /// Starts a call for a turn in `class`; its result and when it came, through the handle.
    fn ask(
        limiter: &std::sync::Arc<Limiter>,
        class: Class,
        max_wait: Duration,
    ) -> tokio::task::JoinHandle<(Result<Duration, Duration>, tokio::time::Instant)> {
        let limiter = limiter.clone();
        tokio::spawn(async move {
            let r = limiter.turn(class, max_wait, || ()).await;
            (r, tokio::time::Instant::now())
        })
    }

    #[tokio::test(start_paused = true)]
    async fn turns_go_in_order_at_the_rate() {
        let limiter = std::sync::Arc::new(every_10ms());
        let mut waited = false;
        let first = limiter
            .turn(Class::Behind, Duration::ZERO, || waited = true)
            .await;
        assert_eq!(first, Ok(Duration::ZERO));
        assert!(!waited, "a call that goes at once does not queue");
        let t0 = tokio::time::Instant::now();
        let calls: Vec<_> = (0..3)
            .map(|_| ask(&limiter, Class::Behind, Duration::from_secs(1)))
            .collect();
        tokio::task::yield_now().await;
        assert_eq!(
            limiter.waiting(),
            Waiting {
                ahead: 0,
                behind: 3
            }
        );
        let mut at = Vec::new();
        for c in calls {
            let (r, when) = c.await.unwrap();
            assert!(r.is_ok());
            at.push(when - t0);
        }
        let ms = |d: Duration| d.as_millis();
        assert_eq!(
            at.iter().copied().map(ms).collect::<Vec<_>>(),
            vec![10, 20, 30]
        );
        assert_eq!(limiter.waiting(), Waiting::default());
    }

    #[tokio::test(start_paused = true)]
    async fn an_ahead_call_passes_every_waiting_behind_call() {
        let limiter = spent().await;
        let t0 = tokio::time::Instant::now();
        let behind: Vec<_> = (0..3)
            .map(|_| ask(&limiter, Class::Behind, Duration::from_secs(1)))
            .collect();
        tokio::task::yield_now().await;
        let ahead = ask(&limiter, Class::Ahead, Duration::from_secs(1));
        let (r, when) = ahead.await.unwrap();
        assert!(r.is_ok());
        assert_eq!(
            (when - t0).as_millis(),
            10,
            "the next turn goes to the later, urgent call"
        );
        let mut at = Vec::new();
        for c in behind {
            at.push((c.await.unwrap().1 - t0).as_millis());
        }
        assert_eq!(
            at,
            vec![20, 30, 40],
            "the others keep their order, one turn later"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_is_refused_at_once_when_its_turn_is_too_far() {
        let limiter = spent().await;
        let queued: Vec<_> = (0..5)
            .map(|_| ask(&limiter, Class::Behind, Duration::from_secs(1)))
            .collect();
        tokio::task::yield_now().await;
        let mut waited = false;
        let t0 = tokio::time::Instant::now();
        let r = limiter
            .turn(Class::Behind, Duration::from_millis(40), || waited = true)
            .await;
        assert_eq!(
            r,
            Err(Duration::from_millis(60)),
            "five ahead, then its own turn"
        );
        assert_eq!(tokio::time::Instant::now(), t0, "refused without waiting");
        assert!(!waited);
        // An urgent call counts only the urgent calls ahead of it.
        let r = limiter
            .turn(Class::Ahead, Duration::from_millis(40), || ())
            .await;
        assert_eq!(r, Ok(Duration::from_millis(10)));
        for c in queued {
            assert!(c.await.unwrap().0.is_ok());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_gives_up_or_is_cancelled_passes_its_turn_on() {
        let limiter = spent().await;
        let t0 = tokio::time::Instant::now();
        // Waits behind the cancelled head; an urgent call keeps pushing its turn back.
        let cancelled = ask(&limiter, Class::Behind, Duration::from_secs(1));
        let patient = ask(&limiter, Class::Behind, Duration::from_secs(1));
        tokio::task::yield_now().await;
        cancelled.abort();
        let (r, when) = patient.await.unwrap();
        assert!(r.is_ok());
        assert_eq!(
            (when - t0).as_millis(),
            10,
            "the cancelled head's turn went to the next"
        );
        // A renewal that urgent calls keep passing runs out of time, and leaves.
        let t1 = tokio::time::Instant::now();
        let starved = ask(&limiter, Class::Behind, Duration::from_millis(25));
        tokio::task::yield_now().await;
        let urgent: Vec<_> = (0..4)
            .map(|_| ask(&limiter, Class::Ahead, Duration::from_secs(1)))
            .collect();
        let (r, when) = starved.await.unwrap();
        assert_eq!(r, Err(Duration::from_millis(25)));
        assert_eq!((when - t1).as_millis(), 25);
        for c in urgent {
            assert!(c.await.unwrap().0.is_ok());
        }
        assert_eq!(limiter.waiting(), Waiting::default());
    }
}
