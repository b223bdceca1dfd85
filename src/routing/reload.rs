//! Keeping the route table and the served bundle current: targets' trust re-read every
//! `bundle.refresh_interval`; the config file reloaded when it changes or on SIGHUP, applied
//! only if valid as a whole.

use std::sync::Arc;
use std::time::Duration;

use super::{RouteTable, SharedRoutes, TrustSource};
use crate::bundle::{SharedBundle, TrustBundle};
use crate::config::Config;
use crate::namespaces::NamespaceLabels;
use crate::vault::VaultSet;

/// Keeps `routes` and `bundle` current: every `refresh` the targets' trust is re-read; when the
/// config file changes (checked every `poll`) or on SIGHUP, the file is loaded again and, if
/// valid as a whole, its targets and routes replace the current ones. Anything else changed
/// in the file takes effect at the next restart.
///
/// The SIGHUP handler is installed when this is called, before the returned future first
/// runs: a SIGHUP sent once the signer has started never meets the default action (exit).
#[allow(clippy::too_many_arguments)]
pub fn watch(
    config: Config,
    vaults: VaultSet,
    source: TrustSource,
    routes: SharedRoutes,
    bundle: SharedBundle,
    refresh: Duration,
    poll: Duration,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send {
    let mut hangup = hangup_signals();
    let namespace_stop = shutdown.clone();
    let mut shutdown = shutdown;
    async move {
        // The namespace watch a reload started (the first `namespace_selector` route), kept
        // for later reloads whether or not that one was applied.
        let mut namespaces_started = None;
        let mut last_text = config_text(&config).await;
        let mut next_refresh = tokio::time::Instant::now() + refresh;
        // The first check one period from now: the file was just read (an immediate tick could
        // otherwise see a change made since and apply it without being asked).
        let mut poll_timer = tokio::time::interval_at(tokio::time::Instant::now() + poll, poll);
        poll_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        enum Wake {
            Stop,
            Refresh,
            Poll,
            Hangup,
        }
        loop {
            let wake = tokio::select! {
                r = shutdown.wait_for(|s| *s) => { drop(r); Wake::Stop }
                _ = tokio::time::sleep_until(next_refresh) => Wake::Refresh,
                _ = poll_timer.tick() => Wake::Poll,
                Some(()) = recv_hangup(&mut hangup) => Wake::Hangup,
            };
            let reload = match wake {
                Wake::Stop => return,
                Wake::Refresh => false,
                Wake::Hangup => true,
                Wake::Poll => {
                    let text = config_text(&config).await;
                    if text == last_text {
                        continue;
                    }
                    last_text = text;
                    true
                }
            };
            if reload {
                let namespaces = Namespaces {
                    started: &mut namespaces_started,
                    stop: &namespace_stop,
                };
                apply_reload(&config, &vaults, &source, &routes, &bundle, namespaces).await;
            } else {
                next_refresh = tokio::time::Instant::now() + refresh;
                let table = routes.load_full();
                match table.refresh_trust(&source).await {
                    Ok(new) => publish(&bundle, new),
                    Err(e) => {
                        tracing::warn!(error = %e, "trust bundle refresh failed; keeping the current roots")
                    }
                }
            }
        }
    }
}

/// The namespace watch a reload may have to start: the one started by an earlier reload, and
/// the shutdown signal a new one ends with.
struct Namespaces<'a> {
    started: &'a mut Option<Arc<NamespaceLabels>>,
    stop: &'a tokio::sync::watch::Receiver<bool>,
}

impl Namespaces<'_> {
    /// The labels `new`'s routes read: the watch in use, or one started now for the first
    /// `namespace_selector` route (its requests answer `Unavailable` until the first list).
    async fn for_config(
        self,
        config: &Config,
        new: &Config,
        current: &RouteTable,
    ) -> Result<Option<Arc<NamespaceLabels>>, String> {
        let existing = current.namespaces.clone().or_else(|| self.started.clone());
        if existing.is_some() || !new.routes_use_namespace_labels() {
            return Ok(existing);
        }
        let cache =
            crate::namespaces::start(config.kubernetes.kubeconfig.as_deref(), self.stop.clone())
                .await
                .map_err(|e| format!("namespace labels (routes[].namespace_selector): {e}"))?;
        tracing::info!("namespace watch started for the reloaded routes");
        *self.started = Some(cache.clone());
        Ok(Some(cache))
    }
}

