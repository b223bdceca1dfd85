//! Builds a running signer from a [`Config`]: Vault client, trust bundle, authenticator,
//! serving certificate, the TLS listener and the background tasks that keep them fresh.
//!
//! Shutdown: stop accepting connections, let in-flight calls finish (tonic's graceful
//! shutdown sends HTTP/2 GOAWAY), and give up after `server.shutdown_grace`.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::{self, Readiness};
use crate::authn::Authenticator;
use crate::config::Config;
use crate::pb::istio_certificate_service_server::IstioCertificateServiceServer;
use crate::routing::{RouteTable, TrustSource};
use crate::server::CaService;
use crate::server::gate::{Gate, GateLimits};
use crate::server::listener::{self, ServeOptions};
use crate::signer::Signer;
use crate::tls::{self, ServingCert};

mod ledger;
mod preflight;
mod vault;

use crate::vault::VaultSet;
use ledger::start_ledger;
pub use preflight::{Preflight, preflight};
use vault::{STARTUP_VAULT_WAIT, retry_vault, start_vault};

/// Room in a request message beside the CSR (validity, metadata with ImpersonatedIdentity).
const MESSAGE_OVERHEAD: usize = 4 * 1024;

/// A started signer.
pub struct Running {
    local_addr: SocketAddr,
    connections: Arc<std::sync::atomic::AtomicU64>,
    admin_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// The address the gRPC listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// TLS connections accepted so far.
    pub fn connections_accepted(&self) -> u64 {
        self.connections.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The address of the admin HTTP port (`/healthz`, `/readyz`), if enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Stops accepting, drains in-flight calls (bounded by `shutdown_grace`), then returns.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        self.task.await.context("server task")?
    }

    /// Waits until the server stops by itself (it only does on error) or `signal` resolves,
    /// then shuts down.
    pub async fn run_until(mut self, signal: impl Future<Output = ()>) -> anyhow::Result<()> {
        tokio::select! {
            r = &mut self.task => r.context("server task")?,
            _ = signal => {
                tracing::info!("shutdown requested; draining in-flight requests");
                self.shutdown().await
            }
        }
    }
}

