//! Values a caller sent that are echoed back in errors and logs (`clusterid`,
//! `ImpersonatedIdentity`, `CertSigner`, a CSR's URI): at most [`LIMIT`] characters, so a
//! client cannot make the signer write its megabyte back into every log line, audit record and
//! status message, and with control characters replaced (`�`), so it cannot start a forged
//! line in a text log either.

use std::borrow::Cow;

/// Longest echoed value, in characters; longer ones end in `…`.
pub const LIMIT: usize = 128;

/// `value`, cut to [`LIMIT`] characters, control characters replaced.
pub fn truncated(value: &str) -> Cow<'_, str> {
    let cut = match value.char_indices().nth(LIMIT) {
        None => Cow::Borrowed(value),
        Some((cut, _)) => Cow::Owned(format!("{}…", &value[..cut])),
    };
    if cut.chars().any(char::is_control) {
        Cow::Owned(
            cut.chars()
                .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
                .collect(),
        )
    } else {
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_long_values_on_character_boundaries() {
        assert_eq!(truncated("west"), "west");
        let long = "é".repeat(LIMIT + 10);
        let cut = truncated(&long);
        assert_eq!(cut.chars().count(), LIMIT + 1);
        assert!(cut.ends_with('…'));
        assert_eq!(truncated(&"a".repeat(LIMIT)).len(), LIMIT);
    }

    #[test]
    fn control_characters_cannot_forge_log_lines() {
        assert_eq!(
            truncated("west\n2026-11-27T00:00:00Z INFO forged\r\u{1b}[2J"),
            "west\u{FFFD}2026-11-27T00:00:00Z INFO forged\u{FFFD}\u{FFFD}[2J"
        );
        assert!(matches!(truncated("plain"), Cow::Borrowed("plain")));
    }
}
