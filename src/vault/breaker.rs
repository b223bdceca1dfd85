//! Fail fast while Vault is known to be down.
//!
//! After `threshold` consecutive transient failures the breaker opens: calls fail at once
//! with `Unavailable` instead of piling up on a dead Vault (every agent retries, so waiting
//! helps nobody). After a cool-down one call is let through as a probe; success closes the
//! breaker, failure re-opens it with a doubled cool-down (capped). A health check that sees a
//! node answer closes it at once (Vault back after a long outage is used within one
//! `vault.health_interval`, not after a cool-down of up to 30 s).

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
        cooldown: Duration,
    },
    /// One probe is in flight; others are refused until it reports.
    Probing {
        cooldown: Duration,
    },
}

#[derive(Debug)]
pub struct Breaker {
    state: Mutex<State>,
    threshold: u32,
    min_cooldown: Duration,
    max_cooldown: Duration,
}

/// Why a call was not attempted.
#[derive(Debug, Clone, Copy)]
pub struct Open {
    pub retry_in: Duration,
}

impl Breaker {
    pub fn new(threshold: u32, min_cooldown: Duration, max_cooldown: Duration) -> Self {
        Self {
            state: Mutex::new(State::Closed { failures: 0 }),
            threshold: threshold.max(1),
            min_cooldown,
            max_cooldown,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// May a call go to Vault now? The permit reports the outcome; dropped unreported (the
    /// call was cancelled) it counts as a failure, so a lost probe cannot wedge the breaker.
    pub fn admit(&self) -> Result<Permit<'_>, Open> {
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => Ok(Permit {
                breaker: Some(self),
            }),
            State::Open { until, cooldown } => {
                let now = Instant::now();
                if now >= until {
                    *state = State::Probing { cooldown };
                    Ok(Permit {
                        breaker: Some(self),
                    })
                } else {
                    Err(Open {
                        retry_in: until - now,
                    })
                }
            }
            State::Probing { .. } => Err(Open {
                retry_in: self.min_cooldown,
            }),
        }
    }

    /// Reports a call's outcome: `transient_failure` for connect errors, timeouts, 5xx, 429.
    fn record(&self, transient_failure: bool) {
        let mut state = self.lock();
        *state = match (&*state, transient_failure) {
            (_, false) => {
                if !matches!(*state, State::Closed { failures: 0 }) {
                    tracing::info!("Vault answers again; closing the circuit breaker");
                }
                State::Closed { failures: 0 }
            }
            (State::Closed { failures }, true) if failures + 1 < self.threshold => State::Closed {
                failures: failures + 1,
            },
            (State::Closed { .. }, true) => {
                tracing::warn!(cooldown = ?self.min_cooldown, "Vault keeps failing; failing fast until it recovers");
                State::Open {
                    until: Instant::now() + self.min_cooldown,
                    cooldown: self.min_cooldown,
                }
            }
            (State::Probing { cooldown } | State::Open { cooldown, .. }, true) => {
                let cooldown = (*cooldown * 2).min(self.max_cooldown);
                State::Open {
                    until: Instant::now() + cooldown,
                    cooldown,
                }
            }
        };
    }

    /// A health check saw Vault answer: closes an open breaker at once instead of after its
    /// cool-down. A probe in flight keeps its say (it reports as usual).
    pub fn close_after_health_check(&self) {
        let mut state = self.lock();
        if let State::Open { .. } = *state {
            tracing::info!("a health check sees Vault answer; closing the circuit breaker");
            *state = State::Closed { failures: 0 };
        }
    }

    /// True while calls are being refused.
    pub fn is_open(&self) -> bool {
        !matches!(*self.lock(), State::Closed { .. })
    }
}

/// Leave to make one call; report its outcome with [`Permit::record`].
pub struct Permit<'a> {
    breaker: Option<&'a Breaker>,
}

impl Permit<'_> {
    pub fn record(mut self, transient_failure: bool) {
        if let Some(b) = self.breaker.take() {
            b.record(transient_failure);
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if let Some(b) = self.breaker.take() {
            b.record(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_probes_and_closes() {
        let b = Breaker::new(3, Duration::from_millis(50), Duration::from_millis(200));
        for _ in 0..2 {
            b.admit().unwrap().record(true);
        }
        assert!(!b.is_open(), "below the threshold");
        b.admit().unwrap().record(true);
        assert!(b.is_open());
        assert!(b.admit().is_err(), "open: fail fast");
        std::thread::sleep(Duration::from_millis(60));
        let probe = b.admit().expect("one probe after the cool-down");
        assert!(b.admit().is_err(), "only one probe at a time");
        drop(probe); // a cancelled probe counts as failed: cool-down doubles
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.admit().is_err(), "still open after the first cool-down");
        std::thread::sleep(Duration::from_millis(50));
        b.admit().unwrap().record(false);
        assert!(!b.is_open());
        b.admit().unwrap().record(false);
    }

    #[test]
    fn a_health_check_closes_it_at_once() {
        let b = Breaker::new(1, Duration::from_secs(30), Duration::from_secs(60));
        b.close_after_health_check();
        assert!(!b.is_open(), "closed stays closed");
        b.admit().unwrap().record(true);
        assert!(b.admit().is_err(), "open for 30 s");
        b.close_after_health_check();
        assert!(!b.is_open());
        b.admit().unwrap().record(false);
    }
}
