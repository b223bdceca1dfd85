//! The PKI operations of a [`VaultClient`]: workload and serving-certificate signs (with
//! retries and one re-login on `403`), revocation, CRLs and the issuer list.

use std::time::Duration;

use super::nodes::Placement;
use super::wire::{Envelope, IssuerList, SignBody, SignData, signed_from};
use super::{Issuer, SignTarget, SignedCert, VaultClient, VaultError};
use crate::backoff::Backoff;
use crate::identity::SpiffeId;

/// First delay before retrying a sign call after a transient failure; doubles per attempt.
const SIGN_RETRY_FIRST: Duration = Duration::from_millis(100);
const SIGN_RETRY_MAX: Duration = Duration::from_secs(2);

impl VaultClient {
    /// A request with the signer's token to `<mount>/<path>` of `target`.
    fn mount_request(
        &self,
        method: reqwest::Method,
        target: &SignTarget,
        path: &str,
    ) -> Result<reqwest::RequestBuilder, VaultError> {
        let url = target
            .mount_url
            .join(path)
            .map_err(|e| VaultError::Malformed(e.to_string()))?;
        Ok(self.request_in(method, url, Some(target)))
    }

    /// `POST <mount>/sign/<role>` of `target` with the authorized identity as the only URI SAN.
    /// Transient failures are retried up to `vault.retries` times with jittered exponential
    /// backoff (the caller's deadline still bounds the whole); a `403` asks for a new token
    /// once and retries once with it.
    pub async fn sign(
        &self,
        target: &SignTarget,
        csr_pem: &str,
        identity: &SpiffeId,
        ttl: Duration,
    ) -> Result<SignedCert, VaultError> {
        let mut attempt = 0;
        let mut backoff = Backoff::new(SIGN_RETRY_FIRST, SIGN_RETRY_MAX).jittered();
        loop {
            match self.sign_with_relogin(target, csr_pem, identity, ttl).await {
                Err(e) if e.is_retryable() && attempt < self.retries => {
                    attempt += 1;
                    tokio::time::sleep(backoff.next_delay()).await;
                    tracing::debug!(attempt, error = %e, "retrying Vault sign");
                }
                r => return r,
            }
        }
    }

    async fn sign_with_relogin(
        &self,
        target: &SignTarget,
        csr_pem: &str,
        identity: &SpiffeId,
        ttl: Duration,
    ) -> Result<SignedCert, VaultError> {
        let generation = self.auth.generation();
        match self.sign_once(target, csr_pem, identity, ttl).await {
            Err(VaultError::Forbidden(m)) => {
                if self
                    .auth
                    .replace_after_forbidden(generation, self.timeout)
                    .await
                {
                    self.sign_once(target, csr_pem, identity, ttl).await
                } else {
                    Err(VaultError::Forbidden(m))
                }
            }
            r => r,
        }
    }

    async fn sign_once(
        &self,
        target: &SignTarget,
        csr_pem: &str,
        identity: &SpiffeId,
        ttl: Duration,
    ) -> Result<SignedCert, VaultError> {
        let req = self.request_in(reqwest::Method::POST, target.sign_url.clone(), Some(target));
        self.post_sign("sign", target, req, csr_pem, identity, ttl)
            .await
    }

    /// Posts a workload sign request for `target` (`req` carries the URL and the token).
    pub(super) async fn post_sign(
        &self,
        op: &'static str,
        target: &SignTarget,
        req: reqwest::RequestBuilder,
        csr_pem: &str,
        identity: &SpiffeId,
        ttl: Duration,
    ) -> Result<SignedCert, VaultError> {
        let body = SignBody {
            csr: csr_pem,
            uri_sans: identity.to_string(),
            ttl: format!("{}s", ttl.as_secs()),
            format: "pem",
            exclude_cn_from_sans: true,
        };
        let placement = if target.standbys_sign {
            Placement::Spread
        } else {
            Placement::Active
        };
        let env: Envelope<SignData> = self.send_placed(op, req.json(&body), placement).await?;
        signed_from(env)
    }

    /// `POST <mount>/sign/<role>` for the signer's own serving certificate: DNS names and IP
    /// addresses as `common_name`/`alt_names`/`ip_sans`.
    pub async fn sign_serving(
        &self,
        role: &str,
        csr_pem: &str,
        dns: &[String],
        ips: &[String],
        ttl: Duration,
    ) -> Result<SignedCert, VaultError> {
        let url = self
            .base
            .join(&format!("sign/{role}"))
            .map_err(|e| VaultError::Malformed(e.to_string()))?;
        let body = serde_json::json!({
            "csr": csr_pem,
            "common_name": dns.first().cloned().unwrap_or_default(),
            "alt_names": dns.join(","),
            "ip_sans": ips.join(","),
            "ttl": format!("{}s", ttl.as_secs()),
            "format": "pem",
        });
        let env: Envelope<SignData> = self
            .send(
                "sign_serving",
                self.request(reqwest::Method::POST, url).json(&body),
            )
            .await?;
        signed_from(env)
    }

