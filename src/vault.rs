//! A thin typed client for the few Vault/OpenBao endpoints the signer needs: PKI `sign/<role>`
//! and the issuer list that holds the trust roots.
//!
//! One pooled keep-alive `reqwest::Client` (HTTP/2 when the server offers it over TLS), a
//! per-call timeout, and the signer's token read from a file that is re-read when it changes.
//! Tokens are never logged: [`VaultToken`]'s `Debug` is redacted and the header is marked
//! sensitive.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use reqwest::header::{HeaderName, HeaderValue};
use reqwest::{StatusCode, Url};

use crate::backoff::Backoff;
use crate::config::VaultConfig;
use crate::http_policy::BodyError;
use crate::identity::SpiffeId;

mod auth;
mod breaker;
mod delegated;
mod error;
mod kv;
mod nodes;
mod outbound;
mod set;
mod target;
mod tls_files;
mod token;
mod wire;
pub use auth::{AuthState, Credentials, Lease};
use breaker::Breaker;
pub use delegated::Delegation;
pub use error::VaultError;
pub use kv::KvPath;
pub use nodes::{NodeState, NodeStatus};
use nodes::{Nodes, Placement};
use outbound::Outbound;
pub use outbound::OutboundStatus;
pub use set::VaultSet;
pub use target::SignTarget;
use target::{make_target, namespace_header};
use tls_files::TlsMaterial;
pub use tls_files::{TlsFiles, TlsFilesError};
use token::read_token_file;
pub use token::{TokenSource, VaultToken};
use wire::{Envelope, ErrorBody, IssuerList, SignBody, SignData, signed_from};
pub use wire::{Issuer, SignedCert, parse_sign_response};

/// First delay before retrying a sign call after a transient failure; doubles per attempt.
const SIGN_RETRY_FIRST: Duration = Duration::from_millis(100);
const SIGN_RETRY_MAX: Duration = Duration::from_secs(2);

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

/// What the HTTP client is built from besides the TLS files; kept to rebuild it on rotation.
#[derive(Debug, Clone, Copy)]
struct HttpSettings {
    timeout: Duration,
    /// Several nodes: redirects are not followed (see [`HttpSettings::build`]).
    cluster: bool,
    plain_http: bool,
    /// `vault.max_response_bytes`.
    max_response_bytes: usize,
}

/// The pooled HTTP client and what it was built from.
struct HttpClient {
    client: reqwest::Client,
    tls_digest: [u8; 32],
    client_cert_not_after: Option<i64>,
}

impl HttpSettings {
    fn build(&self, tls: TlsMaterial) -> Result<HttpClient, TlsFilesError> {
        let mut builder = crate::http_client()
            .timeout(self.timeout)
            .connect_timeout(self.timeout.min(Duration::from_secs(3)))
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .user_agent(concat!("istio-vault-ca/", env!("CARGO_PKG_VERSION")));
        builder = if self.cluster {
            // A standby that cannot serve redirects to the active node's address, which may be
            // the one just found dead: the next configured node is the better choice.
            builder.redirect(reqwest::redirect::Policy::none())
        } else {
            // Same origin only: the token header would follow a redirect anywhere else.
            builder.redirect(crate::http_policy::redirect_policy())
        }
        .https_only(!self.plain_http);
        let (tls_digest, client_cert_not_after) = (tls.digest, tls.client_not_after);
        let client = tls
            .apply(builder, self.plain_http)?
            .build()
            .map_err(|e| TlsFilesError::Client(e.to_string()))?;
        Ok(HttpClient {
            client,
            tls_digest,
            client_cert_not_after,
        })
    }
}

/// How one attempt on one node ended.
enum Attempt<T> {
    Answered(Result<T, VaultError>),
    /// The health prober marked the node down while the call waited (its name).
    NodeMarkedDown(String),
}

