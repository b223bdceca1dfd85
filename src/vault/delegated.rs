//! Vault-delegated signing (the old Istio Vault CA design): the caller's own JWT is exchanged
//! for a Vault token and that token signs, so every certificate is also authorised by Vault's
//! policy for that workload and recorded in Vault's audit log under its identity.
//!
//! Exchanged tokens are cached by SHA-256 of the JWT until the earlier of the Vault token's
//! and the JWT's expiry, so renewals do not pay a login each (which would halve throughput).

use std::time::{Duration, Instant, SystemTime};

use reqwest::Url;

use super::{SignTarget, SignedCert, VaultClient, VaultError, VaultToken};
use crate::cache::{Digest, ExpiringCache};
use crate::config::DelegatedConfig;
use crate::identity::SpiffeId;

/// A margin so a cached token is not used in its last seconds.
const EXPIRY_MARGIN: Duration = Duration::from_secs(5);
/// Stand-in for "never" when a lifetime does not fit the clock.
const FAR_FUTURE: Duration = Duration::from_secs(365 * 86400);

pub struct Delegation {
    mount: String,
    role: String,
    /// `vault.delegated.sign_role`: replaces the default target's role (other targets sign
    /// with their own role).
    default_sign_url: Option<Url>,
    tokens: ExpiringCache<VaultToken>,
}

impl Delegation {
    pub fn new(vault: &VaultClient, config: &DelegatedConfig) -> Result<Self, VaultError> {
        let default_sign_url = config
            .sign_role
            .as_deref()
            .map(|role| {
                vault
                    .base
                    .join(&format!("sign/{role}"))
                    .map_err(|e| VaultError::Malformed(e.to_string()))
            })
            .transpose()?;
        Ok(Self {
            mount: config.mount.clone(),
            role: config.role.clone(),
            default_sign_url,
            tokens: ExpiringCache::new(config.cache_size),
        })
    }

    /// Where a delegated call for `target` signs.
    fn sign_url(&self, vault: &VaultClient, target: &SignTarget) -> Url {
        match &self.default_sign_url {
            Some(url) if target.sign_url == vault.default_target.sign_url => url.clone(),
            _ => target.sign_url.clone(),
        }
    }
}

impl VaultClient {
    /// Signs with a Vault token obtained from the caller's `jwt` (expiring at `jwt_exp`, unix
    /// seconds). A `403` drops the cached token and logs in once more.
    #[allow(clippy::too_many_arguments)]
    pub async fn delegated_sign(
        &self,
        delegation: &Delegation,
        target: &SignTarget,
        jwt: &str,
        jwt_exp: Option<u64>,
        csr_pem: &str,
        identity: &SpiffeId,
        ttl: Duration,
    ) -> Result<SignedCert, VaultError> {
        let key = crate::sha256(&[jwt.as_bytes()]);
        let mut fresh = false;
        let token = match delegation.tokens.get(&key) {
            Some(t) => t,
            None => {
                fresh = true;
                self.delegated_login(delegation, &key, jwt, jwt_exp).await?
            }
        };
        match self
            .sign_as(delegation, target, &token, csr_pem, identity, ttl)
            .await
        {
            Err(VaultError::Forbidden(_)) if !fresh => {
                delegation.tokens.remove(&key);
                let token = self.delegated_login(delegation, &key, jwt, jwt_exp).await?;
                self.sign_as(delegation, target, &token, csr_pem, identity, ttl)
                    .await
            }
            r => r,
        }
    }

    async fn delegated_login(
        &self,
        delegation: &Delegation,
        key: &Digest,
        jwt: &str,
        jwt_exp: Option<u64>,
    ) -> Result<VaultToken, VaultError> {
        let lease = self
            .login(
                &delegation.mount,
                serde_json::json!({"role": delegation.role, "jwt": jwt}),
            )
            .await
            .map_err(|e| match e {
                VaultError::Rejected(m) | VaultError::Forbidden(m) => VaultError::Delegation(m),
                other => other,
            })?;
        let now = Instant::now();
        // Both lifetimes come from outside (Vault's lease, the caller's `exp`): a far-future
        // value must not overflow the clock; such an entry simply lives as long as the cache.
        let later = |d: Duration| now.checked_add(d.saturating_sub(EXPIRY_MARGIN));
        let mut until = later(lease.ttl).unwrap_or(now + FAR_FUTURE);
        if let Some(exp) = jwt_exp {
            let jwt_left = exp.saturating_sub(crate::time::unix(SystemTime::now()).max(0) as u64);
            if let Some(at) = later(Duration::from_secs(jwt_left)) {
                until = until.min(at);
            }
        }
        delegation.tokens.insert(*key, lease.token.clone(), until);
        Ok(lease.token)
    }

    async fn sign_as(
        &self,
        delegation: &Delegation,
        target: &SignTarget,
        token: &VaultToken,
        csr_pem: &str,
        identity: &SpiffeId,
        ttl: Duration,
    ) -> Result<SignedCert, VaultError> {
        let req = self
            .unauthenticated_in(
                reqwest::Method::POST,
                delegation.sign_url(self, target),
                Some(target),
            )
            .header(super::TOKEN_HEADER, token.0.clone());
        self.post_sign("sign_delegated", target, req, csr_pem, identity, ttl)
            .await
    }
}