/// Builds everything from `config` and starts serving.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    // What this configuration does, once, as check-config prints it (it holds no secrets, only
    // the paths of files that do; variables are named, not their values).
    let variables: Vec<&str> = config.overrides.iter().map(|(n, _)| n.as_str()).collect();
    tracing::info!(
        file = ?config.source,
        variables = ?variables,
        "configuration: {}",
        config
            .summary()
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join("; ")
    );
    // Before anything calls Vault or the issuer, so start-up calls are counted too.
    let metrics = crate::metrics::install();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // Vault is needed at start-up only when the trust bundle comes from it; otherwise the
    // signer starts anyway (not ready) and keeps trying to authenticate in the background.
    let wait = config.bundle.file.is_none();
    let vault = start_vault(None, &config.vault, wait, &shutdown_rx).await?;
    let mut named = std::collections::BTreeMap::new();
    for (name, cfg) in &config.vaults {
        named.insert(
            name.clone(),
            start_vault(Some(name), cfg, wait, &shutdown_rx).await?,
        );
    }
    let vaults = VaultSet::new(vault.clone(), named);
    let namespaces = if config.routes_use_namespace_labels() {
        Some(
            crate::namespaces::start(config.kubernetes.kubeconfig.as_deref(), shutdown_rx.clone())
                .await
                .map_err(|e| {
                    anyhow::anyhow!("namespace labels (routes[].namespace_selector): {e}")
                })?,
        )
    } else {
        None
    };
    let trust_source = TrustSource::from_config(&config);
    let table = retry_vault("signing targets", Some(STARTUP_VAULT_WAIT), || {
        RouteTable::load(&config, &vaults, &trust_source, None, namespaces.clone())
    })
    .await?;
    let initial = table.served(&trust_source).await.context("trust bundle")?;
    tracing::info!(
        roots = initial.roots().len(),
        targets = table.targets().len(),
        routes = config.routes.len(),
        "trust bundle loaded"
    );
    let shared_bundle = Arc::new(ArcSwap::from_pointee(initial));
    let shared_routes = Arc::new(ArcSwap::from_pointee(table));

    let client_roots = match (
        &config.server.client_ca_file,
        config.auth.client_certificates,
    ) {
        (Some(path), _) => tls::ClientRoots::File(path.clone()),
        (None, true) => tls::ClientRoots::Targets(shared_routes.clone()),
        (None, false) => tls::ClientRoots::None,
    };
    let client_verifier = tls::client_verifier(client_roots).context("client certificates")?;
    let authn = Authenticator::new(&config.auth, config.trust_domain.clone())
        .await
        .context("authenticator")?
        .with_client_verifier(client_verifier.clone());
    let impersonation = match &config.auth.impersonation {
        Some(imp) => Some(start_pod_caches(&config, imp, shutdown_rx.clone()).await?),
        None => None,
    };
    let (ledger, denied, ledger_closing) = match &config.ledger {
        Some(cfg) => {
            let (ledger, denied, closing) = start_ledger(cfg, &vaults, shutdown_rx.clone())?;
            (Some(ledger), Some(denied), Some(closing))
        }
        None => (None, None, None),
    };
    let signer = Arc::new(Signer {
        authn,
        csr_policy: config.csr.policy(),
        routes: shared_routes.clone(),
        vault: vault.clone(),
        bundle: shared_bundle.clone(),
        paths: Default::default(),
        in_flight: Default::default(),
        delegation: match &config.vault.delegated {
            Some(d) => Some(crate::vault::Delegation::new(&vault, d).context("vault.delegated")?),
            None => None,
        },
        authz: crate::authz::Authorizer {
            impersonation,
            denied,
        },
        ledger,
        limits: crate::issuance_limits::IssuanceLimits::new(config.rate_limits),
        holders: Default::default(),
    });

    let serving = match &config.server.self_issued {
        Some(cfg) => {
            let ck = retry_vault("self-issued serving certificate", None, || {
                tls::issue_serving(&vault, cfg)
            })
            .await?;
            ServingCert::new(ck)
        }
        None => ServingCert::new(
            serving_files(&config)?
                .load()
                .context("serving certificate")?,
        ),
    };
    let tls_config =
        tls::server_config(serving.clone(), client_verifier, &config.server.tls).context("TLS")?;
    let listener = TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("binding {}", config.server.listen))?;
    let local_addr = listener.local_addr()?;

    let readiness = Readiness {
        vaults: vaults.clone(),
        bundle: shared_bundle.clone(),
        serving: serving.clone(),
        namespaces: namespaces.clone(),
    };
    let admin_addr = match config.admin.listen {
        Some(addr) => {
            let (bound, serve) = admin::bind(addr, readiness.clone(), metrics, shutdown_rx.clone())
                .await
                .with_context(|| format!("binding admin port {addr}"))?;
            tokio::spawn(async move {
                if let Err(e) = serve.await {
                    tracing::error!(error = %e, "admin server failed");
                }
            });
            Some(bound)
        }
        None => None,
    };
    // Every replica reads the CRLs (cheap, and its metrics show them); the leader publishes.
    let crls: Option<crate::distribute::Published> = config.crl.as_ref().map(|crl| {
        let (tx, rx) = tokio::sync::watch::channel(None);
        tokio::spawn(crate::crl_set::run(
            crl.clone(),
            shared_routes.clone(),
            tx,
            shutdown_rx.clone(),
        ));
        crate::distribute::Published {
            configmap: crl.configmap.clone(),
            key: crate::distribute::CRL_KEY,
            content: crate::distribute::Content::Crls(rx),
        }
    });
    if let Some(td) = &config.trust_distribution {
        let clusters = config.distribution_clusters(td)?;
        let mut leading = None;
        for crate::config::ApiServer {
            cluster,
            kubeconfig,
        } in clusters
        {
            let client = crate::kube_client(kubeconfig.as_deref())
                .await
                .map_err(|e| anyhow::anyhow!("trust_distribution in cluster {cluster:?}: {e}"))?;
            if td.leader_election && leading.is_none() {
                // The first cluster is this one: the Lease lives here.
                leading = Some(crate::leader::elect(
                    client.clone(),
                    crate::leader::LeaseConfig::trust_distribution(td),
                    shutdown_rx.clone(),
                ));
            }
            let mut published = vec![crate::distribute::Published::roots(
                td,
                shared_bundle.clone(),
            )];
            published.extend(crls.clone());
            if let Some(name) = &td.cluster_trust_bundle {
                let (client, cluster) = (client.clone(), cluster.clone());
                let (name, retry, bundle) = (name.clone(), td.interval, shared_bundle.clone());
                let run = move |stop| {
                    crate::cluster_trust_bundle::run(
                        client.clone(),
                        cluster.clone(),
                        name.clone(),
                        retry,
                        bundle.clone(),
                        stop,
                    )
                };
                crate::leader::spawn_led(leading.clone(), shutdown_rx.clone(), run);
            }
            for published in published {
                let (client, cluster, td) = (client.clone(), cluster.clone(), td.clone());
                let run = move |stop| {
                    crate::distribute::run(
                        client.clone(),
                        cluster.clone(),
                        td.clone(),
                        published.clone(),
                        stop,
                    )
                };
                crate::leader::spawn_led(leading.clone(), shutdown_rx.clone(), run);
            }
        }
    }
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    tokio::spawn(admin::drive_grpc_health(
        readiness,
        health_reporter,
        shutdown_rx.clone(),
    ));
    match &config.server.self_issued {
        Some(cfg) => tokio::spawn(tls::maintain_self_issued(
            vault.clone(),
            cfg.clone(),
            serving.clone(),
            shutdown_rx.clone(),
        )),
        None => tokio::spawn(serving_files(&config)?.watch(
            serving.clone(),
            config.server.reload_interval,
            shutdown_rx.clone(),
        )),
    };
    if let Some(istiod) = &config.istiod_certificate {
        let client = crate::kube_client(istiod.kubeconfig.as_deref())
            .await
            .map_err(|e| anyhow::anyhow!("istiod_certificate: {e}"))?;
        let leading = istiod.leader_election.then(|| {
            crate::leader::elect(
                client.clone(),
                crate::leader::LeaseConfig::istiod_certificate(istiod),
                shutdown_rx.clone(),
            )
        });
        let (vault, istiod, bundle) = (vault.clone(), istiod.clone(), shared_bundle.clone());
        let run = move |stop| {
            crate::istiod_cert::maintain(
                client.clone(),
                vault.clone(),
                istiod.clone(),
                bundle.clone(),
                stop,
            )
        };
        crate::leader::spawn_led(leading, shutdown_rx.clone(), run);
    }
    tokio::spawn(crate::routing::watch(
        config.clone(),
        vaults.clone(),
        trust_source,
        shared_routes,
        shared_bundle,
        config.bundle.refresh_interval,
        config.server.reload_interval,
        shutdown_rx.clone(),
    ));

    let connections = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let max_message_bytes = config.csr.max_bytes + MESSAGE_OVERHEAD;
    let service =
        IstioCertificateServiceServer::new(CaService::new(signer, config.server.request_timeout))
            .max_decoding_message_size(max_message_bytes);
    let routes = tonic::service::Routes::new(service)
        .add_service(health_service)
        .prepare();
    let gate = Gate::new(GateLimits {
        max_in_flight: config.server.max_in_flight,
        max_in_flight_per_peer: config.server.limits.max_in_flight_per_peer,
        max_queued: config.server.limits.max_queued,
        max_waiting_for_vault: config.server.limits.max_waiting_for_vault,
        queue_timeout: config.server.queue_timeout,
        body_timeout: config.server.limits.body_timeout,
        max_message_bytes,
    });
    let server = listener::serve(
        listener,
        Arc::new(tls_config),
        routes,
        gate,
        ServeOptions {
            limits: config.server.limits.clone(),
            handshake_timeout: config.server.handshake_timeout,
            tcp_quickack: config.server.tcp_quickack,
            max_connection_age: config.server.max_connection_age,
            max_connection_age_grace: config.server.max_connection_age_grace,
            keepalive_interval: config.server.http2_keepalive_interval,
            keepalive_timeout: config.server.http2_keepalive_timeout,
        },
        connections.clone(),
        crate::worker::Workers::start(config.server.workers, config.server.worker_packing)
            .context("starting the serving workers")?,
        shutdown_rx.clone(),
    );
    let grace = config.server.shutdown_grace;
    let mut stop = shutdown_rx;
    let task = tokio::spawn(async move {
        let mut server = tokio::spawn(server);
        // The server ends by itself only on error, or as soon as it saw the shutdown (it
        // watches it too): either way the ledger below is still written.
        let ended = tokio::select! {
            r = &mut server => Some(r.context("gRPC server")),
            _ = stop.changed() => None,
        };
        let drained = match ended {
            Some(r) => r,
            None => match tokio::time::timeout(grace, &mut server).await {
                Ok(r) => r.context("gRPC server"),
                Err(_) => {
                    tracing::warn!(
                        ?grace,
                        "drain deadline passed; closing remaining connections"
                    );
                    server.abort();
                    Ok(())
                }
            },
        };
        // No call can issue any more: the ledger writes what is queued, then stops.
        if let Some(closing) = ledger_closing {
            closing.finish().await;
        }
        drained
    });
    tracing::info!(addr = %local_addr, trust_domain = %config.trust_domain, "serving IstioCertificateService");
    Ok(Running {
        local_addr,
        connections,
        admin_addr,
        shutdown: shutdown_tx,
        task,
    })
}

/// One watched pod cache per cluster that has a way to reach its API server.
async fn start_pod_caches(
    config: &Config,
    imp: &crate::config::ImpersonationConfig,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<crate::authz::Impersonation> {
    let mut pods = std::collections::HashMap::new();
    for crate::config::ApiServer {
        cluster,
        kubeconfig,
    } in config.api_servers(imp.kubeconfig.as_deref())
    {
        let client = crate::kube_client(kubeconfig.as_deref())
            .await
            .map_err(|e| anyhow::anyhow!("pod cache of cluster {cluster:?}: {e}"))?;
        let index = Arc::new(crate::nodes::PodIndex::default());
        tokio::spawn(crate::nodes::watch(
            client,
            cluster.clone(),
            index.clone(),
            shutdown.clone(),
        ));
        pods.insert(cluster, index);
    }
    Ok(crate::authz::Impersonation {
        trusted: imp.trusted_node_accounts.clone(),
        pods,
    })
}

fn serving_files(config: &Config) -> anyhow::Result<tls::CertFiles> {
    Ok(tls::CertFiles {
        cert: config
            .server
            .cert_file
            .clone()
            .context("server.cert_file")?,
        key: config.server.key_file.clone().context("server.key_file")?,
    })
}
