//! A thin typed client for the few Vault/OpenBao endpoints the signer needs: PKI `sign/<role>`
//! and the issuer list that holds the trust roots.
//!
//! A pooled keep-alive `reqwest::Client` per serving thread (HTTP/2 when the server offers it
//! over TLS; see `transport.rs`), a per-call timeout, and the signer's token read from a file
//! that is re-read when it changes.
//! Tokens are never logged: [`VaultToken`]'s `Debug` is redacted and the header is marked
//! sensitive.
//!
//! This file holds the client itself (construction, TLS reload, request builders, status);
//! `pki.rs` the PKI operations, `transport.rs` how a request reaches a node.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use reqwest::Url;
use reqwest::header::{HeaderName, HeaderValue};

use crate::config::VaultConfig;

mod auth;
mod breaker;
mod delegated;
mod error;
mod kv;
mod nodes;
mod outbound;
mod pki;
mod set;
mod target;
mod tls_files;
mod token;
mod transport;
mod wire;
pub use auth::{AuthState, Credentials, Lease};
use breaker::Breaker;
pub use delegated::Delegation;
pub use error::VaultError;
pub use kv::KvPath;
use nodes::Nodes;
pub use nodes::{NodeState, NodeStatus};
use outbound::Outbound;
pub use outbound::{OutboundStatus, Urgency, queued};
pub use set::VaultSet;
pub use target::SignTarget;
use target::{make_target, namespace_header};
pub use tls_files::{TlsFiles, TlsFilesError};
use token::read_token_file;
pub use token::{TokenSource, VaultToken};
use transport::{HttpClient, HttpSettings};
use wire::Envelope;
pub use wire::{Issuer, SignedCert, parse_sign_response};

const TOKEN_HEADER: HeaderName = HeaderName::from_static("x-vault-token");
const NAMESPACE_HEADER: HeaderName = HeaderName::from_static("x-vault-namespace");

/// One call to Vault as its caller sees it: which operation, how long it took (failover over
/// nodes included) and, if it failed, [`VaultError::kind`]. The client keeps no metrics; its
/// owner records these ([`VaultClient::observe`]).
#[derive(Debug, Clone, Copy)]
pub struct CallRecord {
    pub op: &'static str,
    pub took: Duration,
    pub error: Option<&'static str>,
}

/// Told of every call the client makes.
pub type CallObserver = Arc<dyn Fn(CallRecord) + Send + Sync>;

/// Client for one Vault (or OpenBao) server or cluster: the signer's token, its connection
/// pool, its nodes' health, circuit breaker and retries, shared by every [`SignTarget`].
#[derive(Clone)]
pub struct VaultClient {
    /// Replaced whole when the TLS files change ([`VaultClient::reload_tls`]).
    http: Arc<ArcSwap<HttpClient>>,
    settings: HttpSettings,
    tls_files: TlsFiles,
    /// `<first addr>/v1/`: requests are built on it, then sent to the node chosen.
    api: Url,
    nodes: Arc<Nodes>,
    /// `<addr>/v1/<vault.mount>/`: the default target's mount (serving certificates).
    base: Url,
    /// `vault.mount` / `vault.role`.
    default_target: SignTarget,
    namespace: Option<HeaderValue>,
    auth: Arc<AuthState>,
    breaker: Arc<Breaker>,
    timeout: Duration,
    retries: u32,
    observer: Option<CallObserver>,
    /// `vault.max_requests_per_second`, when set.
    outbound: Option<Arc<Outbound>>,
}

impl std::fmt::Debug for VaultClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultClient")
            .field("base", &self.base.as_str())
            .finish()
    }
}

impl VaultClient {
    /// Builds the client. It holds no token until [`VaultClient::authenticate`] succeeds.
    pub fn new(config: &VaultConfig) -> Result<Self, VaultError> {
        let addrs = config.addr.urls();
        let settings = HttpSettings {
            timeout: config.timeout,
            cluster: addrs.len() > 1,
            plain_http: config.addr.is_http(),
            max_response_bytes: config.max_response_bytes,
        };
        let tls_files = TlsFiles::from_config(config);
        let http = settings.build(tls_files.read()?)?;
        let apis = addrs
            .iter()
            .map(|addr| {
                let mut base = addr.clone();
                if !base.path().ends_with('/') {
                    let p = format!("{}/", base.path());
                    base.set_path(&p);
                }
                base.join("v1/")
                    .map_err(|e| VaultError::Unreachable(format!("vault.addr: {e}")))
            })
            .collect::<Result<Vec<Url>, _>>()?;
        let nodes = Nodes::new(apis);
        let base = nodes.canonical().clone();
        let namespace = namespace_header(config.namespace.as_deref())?;
        let default_target = make_target(&base, &config.mount, &config.role, None)?;
        Ok(Self {
            http: Arc::new(ArcSwap::from_pointee(http)),
            settings,
            tls_files,
            base: default_target.mount_url.clone(),
            api: base,
            nodes: Arc::new(nodes),
            default_target,
            namespace,
            auth: Arc::new(AuthState::new()),
            breaker: Arc::new(Breaker::new(
                config.breaker_threshold,
                config.breaker_cooldown,
                Duration::from_secs(30),
            )),
            timeout: config.timeout,
            retries: config.retries,
            observer: None,
            outbound: config.outbound_rate().map(|r| Arc::new(Outbound::new(r))),
        })
    }

