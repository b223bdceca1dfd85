//! Wall-clock helpers shared by every module that compares certificate or token times
//! (a leaf module: it imports nothing from the crate).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

/// The share of its remaining life after which the signer renews what it holds itself (its
/// serving certificate, istiod's, its Vault token, its leader lease): two thirds, leaving the
/// last third for retries.
pub const RENEW_AT: f64 = 2.0 / 3.0;

/// How long to wait before renewing something with `remaining` life left ([`RENEW_AT`] of it).
pub fn renewal_wait(remaining: Duration) -> Duration {
    remaining.mul_f64(RENEW_AT)
}

/// [`renewal_wait`] for something valid until `not_after` (unix seconds).
pub fn renewal_wait_until(not_after: i64) -> Duration {
    renewal_wait(Duration::from_secs((not_after - now_unix()).max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn before_and_after_the_epoch() {
        assert_eq!(unix(UNIX_EPOCH + Duration::from_secs(5)), 5);
        assert_eq!(unix(UNIX_EPOCH - Duration::from_secs(5)), -5);
        assert!(now_unix() > 1_700_000_000);
    }

    #[test]
    fn renewal_at_two_thirds_of_what_is_left() {
        assert_eq!(
            renewal_wait(Duration::from_secs(300)),
            Duration::from_secs(200)
        );
        assert_eq!(renewal_wait_until(now_unix() - 10), Duration::ZERO);
        let wait = renewal_wait_until(now_unix() + 3000).as_secs();
        assert!((1999..=2000).contains(&wait), "{wait}");
    }
}
