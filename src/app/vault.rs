//! The Vault clients as the signer starts them: login (waiting for Vault or retrying in the
//! background), the tasks that keep each current, and start-up calls retried while Vault is
//! transiently away.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use crate::routing::RoutingError;
use crate::tls;
use crate::vault::{Credentials, VaultClient, VaultError};

/// How long start-up waits for Vault to answer the first trust-bundle read.
pub(super) const STARTUP_VAULT_WAIT: Duration = Duration::from_secs(30);

/// Starts the client of `[vault]` (`name` None) or of `[vaults.<name>]`: logs in (waiting
/// for Vault when `wait`, else retrying in the background) and keeps its token, TLS files
/// and, for a cluster, its nodes' health current until shutdown.
pub(super) async fn start_vault(
    name: Option<&str>,
    config: &crate::config::VaultConfig,
    wait: bool,
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<VaultClient> {
    let section = crate::config::vault_section(name);
    // `$VAULT_TOKEN` / `$BAO_TOKEN` are `[vault]`'s: another server never sees them.
    let env = |k: &str| name.is_none().then(|| std::env::var(k).ok()).flatten();
    let creds =
        Credentials::from_config(config, env).with_context(|| format!("{section} credentials"))?;
    let label = name.map(str::to_owned);
    let vault = VaultClient::new(config)
        .with_context(|| format!("{section} client"))?
        .observe(Arc::new(move |call| {
            crate::metrics::vault_call(label.as_deref(), call.op, call.took, call.error)
        }));
    if vault.is_cluster() {
        // Know the active node before the first login and trust read.
        vault.probe_nodes().await;
    }
    let lease = if wait {
        Some(
            retry_vault(
                &format!("Vault login ({section})"),
                Some(STARTUP_VAULT_WAIT),
                || vault.authenticate(&creds),
            )
            .await?,
        )
    } else {
        match vault.authenticate(&creds).await {
            Ok(lease) => Some(lease),
            Err(e) => {
                tracing::warn!(error = %e, vault = %section, "Vault login failed at start-up; retrying in the background");
                vault.use_unverified(&creds);
                None
            }
        }
    };
    // Every server, one node or several: the prober brings skipped nodes back, moves calls
    // off a node that stopped answering, and closes the breaker as soon as Vault answers.
    tokio::spawn(
        vault
            .clone()
            .watch_nodes(config.health_interval, shutdown.clone()),
    );
    tokio::spawn(
        vault
            .clone()
            .watch_tls_files(config.tls_reload_interval, shutdown.clone()),
    );
    tokio::spawn(vault.clone().maintain_token(
        creds,
        lease,
        config.auth.min_relogin_interval,
        shutdown.clone(),
    ));
    Ok(vault)
}

/// An error that may hide a transient Vault failure worth waiting out at start-up.
pub(super) trait StartupError: std::error::Error + Send + Sync + 'static {
    fn transient_vault(&self) -> Option<&VaultError>;
}

impl StartupError for VaultError {
    fn transient_vault(&self) -> Option<&VaultError> {
        self.is_transient().then_some(self)
    }
}

impl StartupError for RoutingError {
    fn transient_vault(&self) -> Option<&VaultError> {
        self.vault_error().filter(|e| e.is_transient())
    }
}

impl StartupError for tls::TlsError {
    fn transient_vault(&self) -> Option<&VaultError> {
        match self {
            tls::TlsError::Vault(e) => e.transient_vault(),
            _ => None,
        }
    }
}

/// Retries a start-up call while Vault fails transiently (starting, sealed, unreachable), with
/// backoff, for up to `limit` (`None`: without limit; a signer that issues its own serving
/// certificate cannot serve anything before Vault answers).
pub(super) async fn retry_vault<T, E, F, Fut>(
    what: &str,
    limit: Option<Duration>,
    mut call: F,
) -> anyhow::Result<T>
where
    E: StartupError,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = limit.map(|l| tokio::time::Instant::now() + l);
    let mut backoff =
        crate::backoff::Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
    loop {
        match call().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                let delay = backoff.next_delay();
                match e.transient_vault() {
                    Some(v) if deadline.is_none_or(|d| tokio::time::Instant::now() + delay < d) => {
                        tracing::warn!(error = %v, "{what}: waiting for Vault");
                        tokio::time::sleep(delay).await;
                    }
                    _ => return Err(e).context(what.to_owned()),
                }
            }
        }
    }
}
