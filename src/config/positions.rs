//! Where each key of a config file is written: errors about a key point at its line and column.

use std::collections::HashMap;
use std::fmt;

use toml::de::{DeTable, DeValue};

/// A 1-based line and column in the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

impl Position {
    /// The position of byte `offset` in `text`.
    pub(super) fn of(text: &str, offset: usize) -> Self {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = before.chars().rev().take_while(|&c| c != '\n').count() + 1;
        Self { line, column }
    }
}

/// The keys of one file, by dotted path (`server.limits.max_connections`, `targets[1].mount`):
/// where the key is written and where its value starts.
#[derive(Debug, Clone, Default)]
pub(super) struct Positions {
    keys: HashMap<String, (Position, Position)>,
}

impl Positions {
    /// The positions of every key `text` holds (as much of it as parses).
    pub(super) fn parse(text: &str) -> Self {
        let (doc, _) = DeTable::parse_recoverable(text);
        let mut positions = Self::default();
        positions.walk_table(text, "", doc.get_ref());
        positions
    }

    fn walk_table(&mut self, text: &str, prefix: &str, table: &DeTable<'_>) {
        for (key, value) in table {
            let path = if prefix.is_empty() {
                key.get_ref().to_string()
            } else {
                format!("{prefix}.{}", key.get_ref())
            };
            let at_key = Position::of(text, key.span().start);
            let at_value = Position::of(text, value.span().start);
            self.walk_value(text, path, at_key, at_value, value.get_ref());
        }
    }

    fn walk_value(
        &mut self,
        text: &str,
        path: String,
        at_key: Position,
        at_value: Position,
        value: &DeValue<'_>,
    ) {
        match value {
            DeValue::Table(t) => self.walk_table(text, &path, t),
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let at = Position::of(text, item.span().start);
                    self.walk_value(text, format!("{path}[{i}]"), at, at, item.get_ref());
                }
            }
            _ => {}
        }
        self.keys.entry(path).or_insert((at_key, at_value));
    }

    /// Where the value of `key` starts; for a key the file does not hold, where its nearest
    /// enclosing key is written (a missing key is reported at its section).
    pub(super) fn value_of(&self, key: &str) -> Option<Position> {
        if let Some((_, value)) = self.keys.get(key) {
            return Some(*value);
        }
        self.key_of(key)
    }

    /// Where `key` itself is written, or its nearest enclosing key.
    pub(super) fn key_of(&self, key: &str) -> Option<Position> {
        let mut key = key;
        loop {
            if let Some((at, _)) = self.keys.get(key) {
                return Some(*at);
            }
            let cut = key.rfind(['.', '['])?;
            key = &key[..cut];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_are_found() {
        let text = "trust_domain = \"x\"\n[server.limits]\n  max_connections = 5\n[[targets]]\nname = \"a\"\n[[targets]]\nmount = \"pki\"\n";
        let p = Positions::parse(text);
        let at = |line, column| Some(Position { line, column });
        assert_eq!(p.value_of("trust_domain"), at(1, 16));
        assert_eq!(p.key_of("server.limits.max_connections"), at(3, 3));
        assert_eq!(p.value_of("server.limits.max_connections"), at(3, 21));
        assert_eq!(p.value_of("targets[1].mount"), at(7, 9));
        // Absent keys: their section.
        assert_eq!(p.value_of("server.limits.max_queued"), at(2, 9));
        assert_eq!(p.value_of("targets[0].mount"), p.key_of("targets[0]"));
        assert_eq!(p.value_of("vault.addr"), None);
    }

    #[test]
    fn positions_count_characters() {
        assert_eq!(Position::of("ä = 1", 4), Position { line: 1, column: 4 });
        assert_eq!(Position::of("a\nb", 2), Position { line: 2, column: 1 });
        assert_eq!(Position::of("a", 99), Position { line: 1, column: 2 });
    }
}