impl<T> Attempt<T> {
    fn result(self) -> Result<T, VaultError> {
        match self {
            Attempt::Answered(r) => r,
            Attempt::NodeMarkedDown(node) => Err(VaultError::NodeDown(node)),
        }
    }
}

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
        let req = self.http.load().client.request(method, url);
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
    /// address (nothing is probed then).
    pub fn node_status(&self) -> Vec<NodeStatus> {
        if self.is_cluster() {
            self.nodes.status()
        } else {
            Vec::new()
        }
    }

    /// True when `vault.addr` lists several nodes (the health prober then runs).
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
    async fn post_sign(
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
        let url = target
            .mount_url
            .join("revoke")
            .map_err(|e| VaultError::Malformed(e.to_string()))?;
        let body = serde_json::json!({ "certificate": certificate_pem });
        let env: Envelope<Revoked> = self
            .send(
                "revoke",
                self.request_in(reqwest::Method::POST, url, Some(target))
                    .json(&body),
            )
            .await?;
        Ok(env.data.map_or(0, |d| d.revocation_time))
    }

    /// Has Vault rebuild the CRLs of `target`'s mount now (`crl/rotate`): with
    /// `auto_rebuild` on, a revocation alone waits for the next periodic rebuild.
    pub async fn rotate_crl(&self, target: &SignTarget) -> Result<(), VaultError> {
        let url = target
            .mount_url
            .join("crl/rotate")
            .map_err(|e| VaultError::Malformed(e.to_string()))?;
        let _: serde_json::Value = self
            .send(
                "crl_rotate",
                self.request_in(reqwest::Method::GET, url, Some(target)),
            )
            .await?;
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
        let url = target
            .mount_url
            .join(&format!("issuer/{issuer_id}/crl"))
            .map_err(|e| VaultError::Malformed(e.to_string()))?;
        let env: Envelope<Crl> = self
            .send(
                "crl",
                self.request_in(reqwest::Method::GET, url, Some(target)),
            )
            .await?;
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
        let mut url = target
            .mount_url
            .join("issuers")
            .map_err(|e| VaultError::Malformed(e.to_string()))?;
        url.set_query(Some("list=true"));
        let mut list = match self
            .send::<Envelope<IssuerList>>(
                "issuers",
                self.request_in(reqwest::Method::GET, url, Some(target)),
            )
            .await
        {
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
        let url = target
            .mount_url
            .join(&format!("issuer/{reference}/json"))
            .map_err(|e| VaultError::Malformed(e.to_string()))?;
        let env: Envelope<Issuer> = self
            .send(
                "issuer",
                self.request_in(reqwest::Method::GET, url, Some(target)),
            )
            .await?;
        env.data
            .ok_or_else(|| VaultError::Malformed(format!("issuer {reference} has no data")))
    }

    /// Sends one request (to the active node first, with several nodes) through the circuit
    /// breaker; `op` labels its metrics.
    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        op: &'static str,
        req: reqwest::RequestBuilder,
    ) -> Result<T, VaultError> {
        self.send_placed(op, req, Placement::Active).await
    }

    /// Sends one request through the circuit breaker, trying the nodes in turn as `placement`
    /// orders them; `op` labels its metrics.
    async fn send_placed<T: serde::de::DeserializeOwned>(
        &self,
        op: &'static str,
        req: reqwest::RequestBuilder,
        placement: Placement,
    ) -> Result<T, VaultError> {
        let started = std::time::Instant::now();
        let result = match self.breaker.admit() {
            Ok(permit) => {
                let result = self.send_to_nodes(req, placement).await;
                permit.record(matches!(&result, Err(e) if e.is_vault_failure()));
                result
            }
            Err(open) => Err(VaultError::CircuitOpen(open.retry_in)),
        };
        if let Some(observer) = &self.observer {
            observer(CallRecord {
                op,
                took: started.elapsed(),
                error: result.as_ref().err().map(VaultError::kind),
            });
        }
        result
    }

    /// One attempt per node, in `placement` order, until a node answers (with anything that is
    /// not the node's fault). With one node this is a single attempt, as before clusters.
    async fn send_to_nodes<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        placement: Placement,
    ) -> Result<T, VaultError> {
        let req = req
            .build()
            .map_err(|e| VaultError::Malformed(format!("building request: {e}")))?;
        if self.nodes.len() == 1 {
            let result = self.attempt(0, req).await.result();
            self.record_attempt(0, &result);
            return result;
        }
        let mut last = None;
        let mut gave_up = false;
        for i in self.nodes.order(placement) {
            // After a node was found down under a waiting call, only nodes known to serve are
            // worth the rest of the budget (when every node stopped, the call ends now).
            if gave_up && !self.nodes.get(i).state().usable() {
                continue;
            }
            let Some(mut attempt) = req.try_clone() else {
                break;
            };
            *attempt.url_mut() = self.nodes.rebase(i, req.url());
            let outcome = self.attempt(i, attempt).await;
            gave_up |= matches!(outcome, Attempt::NodeMarkedDown(_));
            let result = outcome.result();
            if self.record_attempt(i, &result) {
                return result;
            }
            last = Some(result);
        }
        last.unwrap_or_else(|| Err(VaultError::Malformed("request cannot be retried".into())))
    }

    /// One request to node `i`, given up as soon as the health prober marks that node down
    /// (a hung node: the call goes to another instead of waiting out `vault.timeout`).
    async fn attempt<T: serde::de::DeserializeOwned>(
        &self,
        i: usize,
        req: reqwest::Request,
    ) -> Attempt<T> {
        let node = self.nodes.get(i);
        let mut marked_down = node.watch_marked_down();
        tokio::select! {
            result = self.send_once(req) => Attempt::Answered(result),
            Ok(()) = marked_down.changed() => Attempt::NodeMarkedDown(node.name.clone()),
        }
    }

    /// Notes an attempt's outcome on node `i`; false when another node should be tried.
    fn record_attempt<T>(&self, i: usize, result: &Result<T, VaultError>) -> bool {
        let node = self.nodes.get(i);
        let Err(e) = result else {
            node.answered();
            return true;
        };
        // The signer's own limit: the node was not called.
        if matches!(e, VaultError::Throttled(_)) {
            return true;
        }
        // A rate-limit quota (429) is per node: try another, but the node is healthy.
        if !e.is_node_fault() || matches!(e, VaultError::Unavailable { status: 429, .. }) {
            node.answered();
            return !e.is_node_fault();
        }
        let sealed = matches!(e, VaultError::Unavailable { status: 503, message } if message.contains("sealed"));
        let was = node.failed(sealed);
        if self.nodes.len() > 1 && was != node.state() {
            tracing::warn!(node = %node.name, error = %e, "Vault node failed; trying the next node");
        }
        false
    }

    async fn send_once<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::Request,
    ) -> Result<T, VaultError> {
        // Every attempt takes a turn (retries and failover included: no amplification).
        if let Some(outbound) = &self.outbound {
            outbound.turn(outbound::MAX_WAIT).await?;
        }
        // The call holds its own reference to the client; the guard is gone before it waits.
        let call = self.http.load().client.execute(req);
        let resp = call.await.map_err(|e| self.transport_error(e))?;
        let status = resp.status();
        let location = status.is_redirection().then(|| {
            let value = resp.headers().get(reqwest::header::LOCATION);
            let text = value.and_then(|v| v.to_str().ok()).unwrap_or("?");
            text.chars().take(200).collect::<String>()
        });
        let bytes = crate::http_policy::read_capped(resp, self.settings.max_response_bytes)
            .await
            .map_err(|e| match e {
                BodyError::TooLarge { .. } => VaultError::Malformed(e.to_string()),
                BodyError::Transport(e) => self.transport_error(e),
            })?;
        if status.is_success() {
            // `204 No Content` (a KV delete) reads as JSON `null`.
            let bytes: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
            return serde_json::from_slice(bytes).map_err(|e| VaultError::Malformed(e.to_string()));
        }
        let message = serde_json::from_slice::<ErrorBody>(&bytes)
            .map(|b| b.errors.join("; "))
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).chars().take(200).collect());
        Err(match status {
            StatusCode::BAD_REQUEST => VaultError::Rejected(message),
            StatusCode::FORBIDDEN => VaultError::Forbidden(message),
            s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
                VaultError::Unavailable {
                    status: s.as_u16(),
                    message,
                }
            }
            // A standby pointing at the active node (several nodes: another configured node is
            // tried instead), or, with one address, a redirect to another origin, which is
            // never followed (`http_policy::redirect_policy`).
            s if s.is_redirection() => VaultError::Unavailable {
                status: s.as_u16(),
                message: format!("redirected to {}", location.unwrap_or_default()),
            },
            s => VaultError::Unexpected {
                status: s.as_u16(),
                message,
            },
        })
    }

    fn transport_error(&self, e: reqwest::Error) -> VaultError {
        if e.is_timeout() {
            VaultError::Timeout(self.timeout)
        } else {
            // `without_url` keeps the message short; the URL carries no secrets anyway.
            VaultError::Unreachable(crate::http_policy::error_chain(&e.without_url()))
        }
    }
}
