//! `[ledger]`: the record of every issued certificate, in a KV v2 mount all replicas share.

use super::*;

/// Where and how issued certificates are recorded (README "Issued-certificate ledger",
/// docs/revocation.md). Present means on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    /// The KV version 2 mount (`deploy/vault/setup.py` enables it with the signer's policy).
    pub mount: String,
    /// Folder inside the mount: one ledger per mesh (or per cluster) when several share a mount.
    pub prefix: String,
    /// Which Vault server holds it: a `[vaults.<name>]` key; unset, `[vault]`.
    pub vault: Option<String>,
    /// Records wait at most this long before they are written (the loss window of a crash).
    #[serde(with = "duration")]
    pub flush_interval: Duration,
    /// Records per write at most (one KV value; raft's entry limit is 1 MiB): 1 to 500.
    pub max_batch: usize,
    /// Records waiting to be written at most; more (Vault unreachable for long) are dropped
    /// and counted, never block signing.
    pub max_pending: usize,
    /// Records are filed by NotAfter in folders this wide; a folder is deleted whole once
    /// everything in it has expired.
    #[serde(with = "duration")]
    pub partition: Duration,
    /// How often expired folders are looked for.
    #[serde(with = "duration")]
    pub prune_interval: Duration,
    /// How often each replica re-reads the deny list (`revoke` by identity, namespace or
    /// node): the longest a revoked identity may still renew.
    #[serde(with = "duration")]
    pub deny_refresh: Duration,
}

/// `ledger.mount` when unset.
pub const DEFAULT_LEDGER_MOUNT: &str = "istio-vault-ca-ledger";
/// `ledger.prefix` when unset.
pub const DEFAULT_LEDGER_PREFIX: &str = "issued";
/// `ledger.flush_interval` when unset.
pub const DEFAULT_LEDGER_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// `ledger.max_batch` when unset: ~1 KiB per record keeps a write near 250 KiB.
pub const DEFAULT_LEDGER_MAX_BATCH: usize = 250;
/// `ledger.max_pending` when unset: ~100 MiB at most while Vault is away.
pub const DEFAULT_LEDGER_MAX_PENDING: usize = 100_000;
/// `ledger.partition` when unset.
pub const DEFAULT_LEDGER_PARTITION: Duration = Duration::from_secs(3600);
/// `ledger.prune_interval` when unset.
pub const DEFAULT_LEDGER_PRUNE_INTERVAL: Duration = Duration::from_secs(600);
/// `ledger.deny_refresh` when unset.
pub const DEFAULT_LEDGER_DENY_REFRESH: Duration = Duration::from_secs(10);
/// Largest `ledger.max_batch`: 500 records of ~1.2 KiB stay under raft's 1 MiB entry and
/// under `vault.max_response_bytes`' default when read back.
const MAX_LEDGER_BATCH: usize = 500;

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            mount: DEFAULT_LEDGER_MOUNT.into(),
            prefix: DEFAULT_LEDGER_PREFIX.into(),
            vault: None,
            flush_interval: DEFAULT_LEDGER_FLUSH_INTERVAL,
            max_batch: DEFAULT_LEDGER_MAX_BATCH,
            max_pending: DEFAULT_LEDGER_MAX_PENDING,
            partition: DEFAULT_LEDGER_PARTITION,
            prune_interval: DEFAULT_LEDGER_PRUNE_INTERVAL,
            deny_refresh: DEFAULT_LEDGER_DENY_REFRESH,
        }
    }
}

impl LedgerConfig {
    pub(super) fn validate(
        &self,
        vaults: &std::collections::BTreeMap<String, VaultConfig>,
    ) -> Result<(), ConfigError> {
        check_vault_path("ledger.mount", &self.mount)?;
        crate::kv_path::KvPath::new(&self.prefix.split('/').collect::<Vec<_>>()).map_err(|_| {
            ConfigError::invalid(
                "ledger.prefix",
                "must be folder names of letters, digits, '.', '_' and '-', separated by '/'",
            )
        })?;
        if let Some(name) = &self.vault
            && !vaults.contains_key(name)
        {
            return Err(ConfigError::invalid(
                "ledger.vault",
                format!("no [vaults.{name}] section"),
            ));
        }
        let positive = |key: &str, d: Duration| {
            if d.is_zero() {
                Err(ConfigError::invalid(key, "must be positive"))
            } else {
                Ok(())
            }
        };
        positive("ledger.flush_interval", self.flush_interval)?;
        positive("ledger.prune_interval", self.prune_interval)?;
        positive("ledger.deny_refresh", self.deny_refresh)?;
        if self.partition < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "ledger.partition",
                "must be at least 1s",
            ));
        }
        if !(1..=MAX_LEDGER_BATCH).contains(&self.max_batch) {
            return Err(ConfigError::invalid(
                "ledger.max_batch",
                format!("must be between 1 and {MAX_LEDGER_BATCH}"),
            ));
        }
        if self.max_pending < self.max_batch {
            return Err(ConfigError::invalid(
                "ledger.max_pending",
                "must be at least ledger.max_batch",
            ));
        }
        Ok(())
    }
}
