//! `[ttl]`: the lifetime policy of the default target (each target may have its own).

use super::*;

/// Certificate lifetime policy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TtlConfig {
    /// Lifetime used when the request asks for none (`validity_duration <= 0`).
    #[serde(with = "duration")]
    pub default: Duration,
    /// Longest lifetime issued.
    #[serde(with = "duration")]
    pub max: Duration,
    /// `clamp` (issue `max`) or `reject` (`InvalidArgument`).
    pub over_max: OverMax,
}

impl TtlConfig {
    /// `key` is where these settings are (`ttl`, `targets[0].ttl`).
    pub(super) fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if self.default.is_zero() {
            return Err(ConfigError::invalid(
                &format!("{key}.default"),
                "must be positive",
            ));
        }
        if self.max < self.default {
            return Err(ConfigError::invalid(
                &format!("{key}.max"),
                format!("must not be shorter than {key}.default"),
            ));
        }
        Ok(())
    }

    /// The policy these settings describe.
    pub fn policy(&self) -> crate::ttl::TtlPolicy {
        crate::ttl::TtlPolicy {
            default: self.default,
            max: self.max,
            over_max: self.over_max,
        }
    }
}

impl Default for TtlConfig {
    fn default() -> Self {
        Self {
            default: Duration::from_secs(24 * 3600),
            max: Duration::from_secs(48 * 3600),
            over_max: OverMax::Clamp,
        }
    }
}
