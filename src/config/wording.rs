//! serde's messages about a config value, said in an operator's words: "expected a whole number
//! from 0 to 4294967295, found the string \"ten\"" instead of "invalid type: string \"ten\",
//! expected u32"; an unknown key with the nearest key the section takes.

/// How the message about a key the section does not take begins.
pub(super) const UNKNOWN_KEY: &str = "unknown key";

/// What a deserialization error at `key` says, as `(key, message)`: a missing key is named
/// itself (serde names its section), an unknown one is named with a suggestion.
pub(super) fn reword(key: &str, message: &str) -> (String, String) {
    if let Some(field) = between(message, "missing field `", "`") {
        return (join(key, field), "is required here".to_owned());
    }
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (field, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let choices = quoted_list(expected);
        let key = if key.ends_with(field) {
            key.to_owned()
        } else {
            join(key, field)
        };
        return (
            key,
            unknown(UNKNOWN_KEY, field, &choices, "this section takes"),
        );
    }
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        let (variant, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let choices = quoted_list(expected);
        return (
            key.to_owned(),
            unknown("unknown value", variant, &choices, "expected one of"),
        );
    }
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix)
            && let Some((found, expected)) = rest.rsplit_once(", expected ")
        {
            return (
                key.to_owned(),
                format!(
                    "expected {}, found {}",
                    expected_words(expected),
                    found_words(found)
                ),
            );
        }
    }
    (key.to_owned(), message.to_owned())
}

fn join(key: &str, field: &str) -> String {
    if key.is_empty() || key == "." {
        field.to_owned()
    } else {
        format!("{key}.{field}")
    }
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let rest = text.strip_prefix(start)?;
    rest.split_once(end).map(|(inside, _)| inside)
}

/// The names in "expected one of `a`, `b`" (or "expected `a`").
fn quoted_list(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

fn unknown(lead: &str, name: &str, choices: &[&str], intro: &str) -> String {
    if let Some(near) = nearest(name, choices) {
        return format!("{lead} `{name}`; did you mean `{near}`?");
    }
    if choices.is_empty() {
        return format!("{lead} `{name}`");
    }
    format!("{lead} `{name}`; {intro}: {}", choices.join(", "))
}

/// The choice a typo most likely meant: within two edits (one for short names).
fn nearest<'a>(name: &str, choices: &[&'a str]) -> Option<&'a str> {
    let limit = if name.chars().count() <= 4 { 1 } else { 2 };
    choices
        .iter()
        .map(|c| (edit_distance(&name.to_ascii_lowercase(), c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

fn expected_words(expected: &str) -> String {
    match expected {
        "u8" => "a whole number from 0 to 255".into(),
        "u16" => "a whole number from 0 to 65535".into(),
        "u32" => "a whole number from 0 to 4294967295".into(),
        "u64" | "usize" | "u128" => "a whole number (0 or more)".into(),
        "i8" | "i16" | "i32" | "i64" | "isize" | "i128" => "a whole number".into(),
        "f32" | "f64" => "a number".into(),
        "a boolean" => "true or false".into(),
        "a string" => "a string in quotes".into(),
        "a sequence" => "a list [...]".into(),
        "a map" => "a table ([section] or { key = value })".into(),
        "a character" => "a single character".into(),
        e if e.starts_with("struct ") => "a table ([section] or { key = value })".into(),
        e => e.to_owned(),
    }
}

fn found_words(found: &str) -> String {
    let tick = |prefix: &str| found.strip_prefix(prefix).map(|v| v.trim_matches('`'));
    if let Some(s) = found.strip_prefix("string ") {
        return format!("the string {s}");
    }
    if let Some(v) = tick("integer ").or_else(|| tick("floating point ")) {
        return format!("the number {v}");
    }
    if let Some(v) = tick("boolean ") {
        return v.to_owned();
    }
    match found {
        "sequence" => "a list".into(),
        "map" => "a table".into(),
        other => other.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_in_an_operators_words() {
        assert_eq!(
            reword(
                "server.limits.max_connections",
                "invalid type: string \"ten\", expected u32"
            ),
            (
                "server.limits.max_connections".into(),
                "expected a whole number from 0 to 4294967295, found the string \"ten\"".into()
            )
        );
        assert_eq!(
            reword(
                "csr.max_bytes",
                "invalid value: integer `-1`, expected usize"
            )
            .1,
            "expected a whole number (0 or more), found the number -1"
        );
        assert_eq!(
            reword(
                "audit.enabled",
                "invalid type: string \"yes\", expected a boolean"
            )
            .1,
            "expected true or false, found the string \"yes\""
        );
        assert_eq!(
            reword(
                "server",
                "invalid type: integer `1`, expected struct ServerConfig"
            )
            .1,
            "expected a table ([section] or { key = value }), found the number 1"
        );
        assert_eq!(
            reword(
                "server.limits.max_conections",
                "unknown field `max_conections`, expected one of `max_connections`, `max_queued`"
            ),
            (
                "server.limits.max_conections".into(),
                "unknown key `max_conections`; did you mean `max_connections`?".into()
            )
        );
        assert_eq!(
            reword(
                "log",
                "unknown field `colour`, expected one of `level`, `format`"
            )
            .1,
            "unknown key `colour`; this section takes: level, format"
        );
        assert_eq!(
            reword("targets[0]", "missing field `mount`"),
            ("targets[0].mount".into(), "is required here".into())
        );
        assert_eq!(
            reword(
                "ttl.over_max",
                "unknown variant `clip`, expected `clamp` or `reject`"
            )
            .1,
            "unknown value `clip`; expected one of: clamp, reject"
        );
        assert_eq!(
            reword("a", "anything else"),
            ("a".into(), "anything else".into())
        );
    }

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("max_conections", "max_connections"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
