//! Durations as `"30s"`, `"24h"`, `"1h30m"` (humantime), or a number of seconds.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

#[derive(Deserialize)]
#[serde(untagged)]
enum Raw {
    Secs(u64),
    Text(String),
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    match Raw::deserialize(d)? {
        Raw::Secs(s) => Ok(Duration::from_secs(s)),
        Raw::Text(t) => humantime::parse_duration(t.trim())
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {t:?}: {e}"))),
    }
}