    /// Reports every call to `observer` (the application records them as metrics).
    pub fn observe(mut self, observer: CallObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Re-reads `vault.ca_file` and the client certificate files; if they changed and pass
    /// their checks, new calls use a new HTTP client built from them (calls in flight finish
    /// on the old one, whose connections close when it is dropped). `Ok(true)` when replaced.
    pub fn reload_tls(&self) -> Result<bool, TlsFilesError> {
        // Unchanged bytes are not parsed again: each tick costs three reads and a digest.
        let bytes = self.tls_files.read_bytes()?;
        if bytes.digest == self.http.load().tls_digest {
            return Ok(false);
        }
        let material = self.tls_files.check_bytes(bytes)?;
        self.http.store(Arc::new(self.settings.build(material)?));
        Ok(true)
    }

    /// NotAfter (unix seconds) of the client certificate in use, when one is configured.
    pub fn client_cert_not_after(&self) -> Option<i64> {
        self.http.load().client_cert_not_after
    }

    /// Calls [`VaultClient::reload_tls`] every `interval` until `shutdown`; a set of files
    /// that fails its checks (a rotation half written) is logged and the client in use kept.
    /// Returns at once when no TLS file is configured.
    pub async fn watch_tls_files(
        self,
        interval: Duration,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        if self.tls_files.is_empty() {
            return;
        }
        let mut ticker = crate::periodic::Ticker::new(interval, shutdown);
        while ticker.tick().await {
            match self.reload_tls() {
                Ok(true) => tracing::info!(
                    "reloaded the TLS files for Vault (CA bundle, client certificate)"
                ),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "keeping the current TLS settings for Vault"),
            }
        }
    }

    /// A signing target on this Vault: `mount`, `role` and, if set, its own namespace.
    pub fn target(
        &self,
        mount: &str,
        role: &str,
        namespace: Option<&str>,
    ) -> Result<SignTarget, VaultError> {
        make_target(&self.api, mount, role, namespace_header(namespace)?)
    }

    /// The token's state, for readiness.
    pub fn auth(&self) -> &AuthState {
        &self.auth
    }

    fn api_url(&self, path: &str) -> Result<Url, VaultError> {
        self.api
            .join(path)
            .map_err(|e| VaultError::Malformed(e.to_string()))
    }

    /// A request without the token header (logins), with the namespace header.
    fn unauthenticated(&self, method: reqwest::Method, url: Url) -> reqwest::RequestBuilder {
        self.unauthenticated_in(method, url, None)
    }

    /// A request without the token header, in `target`'s namespace if it has its own.
    fn unauthenticated_in(
        &self,
        method: reqwest::Method,
        url: Url,
        target: Option<&SignTarget>,
    ) -> reqwest::RequestBuilder {
        let req = self.http.load().client().request(method, url);
        match target
            .and_then(|t| t.namespace.as_ref())
            .or(self.namespace.as_ref())
        {
            Some(ns) => req.header(NAMESPACE_HEADER, ns.clone()),
            None => req,
        }
    }

    fn request(&self, method: reqwest::Method, url: Url) -> reqwest::RequestBuilder {
        self.request_in(method, url, None)
    }

    /// A request with the signer's token, in `target`'s namespace if it has its own.
    fn request_in(
        &self,
        method: reqwest::Method,
        url: Url,
        target: Option<&SignTarget>,
    ) -> reqwest::RequestBuilder {
        self.unauthenticated_in(method, url, target)
            .header(TOKEN_HEADER, self.auth.token.load().0.clone())
    }

    /// Each configured node's state and calls, for metrics and readiness; empty with a single
    /// address (which the prober checks too, to close the breaker as soon as it answers).
    pub fn node_status(&self) -> Vec<NodeStatus> {
        if self.is_cluster() {
            self.nodes.status()
        } else {
            Vec::new()
        }
    }

    /// True when `vault.addr` lists several nodes (calls then fail over between them).
    pub fn is_cluster(&self) -> bool {
        self.nodes.len() > 1
    }

    /// What the outbound limit did, when `vault.max_requests_per_second` is set.
    pub fn outbound_status(&self) -> Option<OutboundStatus> {
        self.outbound.as_ref().map(|o| o.status())
    }

    /// True while Vault is considered down and calls fail fast.
    pub fn failing_fast(&self) -> bool {
        self.breaker.is_open()
    }
}
