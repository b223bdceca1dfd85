//! Warnings about floods at most once per interval, each saying how many it stands for: a
//! flood must not become a flood of log lines (metrics count every event).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a flood's warning may be repeated.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// When a warning was last written and how many were left out since.
pub struct LogLimit {
    last: Mutex<Option<(Instant, u64)>>,
}

impl LogLimit {
    pub const fn new() -> Self {
        Self {
            last: Mutex::new(None),
        }
    }

    /// `Some(left out since the last line)` when a line is due now, else `None` (and the
    /// event is counted against the next line).
    pub fn due(&self) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match last.as_mut() {
            Some((at, n)) if now.duration_since(*at) < LOG_INTERVAL => {
                *n += 1;
                None
            }
            _ => {
                let suppressed = last.map_or(0, |(_, n)| n);
                *last = Some((now, 0));
                Some(suppressed)
            }
        }
    }
}

impl Default for LogLimit {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_left_out() {
        let limit = LogLimit::new();
        assert_eq!(limit.due(), Some(0));
        assert_eq!(limit.due(), None);
        assert_eq!(limit.due(), None);
        // Pretend the interval has passed.
        limit.last.lock().unwrap().as_mut().unwrap().0 -= LOG_INTERVAL;
        assert_eq!(limit.due(), Some(2));
    }
}
