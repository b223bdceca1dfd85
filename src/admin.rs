//! The admin HTTP port: `/metrics` (Prometheus), `/healthz` (the process is alive) and
//! `/readyz` (it can sign: a valid Vault token, a non-empty trust bundle, a valid serving
//! certificate and, when routes choose by namespace labels, those labels), so Kubernetes stops
//! routing to a replica that cannot sign. The same readiness drives the standard gRPC health
//! service on the gRPC port (SERVING only when ready).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::bundle::SharedBundle;
use crate::tls::ServingCert;
use crate::vault::VaultSet;

/// What readiness looks at.
#[derive(Clone)]
pub struct Readiness {
    /// `[vault]` decides readiness; a `[vaults.<name>]` server that cannot sign fails only
    /// the requests routed to it (`Unavailable`) and shows in `/readyz` and the metrics.
    pub vaults: VaultSet,
    pub bundle: SharedBundle,
    pub serving: Arc<ServingCert>,
    /// The namespace labels routes choose by, when some route has a `namespace_selector`.
    pub namespaces: Option<Arc<crate::namespaces::NamespaceLabels>>,
}

impl Readiness {
    /// `Ok` when the signer can sign, else the reasons it cannot.
    pub fn check(&self) -> Result<(), Vec<&'static str>> {
        let mut missing = Vec::new();
        if !self.vaults.default_client().auth().token_valid() {
            missing.push("no valid Vault token");
        }
        if self.bundle.load().roots().is_empty() {
            missing.push("empty trust bundle");
        }
        if !self.serving.valid() {
            missing.push("serving certificate expired");
        }
        if self.namespaces.as_ref().is_some_and(|n| !n.synced()) {
            missing.push("namespace labels for routes not loaded yet");
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing)
        }
    }

    /// What the state gauges show.
    fn state(&self) -> crate::metrics::State {
        let bundle = self.bundle.load();
        crate::metrics::State {
            trust_bundle_roots: bundle.roots().len(),
            trust_bundle_expiry: bundle.earliest_expiry(),
            serving_not_after: self.serving.not_after(),
            vaults: self
                .vaults
                .all()
                .map(|(name, v)| crate::metrics::VaultState {
                    name: name.map(str::to_owned),
                    token_valid: v.auth().token_valid(),
                    failing_fast: v.failing_fast(),
                    client_cert_not_after: v.client_cert_not_after(),
                    nodes: v.node_status(),
                    outbound: v.outbound_status(),
                })
                .collect(),
        }
    }

    /// A human-readable status line for `/readyz`.
    fn report(&self) -> (StatusCode, String) {
        let default = self.vaults.default_client();
        let vault = if default.failing_fast() {
            " (Vault is failing; calls fail fast)"
        } else {
            ""
        };
        let mut nodes: String = self
            .vaults
            .all()
            .flat_map(|(_, v)| v.node_status())
            .map(|n| {
                format!(
                    "vault node {} {} calls={} failures={}\n",
                    n.node,
                    n.state.as_str(),
                    n.calls,
                    n.failures
                )
            })
            .collect();
        for (name, v) in self.vaults.named() {
            let token = if v.auth().token_valid() {
                "token valid"
            } else {
                "no valid token"
            };
            let failing = if v.failing_fast() {
                ", failing; calls fail fast"
            } else {
                ""
            };
            nodes.push_str(&format!("vaults.{name}: {token}{failing}\n"));
        }
        match self.check() {
            Ok(()) => (StatusCode::OK, format!("ready{vault}\n{nodes}")),
            Err(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {}{vault}\n{nodes}", why.join(", ")),
            ),
        }
    }
}

/// Binds the admin listener; the returned future serves until `shutdown` fires.
pub async fn bind(
    addr: SocketAddr,
    readiness: Readiness,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<(SocketAddr, impl Future<Output = std::io::Result<()>>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let scrape = readiness.clone();
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(move || {
                let (r, h) = (scrape.clone(), metrics.clone());
                async move {
                    crate::metrics::state(r.state());
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4",
                        )],
                        h.render(),
                    )
                }
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let r = readiness.clone();
                async move { r.report() }
            }),
        );
    let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
        let mut s = shutdown;
        let _ = s.wait_for(|stop| *stop).await;
    });
    Ok((local, async move { serve.await }))
}

/// Keeps the gRPC health service in step with readiness until `shutdown` fires.
pub async fn drive_grpc_health(
    readiness: Readiness,
    reporter: tonic_health::server::HealthReporter,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut ticker = crate::periodic::Ticker::new(Duration::from_secs(1), shutdown);
    let mut last = None;
    while ticker.tick().await {
        let ready = readiness.check().is_ok();
        if last != Some(ready) {
            let status = if ready {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            reporter.set_service_status("", status).await;
            reporter
                .set_service_status("istio.v1.auth.IstioCertificateService", status)
                .await;
            last = Some(ready);
        }
    }
    reporter
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
}
