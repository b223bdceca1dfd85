//! `IVCA_<SECTION>__<KEY>` environment overrides: put into the TOML table before it is
//! deserialized, and named in any error about a key they set.

use super::*;

/// `message`, followed by `(set by IVCA_A__B)` when that variable set `key` (or its section).
pub(super) fn set_by(key: &str, overrides: &[(String, String)], message: String) -> String {
    match setter(key, overrides) {
        Some(name) => format!("{message} (set by {name})"),
        None => message,
    }
}

/// The `IVCA_*` variable that set `key` (or its section, or a key within it), if one did.
pub(super) fn setter<'a>(key: &str, overrides: &'a [(String, String)]) -> Option<&'a str> {
    let dotted = |name: &str| {
        name.strip_prefix(ENV_PREFIX).map(|k| {
            k.split("__")
                .collect::<Vec<_>>()
                .join(".")
                .to_ascii_lowercase()
        })
    };
    let base = key.split('[').next().unwrap_or(key);
    overrides
        .iter()
        .find(|(name, _)| {
            // The key itself, a section containing it, or (an error about a whole section,
            // e.g. `[vault.auth]`'s login) a key within it.
            dotted(name).is_some_and(|d| {
                base == d
                    || base.starts_with(&format!("{d}."))
                    || d.starts_with(&format!("{base}."))
            })
        })
        .map(|(name, _)| name.as_str())
}

/// Puts `IVCA_A__B=value` at `a.b` in `table`.
pub(super) fn apply_override(
    table: &mut toml::Table,
    env_name: &str,
    key: &str,
    value: &str,
) -> Result<(), ConfigError> {
    let path: Vec<String> = key.split("__").map(|p| p.to_ascii_lowercase()).collect();
    if path.iter().any(|p| p.is_empty()) {
        return Err(ConfigError::invalid(env_name, "malformed override name"));
    }
    let (last, parents) = path
        .split_last()
        .expect("split yields one element at least");
    let mut cur = table;
    for p in parents {
        let entry = cur
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| ConfigError::invalid(env_name, format!("{p} is not a section")))?;
    }
    cur.insert(last.clone(), env_value(env_name, value)?);
    Ok(())
}

fn env_value(env_name: &str, value: &str) -> Result<toml::Value, ConfigError> {
    let v = value.trim();
    let looks_typed = v == "true" || v == "false" || v.starts_with('[') || is_number(v);
    if !looks_typed {
        return Ok(toml::Value::String(value.to_owned()));
    }
    let doc: toml::Table = format!("v = {v}")
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::invalid(env_name, e.message().to_owned()))?;
    Ok(doc.get("v").cloned().expect("parsed key"))
}

/// `123` or `0.25`: read as TOML numbers (versions like `1.2.3` stay strings).
fn is_number(v: &str) -> bool {
    v.starts_with(|c: char| c.is_ascii_digit())
        && v.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && v.bytes().filter(|&b| b == b'.').count() <= 1
        && !v.ends_with('.')
}
