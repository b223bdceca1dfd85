//! Exponential backoff for every retry loop (start-up waits for Vault, sign retries, token
//! refresh, serving-certificate renewal): one schedule, one place. A leaf module.

use std::time::Duration;

/// Delays that start at `first` and double up to `max`, optionally jittered to ×[0.5, 1.5) so
/// replicas that failed together do not retry together.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
    jitter: bool,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            next: first,
            jitter: false,
        }
    }

    /// The same schedule, each delay jittered.
    pub fn jittered(mut self) -> Self {
        self.jitter = true;
        self
    }

    /// The delay before the next attempt; the one after is twice as long (up to `max`).
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        if self.jitter {
            delay.mul_f64(0.5 + jitter())
        } else {
            delay
        }
    }

    /// After a success: the next failure waits `first` again.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// A number in [0, 1) that varies between calls (for jitter; not for security).
pub fn jitter() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (nanos % 1000) as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_max_and_resets() {
        let s = Duration::from_secs;
        let mut b = Backoff::new(s(1), s(5));
        let delays: Vec<_> = (0..5).map(|_| b.next_delay()).collect();
        assert_eq!(delays, [s(1), s(2), s(4), s(5), s(5)]);
        b.reset();
        assert_eq!(b.next_delay(), s(1));
        let mut j = Backoff::new(Duration::from_millis(100), s(1)).jittered();
        for base in [100, 200, 400, 800, 1000] {
            let d = j.next_delay().as_millis();
            assert!((base / 2..base * 3 / 2).contains(&d), "{d} for {base}");
        }
    }
}
