//! What a configuration is read from: the file's text and table, with the `IVCA_*` overrides
//! put into it; turned into a [`Config`], and an error about a key placed at its line:column.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::env::{apply_override, set_by, setter};
use super::positions::{Position, Positions};
use super::wording::{UNKNOWN_KEY, reword};
use super::{Config, ConfigError, ENV_PREFIX};

/// A config file (or none) with the overrides applied, not yet deserialized.
#[derive(Debug, Clone)]
pub(super) struct Source {
    pub(super) path: Option<PathBuf>,
    pub(super) text: String,
    pub(super) table: toml::Table,
    pub(super) overrides: Vec<(String, String)>,
    /// Where each key is written: parsed from `text` once, when an error needs it.
    positions: OnceLock<Positions>,
}

/// The text of `path`, or none without a file.
pub(super) fn read_text(path: Option<&Path>) -> Result<String, ConfigError> {
    match path {
        Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        }),
        None => Ok(String::new()),
    }
}

impl Source {
    /// Reads `path` (no file: an empty table) and applies the `IVCA_*` variables of `env`.
    pub(super) fn read(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        Self::from_text(path, read_text(path)?, env)
    }

    /// [`Source::read`] on `text`, already read from `path`.
    pub(super) fn from_text(
        path: Option<&Path>,
        text: String,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table = text.parse::<toml::Table>().map_err(|e| {
            let at = Position::of(&text, e.span().map_or(0, |s| s.start));
            ConfigError::Syntax {
                path: path.map(Path::to_owned).unwrap_or_default(),
                line: at.line,
                column: at.column,
                message: e.message().trim().to_owned(),
            }
        })?;
        let mut overrides = Vec::new();
        for (name, value) in env {
            if let Some(key) = name.strip_prefix(ENV_PREFIX) {
                apply_override(&mut table, &name, key, &value)?;
                overrides.push((name, value));
            }
        }
        Ok(Self {
            path: path.map(Path::to_owned),
            text,
            table,
            overrides,
            positions: OnceLock::new(),
        })
    }

    /// The configuration this source holds, checked; the first problem found if it has any.
    pub(super) fn config(&self) -> Result<Config, ConfigError> {
        let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(
            self.table.clone(),
        ))
        .map_err(|e| {
            let key = e.path().to_string();
            // toml appends "in `section`" on a line of its own: the key already says it.
            let message = e.into_inner().to_string();
            let (key, message) = reword(&key, message.lines().next().unwrap_or_default());
            ConfigError::invalid(&key, set_by(&key, &self.overrides, message))
        })?;
        config
            .validate()
            .map_err(|e| e.naming_variables(&self.overrides))?;
        config.source = self.path.clone();
        config.overrides = self.overrides.clone();
        Ok(config)
    }

    /// Where in the file the key an error names is written: its value, or for an unknown key
    /// the key itself. `None` for a key a variable set, or one the file has no trace of.
    pub(super) fn position(&self, error: &ConfigError) -> Option<Position> {
        let ConfigError::Invalid { key, message } = error else {
            return None;
        };
        if self.path.is_none() || self.set_by_variable(error) {
            return None;
        }
        let positions = self.positions.get_or_init(|| Positions::parse(&self.text));
        if message.starts_with(UNKNOWN_KEY) {
            positions.key_of(key)
        } else {
            positions.value_of(key)
        }
    }

    /// Whether an `IVCA_*` variable set the key `error` names.
    pub(super) fn set_by_variable(&self, error: &ConfigError) -> bool {
        match error {
            ConfigError::Invalid { key, .. } => setter(key, &self.overrides).is_some(),
            _ => false,
        }
    }

    /// `error`, placed at its line:column in the file when it has one.
    pub(super) fn locate(&self, error: ConfigError) -> ConfigError {
        match (self.position(&error), &self.path) {
            (Some(at), Some(file)) => ConfigError::At {
                file: file.clone(),
                at,
                error: Box::new(error),
            },
            _ => error,
        }
    }
}
