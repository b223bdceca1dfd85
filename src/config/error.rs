//! Why the configuration cannot be used.

use std::path::PathBuf;

use super::env::set_by;
use super::positions::Position;

/// Why the configuration cannot be used. Each variant names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}:{column}: not valid TOML: {message}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
    /// An error about a key, with where the file holds it.
    #[error("{}:{at}: {error}", file.display())]
    At {
        file: PathBuf,
        at: Position,
        error: Box<ConfigError>,
    },
}

impl ConfigError {
    /// The same error, naming the `IVCA_*` variable that set its key, if one did.
    pub(super) fn naming_variables(self, overrides: &[(String, String)]) -> Self {
        match self {
            Self::Invalid { key, message } => {
                let message = set_by(&key, overrides, message);
                Self::Invalid { key, message }
            }
            other => other,
        }
    }

    /// The same error with its key's leading `from` section renamed `to` (a section checked
    /// by the rules of another, e.g. `[vaults.<name>]` by those of `[vault]`).
    pub(super) fn moved(self, from: &str, to: &str) -> Self {
        match self {
            Self::Invalid { key, message } => {
                let key = match key.strip_prefix(from) {
                    Some(rest) if rest.is_empty() || rest.starts_with('.') => format!("{to}{rest}"),
                    _ => key,
                };
                Self::Invalid { key, message }
            }
            other => other,
        }
    }

    /// The error without its position in the file.
    pub fn unplaced(&self) -> &ConfigError {
        match self {
            Self::At { error, .. } => error,
            other => other,
        }
    }

    pub(super) fn invalid(key: &str, message: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.to_owned(),
            message: message.into(),
        }
    }
}
