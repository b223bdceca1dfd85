//! Every problem of a configuration at once, in file order, each at its line:column: what
//! `check-config` reports (`serve` stops at the first).
//!
//! After each problem the offending key is taken out of the table (its default stands in) and
//! the whole configuration is read again, so each later problem is one the file really has.
//! A problem whose key cannot be taken out (a required key that is absent, a rule about two
//! keys) ends the search: what would follow depends on the fix.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use toml::de::DeTable;

use super::key_path::{remove, steps};
use super::positions::Position;
use super::source::{Source, read_text};
use super::{Config, ConfigError};

/// At most this many problems are reported for one file.
pub const MAX_PROBLEMS: usize = 50;

/// One thing wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where the file holds it, if it does (not for a key an `IVCA_*` variable set).
    pub at: Option<Position>,
    /// Whether an `IVCA_*` variable set it (the text names the variable; no file is named).
    pub from_variable: bool,
    /// The dotted key and what is wrong with it, e.g. `vault.timeout: "5 sec" is not a duration`.
    pub text: String,
}

/// The outcome of checking a configuration.
#[derive(Debug)]
pub struct Checked {
    /// The file checked, if any.
    pub file: Option<PathBuf>,
    /// Its problems in file order (those without a position last, in the order found).
    pub problems: Vec<Problem>,
    /// The configuration, when there is no problem.
    pub config: Option<Config>,
}

impl fmt::Display for Checked {
    /// One line per problem: `file:line:column: key: message`, as compilers print them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.problems {
            match (&self.file, p.at) {
                (Some(file), Some(at)) => writeln!(f, "{}:{at}: {}", file.display(), p.text)?,
                (Some(file), None) if !p.from_variable => {
                    writeln!(f, "{}: {}", file.display(), p.text)?
                }
                _ => writeln!(f, "{}", p.text)?,
            }
        }
        Ok(())
    }
}

/// Reads `path` and the `IVCA_*` variables of `env` as [`Config::load`] does, and finds every
/// problem (up to [`MAX_PROBLEMS`]).
pub fn check(path: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Checked {
    let file = path.map(Path::to_owned);
    let unplaced = |e: ConfigError| Problem {
        at: None,
        from_variable: false,
        text: e.to_string(),
    };
    let text = match read_text(path) {
        Ok(text) => text,
        Err(e) => {
            return Checked {
                problems: vec![unplaced(e)],
                file: None,
                config: None,
            };
        }
    };
    let mut source = match Source::from_text(path, text.clone(), env) {
        Ok(source) => source,
        Err(ConfigError::Syntax { .. }) => {
            return Checked {
                problems: syntax_problems(&text),
                file,
                config: None,
            };
        }
        Err(e) => {
            return Checked {
                problems: vec![unplaced(e)],
                file,
                config: None,
            };
        }
    };
    let mut problems = Vec::new();
    let mut reported = HashSet::new();
    let mut config = None;
    while problems.len() < MAX_PROBLEMS {
        let error = match source.config() {
            Ok(c) => {
                config = problems.is_empty().then_some(c);
                break;
            }
            Err(e) => e,
        };
        let key = match &error {
            ConfigError::Invalid { key, .. } => Some(key.clone()),
            _ => None,
        };
        problems.push(Problem {
            at: source.position(&error),
            from_variable: source.set_by_variable(&error),
            text: error.to_string(),
        });
        let Some(key) = key else { break };
        if !reported.insert(key.clone()) {
            // Taking it out brought back a problem with the same key: it is required.
            problems.pop();
            break;
        }
        let taken_out = steps(&key).is_some_and(|s| remove(&mut source.table, &s));
        if !taken_out {
            break;
        }
    }
    problems.sort_by_key(|p| (p.at.is_none(), p.at));
    Checked {
        file,
        problems,
        config,
    }
}

/// Every TOML syntax error of `text` (the parser recovers and goes on).
fn syntax_problems(text: &str) -> Vec<Problem> {
    let (_, errors) = DeTable::parse_recoverable(text);
    let mut problems: Vec<Problem> = errors
        .iter()
        .take(MAX_PROBLEMS)
        .map(|e| Problem {
            at: Some(Position::of(text, e.span().map_or(0, |s| s.start))),
            from_variable: false,
            text: format!("not valid TOML: {}", e.message().trim()),
        })
        .collect();
    problems.sort_by_key(|p| p.at);
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config cut off anywhere (an editor's half-saved file, a paste gone wrong) is reported,
    /// never a panic: every prefix of the shipped config at 3-byte steps, each problem placed
    /// within the text it names, and the whole file itself without a problem.
    #[test]
    fn any_truncation_of_a_real_config_is_reported_not_a_panic() {
        let text = include_str!("../../deploy/kubernetes/base/config.toml");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let mut cut = 0;
        while cut < text.len() {
            if text.is_char_boundary(cut) {
                let part = &text[..cut];
                std::fs::write(&path, part).unwrap();
                let checked = check(Some(&path), Vec::new());
                let lines = part.lines().count().max(1);
                for p in &checked.problems {
                    if let Some(at) = p.at {
                        assert!(
                            at.line <= lines + 1,
                            "{at} beyond {lines} lines: {}",
                            p.text
                        );
                    }
                }
                assert!(checked.problems.len() <= MAX_PROBLEMS);
            }
            cut += 3;
        }
        std::fs::write(&path, text).unwrap();
        let whole = check(Some(&path), Vec::new());
        assert!(whole.problems.is_empty(), "{whole}");
        assert!(whole.config.is_some());
    }
}