    /// Revokes a certificate of `target`'s mount by its PEM (`POST <mount>/revoke` with
    /// `certificate`: how a `no_store` certificate is revoked); returns Vault's revocation
    /// time (Unix seconds). The issuer's CRL lists it from its next rebuild on.
    pub async fn revoke(
        &self,
        target: &SignTarget,
        certificate_pem: &str,
    ) -> Result<i64, VaultError> {
        #[derive(serde::Deserialize)]
        struct Revoked {
            #[serde(default)]
            revocation_time: i64,
        }
        let body = serde_json::json!({ "certificate": certificate_pem });
        let req = self.mount_request(reqwest::Method::POST, target, "revoke")?;
        let env: Envelope<Revoked> = self.send("revoke", req.json(&body)).await?;
        Ok(env.data.map_or(0, |d| d.revocation_time))
    }

    /// Has Vault rebuild the CRLs of `target`'s mount now (`crl/rotate`): with
    /// `auto_rebuild` on, a revocation alone waits for the next periodic rebuild.
    pub async fn rotate_crl(&self, target: &SignTarget) -> Result<(), VaultError> {
        let req = self.mount_request(reqwest::Method::GET, target, "crl/rotate")?;
        let _: serde_json::Value = self.send("crl_rotate", req).await?;
        Ok(())
    }

    /// The CRL of one issuer of `target`'s mount, DER (`issuer/<id>/crl`): what Vault last
    /// built; check it with `crl::check` before trusting it.
    pub async fn issuer_crl(
        &self,
        target: &SignTarget,
        issuer_id: &str,
    ) -> Result<Vec<u8>, VaultError> {
        #[derive(serde::Deserialize)]
        struct Crl {
            crl: String,
        }
        if issuer_id.is_empty()
            || !issuer_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(VaultError::Malformed(format!("issuer id {issuer_id:?}")));
        }
        let path = format!("issuer/{issuer_id}/crl");
        let req = self.mount_request(reqwest::Method::GET, target, &path)?;
        let env: Envelope<Crl> = self.send("crl", req).await?;
        let pem_text = env
            .data
            .ok_or_else(|| VaultError::Malformed(format!("issuer {issuer_id} CRL has no data")))?
            .crl;
        pem::parse(pem_text.trim())
            .map(pem::Pem::into_contents)
            .map_err(|e| VaultError::Malformed(format!("issuer {issuer_id} CRL: {e}")))
    }

    /// Every issuer of `target`'s mount (`LIST <mount>/issuers`, then `issuer/<id>/json`).
    pub async fn issuers(&self, target: &SignTarget) -> Result<Vec<Issuer>, VaultError> {
        let req = self.mount_request(reqwest::Method::GET, target, "issuers?list=true")?;
        let mut list = match self.send::<Envelope<IssuerList>>("issuers", req).await {
            Ok(list) => list.data.unwrap_or_default(),
            // Vault answers an empty LIST with 404 and `{"errors":[]}`.
            Err(VaultError::Unexpected {
                status: 404,
                message,
            }) if message.is_empty() => IssuerList::default(),
            Err(e) => return Err(e),
        };
        let mut out = Vec::with_capacity(list.keys.len());
        for id in list.keys {
            if id.is_empty() || id.contains('/') || id.contains("..") {
                return Err(VaultError::Malformed(format!("issuer id {id:?}")));
            }
            let mut issuer = self.issuer(target, &id).await?;
            issuer.key_id = list.key_info.remove(&id).unwrap_or_default().key_id;
            out.push(issuer);
        }
        Ok(out)
    }

    /// One issuer of `target`'s mount by id or name (`issuer/<ref>/json`; `default` is the
    /// mount's default issuer).
    pub async fn issuer(&self, target: &SignTarget, reference: &str) -> Result<Issuer, VaultError> {
        let path = format!("issuer/{reference}/json");
        let req = self.mount_request(reqwest::Method::GET, target, &path)?;
        let env: Envelope<Issuer> = self.send("issuer", req).await?;
        env.data
            .ok_or_else(|| VaultError::Malformed(format!("issuer {reference} has no data")))
    }
}
