//! istiod's serving certificate, issued and renewed by the signer (`[istiod_certificate]`).
//!
//! With its own CA off, istiod still needs a serving certificate from the mesh PKI for its xDS
//! port (`istiod-tls`: `tls.crt`, `tls.key`, `ca.crt`). The signer generates the key in
//! memory, has Vault's role sign istiod's names, checks that the key matches the certificate
//! and that every name is in it, and writes the Secret by server-side apply; it renews at two
//! thirds of the lifetime and again when the trust bundle changes (so `ca.crt` follows a root
//! rotation). A Secret that is already current (valid, same names, same `ca.crt`, key
//! matching) is kept across restarts. Failures (Vault down, RBAC refusing the write) are
//! logged and counted and retried with backoff; the Secret in place keeps serving.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};

use crate::bundle::SharedBundle;
use crate::config::IstiodCertificateConfig;
use crate::tls::{TlsError, check_pair, issue_for_names, not_after};
use crate::vault::VaultClient;

/// Field manager of the signer's server-side applies.
const FIELD_MANAGER: &str = "istio-vault-ca";
/// How often the trust bundle is compared with the Secret's `ca.crt`.
const BUNDLE_CHECK: Duration = Duration::from_secs(10);

/// Why the Secret could not be written.
#[derive(Debug, thiserror::Error)]
pub enum IstiodCertError {
    #[error("issuing istiod's certificate: {0}")]
    Issue(#[from] TlsError),
    #[error("writing Secret {namespace}/{name}: {source}")]
    Write {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// What the Secret holds when it is current: NotAfter of its certificate.
struct Current {
    not_after: i64,
    ca: String,
}

/// Keeps the Secret current until `shutdown`.
pub async fn maintain(
    client: kube::Client,
    vault: VaultClient,
    config: IstiodCertificateConfig,
    bundle: SharedBundle,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let api: kube::Api<Secret> = kube::Api::namespaced(client, &config.namespace);
    let mut backoff = crate::backoff::Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    let served = bundle.load().pem().to_owned();
    let mut current = match existing(&api, &config, &served).await {
        Some(c) => {
            tracing::info!(
                namespace = %config.namespace,
                secret = %config.secret,
                not_after = c.not_after,
                "istiod's certificate in place is current; renewing it at two thirds of its life"
            );
            crate::metrics::istiod_certificate(c.not_after);
            Some(c)
        }
        None => None,
    };
    let mut renew_at = current.as_ref().map(renewal_time);
    loop {
        let due = match (&current, renew_at) {
            (None, _) | (_, None) => true,
            (Some(c), Some(at)) => tokio::time::Instant::now() >= at || c.ca != bundle.load().pem(),
        };
        if due {
            match write(&api, &vault, &config, &bundle).await {
                Ok(c) => {
                    crate::metrics::istiod_certificate_write(true);
                    crate::metrics::istiod_certificate(c.not_after);
                    tracing::info!(
                        namespace = %config.namespace,
                        secret = %config.secret,
                        not_after = c.not_after,
                        "wrote istiod's serving certificate"
                    );
                    backoff.reset();
                    renew_at = Some(renewal_time(&c));
                    current = Some(c);
                }
                Err(e) => {
                    crate::metrics::istiod_certificate_write(false);
                    let retry_in = backoff.next_delay();
                    tracing::error!(error = %e, ?retry_in, "could not renew istiod's serving certificate; the Secret in place is kept");
                    renew_at = Some(tokio::time::Instant::now() + retry_in);
                    if current.is_none() {
                        // Nothing valid was ever written by us: keep retrying on the backoff.
                        tokio::select! {
                            _ = tokio::time::sleep(retry_in) => {}
                            _ = shutdown.changed() => return,
                        }
                        continue;
                    }
                }
            }
        }
        let wait = renew_at
            .map(|at| at.saturating_duration_since(tokio::time::Instant::now()))
            .unwrap_or(BUNDLE_CHECK)
            .min(BUNDLE_CHECK);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Two thirds into what is left of the certificate's life, from now.
fn renewal_time(c: &Current) -> tokio::time::Instant {
    tokio::time::Instant::now() + crate::time::renewal_wait_until(c.not_after)
}

/// The Secret in place, if it is current: its pair loads (key matches, valid now), it names
/// every configured name and its `ca.crt` is today's bundle.
async fn existing(
    api: &kube::Api<Secret>,
    config: &IstiodCertificateConfig,
    bundle_pem: &str,
) -> Option<Current> {
    let secret = api.get_opt(&config.secret).await.ok()??;
    let data = secret.data?;
    let field = |k: &str| data.get(k).map(|v| v.0.clone());
    let (cert, key, ca) = (field("tls.crt")?, field("tls.key")?, field("ca.crt")?);
    let pair = check_pair(&cert, &key).ok()?;
    let ca = String::from_utf8(ca).ok()?;
    if ca != bundle_pem || !names_present(&cert, &config.names) {
        return None;
    }
    Some(Current {
        not_after: not_after(&pair),
        ca,
    })
}

fn names_present(chain_pem: &[u8], names: &[String]) -> bool {
    let sans = crate::pem_text::certificates(chain_pem)
        .ok()
        .and_then(|certs| crate::tls::dns_and_ip_names(certs.first()?).ok());
    sans.is_some_and(|sans| names.iter().all(|n| sans.contains(n)))
}

/// Issues a new pair and applies the Secret; the pair was checked by `issue_for_names`.
async fn write(
    api: &kube::Api<Secret>,
    vault: &VaultClient,
    config: &IstiodCertificateConfig,
    bundle: &SharedBundle,
) -> Result<Current, IstiodCertError> {
    let pair = issue_for_names(vault, &config.role, &config.names, config.ttl).await?;
    let ca = bundle.load().pem().to_owned();
    let data: BTreeMap<String, ByteString> = [
        ("tls.crt", pair.chain_pem.as_bytes()),
        ("tls.key", pair.key_pem.as_bytes()),
        ("ca.crt", ca.as_bytes()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), ByteString(v.to_vec())))
    .collect();
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(config.secret.clone()),
            namespace: Some(config.namespace.clone()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_owned(),
                FIELD_MANAGER.to_owned(),
            )])),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(data),
        ..Default::default()
    };
    api.patch(
        &config.secret,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&secret),
    )
    .await
    .map_err(|source| IstiodCertError::Write {
        namespace: config.namespace.clone(),
        name: config.secret.clone(),
        source,
    })?;
    Ok(Current {
        not_after: not_after(&pair.certified),
        ca,
    })
}
