//! Wall-clock helpers shared by every module that compares certificate or token times
//! (a leaf module: it imports nothing from the crate).

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch (negative before it).
pub fn unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// The current time in seconds since the Unix epoch.
pub fn now_unix() -> i64 {
    unix(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn before_and_after_the_epoch() {
        assert_eq!(unix(UNIX_EPOCH + Duration::from_secs(5)), 5);
        assert_eq!(unix(UNIX_EPOCH - Duration::from_secs(5)), -5);
        assert!(now_unix() > 1_700_000_000);
    }
}
