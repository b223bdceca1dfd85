//! The ledger's layout in the KV mount: batches filed by NotAfter window, read back whole,
//! deleted a window at a time once it has passed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{DenyEntry, DenyKind, DenyList, Record};
use crate::config::LedgerConfig;
use crate::vault::{KvPath, VaultClient, VaultError};

/// The ledger in one KV mount, as every replica and the operator's tools see it.
#[derive(Clone, Debug)]
pub struct LedgerStore {
    vault: VaultClient,
    mount: String,
    prefix: Vec<String>,
    /// Width of a NotAfter window, seconds.
    partition: i64,
}

/// One KV value: a batch of records, one JSON record per line in a single string. Vault and
/// OpenBao refuse a request body with more than `max_request_json_strings` strings (1,000 by
/// default since HCSEC-2025-24), keys included: as JSON objects, a batch of 40 records would
/// already exceed it; as one string, any batch within raft's entry size fits.
#[derive(Serialize, Deserialize)]
struct Batch {
    /// [`BATCH_FORMAT`].
    format: String,
    records: String,
}

/// `format` of the batches this version writes and reads.
const BATCH_FORMAT: &str = "jsonl-1";

impl Batch {
    fn encode(records: &[Record]) -> Self {
        let mut lines = String::new();
        for r in records {
            if !lines.is_empty() {
                lines.push('\n');
            }
            lines.push_str(&serde_json::to_string(r).expect("a record serializes"));
        }
        Self {
            format: BATCH_FORMAT.into(),
            records: lines,
        }
    }

    fn decode(self) -> Result<Vec<Record>, VaultError> {
        if self.format != BATCH_FORMAT {
            return Err(VaultError::Malformed(format!(
                "ledger batch in format {:?}, expected {BATCH_FORMAT:?}",
                self.format
            )));
        }
        self.records
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .map_err(|e| VaultError::Malformed(format!("ledger record: {e}")))
            })
            .collect()
    }
}

impl LedgerStore {
    pub fn new(vault: VaultClient, config: &LedgerConfig) -> Self {
        Self {
            vault,
            mount: config.mount.clone(),
            prefix: config.prefix.split('/').map(str::to_owned).collect(),
            partition: config.partition.as_secs().max(1) as i64,
        }
    }

    fn path(&self, rest: &[&str]) -> Result<KvPath, VaultError> {
        let mut segments: Vec<&str> = self.prefix.iter().map(String::as_str).collect();
        segments.extend_from_slice(rest);
        KvPath::new(&segments).map_err(|e| VaultError::Malformed(e.to_string()))
    }

    /// The window (its start, Unix seconds) that files a record expiring at `not_after`.
    pub fn window_of(&self, not_after: i64) -> i64 {
        not_after.div_euclid(self.partition) * self.partition
    }

    /// Writes `records` as one value per window they fall in, named `<name>` in each.
    /// Returns after every value is written; on error some windows may have been written
    /// (a retry writes them again under the same name: the newest version wins, no duplicate).
    pub async fn write(&self, name: &str, records: &[Record]) -> Result<(), VaultError> {
        let mut by_window: BTreeMap<i64, Vec<Record>> = BTreeMap::new();
        for r in records {
            by_window
                .entry(self.window_of(r.not_after))
                .or_default()
                .push(r.clone());
        }
        for (window, records) in by_window {
            let path = self.path(&[&window.to_string(), name])?;
            self.vault
                .kv_put(&self.mount, &path, &Batch::encode(&records))
                .await?;
        }
        Ok(())
    }

    /// The windows that hold records, oldest first.
    pub async fn windows(&self) -> Result<Vec<i64>, VaultError> {
        let mut windows: Vec<i64> = self
            .vault
            .kv_list(&self.mount, &self.path(&[])?)
            .await?
            .iter()
            .filter_map(|k| k.strip_suffix('/')?.parse().ok())
            .collect();
        windows.sort_unstable();
        Ok(windows)
    }

    /// Every record filed in `window`.
    pub async fn window(&self, window: i64) -> Result<Vec<Record>, VaultError> {
        let folder = self.path(&[&window.to_string()])?;
        let mut out = Vec::new();
        for key in self.vault.kv_list(&self.mount, &folder).await? {
            if key.ends_with('/') {
                continue;
            }
            let path = self.path(&[&window.to_string(), &key])?;
            if let Some(batch) = self.vault.kv_get::<Batch>(&self.mount, &path).await? {
                out.extend(batch.decode()?);
            }
        }
        Ok(out)
    }

    /// Every record of a certificate still valid at `now` (Unix seconds).
    pub async fn live(&self, now: i64) -> Result<Vec<Record>, VaultError> {
        let mut out = Vec::new();
        for w in self.windows().await? {
            if w + self.partition <= now {
                continue;
            }
            out.extend(
                self.window(w)
                    .await?
                    .into_iter()
                    .filter(|r| r.not_after > now),
            );
        }
        Ok(out)
    }

    /// The live records `selector` picks, oldest issued first (what `ledger` lists and
    /// `revoke` revokes).
    pub async fn select(
        &self,
        selector: &super::Selector,
        now: i64,
    ) -> Result<Vec<Record>, VaultError> {
        let mut records: Vec<Record> = self
            .live(now)
            .await?
            .into_iter()
            .filter(|r| selector.matches(r))
            .collect();
        records.sort_by(|a, b| (a.issued_at, &a.serial).cmp(&(b.issued_at, &b.serial)));
        Ok(records)
    }

    /// Deletes every window that ended at or before `now`; returns how many batches went.
    pub async fn prune(&self, now: i64) -> Result<usize, VaultError> {
        let mut deleted = 0;
        for w in self.windows().await? {
            if w + self.partition > now {
                continue;
            }
            let folder = self.path(&[&w.to_string()])?;
            for key in self.vault.kv_list(&self.mount, &folder).await? {
                if key.ends_with('/') {
                    continue;
                }
                let path = self.path(&[&w.to_string(), &key])?;
                self.vault.kv_delete(&self.mount, &path).await?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// Puts `entry` in force (replacing one for the same value).
    pub async fn deny(&self, entry: &DenyEntry) -> Result<(), VaultError> {
        let path = self.path(&["deny", entry.kind.as_str(), &DenyEntry::key(&entry.value)])?;
        self.vault.kv_put(&self.mount, &path, entry).await
    }

    /// Lifts the entry for `value`; false when there was none.
    pub async fn undeny(&self, kind: DenyKind, value: &str) -> Result<bool, VaultError> {
        let path = self.path(&["deny", kind.as_str(), &DenyEntry::key(value)])?;
        if self
            .vault
            .kv_get::<DenyEntry>(&self.mount, &path)
            .await?
            .is_none()
        {
            return Ok(false);
        }
        self.vault.kv_delete(&self.mount, &path).await?;
        Ok(true)
    }

    /// Every entry in force.
    pub async fn deny_list(&self) -> Result<DenyList, VaultError> {
        let mut entries = Vec::new();
        for kind in DenyKind::ALL {
            let folder = self.path(&["deny", kind.as_str()])?;
            for key in self.vault.kv_list(&self.mount, &folder).await? {
                if key.ends_with('/') {
                    continue;
                }
                let path = self.path(&["deny", kind.as_str(), &key])?;
                if let Some(entry) = self.vault.kv_get::<DenyEntry>(&self.mount, &path).await? {
                    entries.push(entry);
                }
            }
        }
        Ok(DenyList::new(entries))
    }
}