/// Loads the config file again and swaps in its targets and routes, or keeps the current ones.
async fn apply_reload(
    config: &Config,
    vaults: &VaultSet,
    source: &TrustSource,
    routes: &SharedRoutes,
    bundle: &SharedBundle,
    namespaces: Namespaces<'_>,
) {
    match prepare(config, vaults, source, routes, namespaces).await {
        Ok((new, table, served)) => {
            // The bundle first: a request routed to a new target must find its roots served.
            publish(bundle, served);
            routes.store(Arc::new(table));
            crate::metrics::config_reload(true);
            tracing::info!(
                targets = new.targets.len() + 1,
                routes = new.routes.len(),
                "config reloaded: targets and routes applied (other settings take effect at restart)"
            );
        }
        Err(e) => {
            crate::metrics::config_reload(false);
            tracing::error!(error = %e, "config reload failed; keeping the current targets and routes");
        }
    }
}

/// The new config, its route table (targets' trust loaded) and the bundle it serves, or why
/// the file cannot be applied.
async fn prepare(
    config: &Config,
    vaults: &VaultSet,
    source: &TrustSource,
    routes: &SharedRoutes,
    namespaces: Namespaces<'_>,
) -> Result<(Config, RouteTable, TrustBundle), String> {
    let new = config.reload().map_err(|e| e.to_string())?;
    let current = routes.load_full();
    let namespaces = namespaces.for_config(config, &new, &current).await?;
    let table = RouteTable::load(&new, vaults, source, Some(&current), namespaces)
        .await
        .map_err(|e| e.to_string())?;
    let served = table.served(source).await.map_err(|e| e.to_string())?;
    Ok((new, table, served))
}

fn publish(bundle: &SharedBundle, new: TrustBundle) {
    if new.pem() != bundle.load().pem() {
        tracing::info!(roots = new.roots().len(), "trust bundle changed");
        bundle.store(Arc::new(new));
    }
}

async fn config_text(config: &Config) -> Option<Vec<u8>> {
    let path = config.source.as_ref()?;
    tokio::fs::read(path).await.ok()
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = Option<()>;

#[cfg(unix)]
fn hangup_signals() -> Hangup {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}
#[cfg(not(unix))]
fn hangup_signals() -> Hangup {
    None
}

#[cfg(unix)]
async fn recv_hangup(h: &mut Hangup) -> Option<()> {
    match h {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}
#[cfg(not(unix))]
async fn recv_hangup(_: &mut Hangup) -> Option<()> {
    std::future::pending().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::tests::root;
    use arc_swap::ArcSwap;

    /// With `bundle.file`, no Vault call is made: the file's roots are every target's.
    async fn file_table(path: &std::path::Path) -> (Config, VaultSet, TrustSource, RouteTable) {
        let mut config = Config::default();
        config.bundle.file = Some(path.to_owned());
        let vault = VaultSet::single(crate::vault::VaultClient::new(&config.vault).unwrap());
        let source = TrustSource::from_config(&config);
        let table = RouteTable::load(&config, &vault, &source, None, None)
            .await
            .unwrap();
        (config, vault, source, table)
    }

    #[tokio::test]
    async fn refresh_publishes_only_valid_bundles() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("roots.pem");
        let (a, b) = (root("a"), root("b"));
        std::fs::write(&path, &a).unwrap();
        let (config, vault, source, table) = file_table(&path).await;
        let shared: SharedBundle =
            Arc::new(ArcSwap::from_pointee(table.served(&source).await.unwrap()));
        let routes: SharedRoutes = Arc::new(ArcSwap::from_pointee(table));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(watch(
            config,
            vault,
            source,
            routes,
            shared.clone(),
            Duration::from_millis(20),
            Duration::from_secs(3600),
            stop_rx,
        ));

        let wait_for = |n: usize| {
            let shared = shared.clone();
            async move {
                for _ in 0..200 {
                    if shared.load().roots().len() == n {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                panic!("bundle never reached {n} roots");
            }
        };
        std::fs::write(&path, format!("{a}{b}")).unwrap(); // rotation: old + new
        wait_for(2).await;
        std::fs::write(&path, "garbage").unwrap(); // a broken file keeps the last good bundle
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(shared.load().roots().len(), 2);
        std::fs::write(&path, &b).unwrap(); // old root retired
        wait_for(1).await;
        stop_tx.send(true).unwrap();
        task.await.unwrap();
    }
}
