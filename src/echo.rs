//! Values a caller sent that are echoed back in errors and logs (`clusterid`,
//! `ImpersonatedIdentity`, a CSR's URI): at most [`LIMIT`] characters, so a client cannot make
//! the signer write its megabyte back into every log line, audit record and status message.

use std::borrow::Cow;

/// Longest echoed value, in characters; longer ones end in `…`.
pub const LIMIT: usize = 128;

/// `value`, cut to [`LIMIT`] characters.
pub fn truncated(value: &str) -> Cow<'_, str> {
    match value.char_indices().nth(LIMIT) {
        None => Cow::Borrowed(value),
        Some((cut, _)) => Cow::Owned(format!("{}…", &value[..cut])),
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
}
