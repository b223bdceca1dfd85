//! Every Vault server the signer signs on: `[vault]` and each `[vaults.<name>]`, each with its
//! own client (token, connection pool, nodes, breaker). Targets pick theirs by name.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::VaultClient;

/// The clients of `[vault]` and of every `[vaults.<name>]`, started together.
#[derive(Debug, Clone)]
pub struct VaultSet {
    default: VaultClient,
    named: Arc<BTreeMap<String, VaultClient>>,
}

impl VaultSet {
    /// `[vault]` alone.
    pub fn single(default: VaultClient) -> Self {
        Self::new(default, BTreeMap::new())
    }

    pub fn new(default: VaultClient, named: BTreeMap<String, VaultClient>) -> Self {
        Self {
            default,
            named: Arc::new(named),
        }
    }

    /// The client of `name` (`None`: `[vault]`'s), if that server was configured at start.
    pub fn get(&self, name: Option<&str>) -> Option<&VaultClient> {
        match name {
            None => Some(&self.default),
            Some(name) => self.named.get(name),
        }
    }

    /// `[vault]`'s client.
    pub fn default_client(&self) -> &VaultClient {
        &self.default
    }

    /// Every client with its server's name: `[vault]` (`None`) first, then each
    /// `[vaults.<name>]`.
    pub fn all(&self) -> impl Iterator<Item = (Option<&str>, &VaultClient)> {
        std::iter::once((None, &self.default))
            .chain(self.named().map(|(name, client)| (Some(name), client)))
    }

    /// Every `[vaults.<name>]` client, by name.
    pub fn named(&self) -> impl Iterator<Item = (&str, &VaultClient)> {
        self.named
            .iter()
            .map(|(name, client)| (name.as_str(), client))
    }
}
