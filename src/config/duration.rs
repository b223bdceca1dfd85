//! Durations as `"30s"`, `"24h"`, `"1h30m"` (humantime), or a number of seconds.

use std::fmt;
use std::time::Duration;

use serde::Deserializer;
use serde::de::{Error, Unexpected, Visitor};

/// What a duration key accepts, in the words its errors use.
const EXPECTED: &str = r#"a duration such as "30s", "5m" or "1h30m", or a number of seconds"#;

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(EXPECTED)
    }

    fn visit_u64<E: Error>(self, secs: u64) -> Result<Duration, E> {
        Ok(Duration::from_secs(secs))
    }

    fn visit_i64<E: Error>(self, secs: i64) -> Result<Duration, E> {
        u64::try_from(secs)
            .map(Duration::from_secs)
            .map_err(|_| E::invalid_value(Unexpected::Signed(secs), &self))
    }

    fn visit_str<E: Error>(self, text: &str) -> Result<Duration, E> {
        humantime::parse_duration(text.trim()).map_err(|e| {
            E::custom(format!(
                "{text:?} is not a duration ({e}); expected {EXPECTED}"
            ))
        })
    }
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(DurationVisitor)
}
