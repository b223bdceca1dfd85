//! Certificate lifetime policy: what lifetime is asked of Vault for a requested
//! `validity_duration` (a leaf module below config and the pipeline).

use std::time::Duration;

use serde::Deserialize;

/// What to do with a `validity_duration` above the maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OverMax {
    /// Issue the maximum lifetime (istiod's behaviour).
    Clamp,
    /// Refuse with `InvalidArgument`.
    Reject,
}

/// Why the requested lifetime is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TtlError {
    #[error("requested TTL {requested}s is greater than the max allowed TTL {max}s")]
    TooLong { requested: u64, max: u64 },
}

/// Turns requested lifetimes into the lifetime asked of Vault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TtlPolicy {
    pub default: Duration,
    pub max: Duration,
    pub over_max: OverMax,
}

impl TtlPolicy {
    /// Returns the TTL to request and whether it was clamped.
    pub fn resolve(&self, requested_seconds: i64) -> Result<(Duration, bool), TtlError> {
        if requested_seconds <= 0 {
            return Ok((self.default, false));
        }
        let requested = Duration::from_secs(requested_seconds as u64);
        if requested <= self.max {
            return Ok((requested, false));
        }
        match self.over_max {
            OverMax::Clamp => Ok((self.max, true)),
            OverMax::Reject => Err(TtlError::TooLong {
                requested: requested.as_secs(),
                max: self.max.as_secs(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_policy() {
        let p = TtlPolicy {
            default: Duration::from_secs(86400),
            max: Duration::from_secs(172800),
            over_max: OverMax::Clamp,
        };
        assert_eq!(p.resolve(0).unwrap(), (Duration::from_secs(86400), false));
        assert_eq!(p.resolve(-5).unwrap(), (Duration::from_secs(86400), false));
        assert_eq!(p.resolve(3600).unwrap(), (Duration::from_secs(3600), false));
        assert_eq!(
            p.resolve(10 << 20).unwrap(),
            (Duration::from_secs(172800), true)
        );
        let strict = TtlPolicy {
            over_max: OverMax::Reject,
            ..p
        };
        assert_eq!(
            strict.resolve(172801),
            Err(TtlError::TooLong {
                requested: 172801,
                max: 172800
            })
        );
    }
}
