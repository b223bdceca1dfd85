//! `[server]`: the gRPC+TLS port and its serving certificate (limits and TLS policy have
//! their own files).

use super::*;

/// `server.queue_timeout`: a renewal storm's wait (see its doc).
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(30);

/// Most `server.workers`: a thread each, more than any node's cores.
pub const MAX_WORKERS: usize = 1024;

/// Least `server.http2_keepalive_timeout`. A paced connection (calls that keep being refused,
/// a PING flood) is left unread for up to 4 s at a time (`server::pace::MAX_PAUSE`), its PING
/// answer with it:
/// a shorter timeout would have the signer take its own pause for a dead peer.
pub const MIN_HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The gRPC+TLS listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// PEM certificate chain served to clients (leaf first). Reloaded when it changes.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Optional PEM CA bundle: client certificates are verified against it when presented.
    pub client_ca_file: Option<PathBuf>,
    /// How often the serving certificate files are checked for changes.
    #[serde(with = "duration")]
    pub reload_interval: Duration,
    /// Upper bound on one CreateCertificate call, Vault included.
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    /// Upper bound on a TLS handshake.
    #[serde(with = "duration")]
    pub handshake_timeout: Duration,
    /// Acknowledge received segments at once (Linux `TCP_QUICKACK`, re-armed after each read):
    /// clients that write a request in pieces without `TCP_NODELAY` (ztunnel) otherwise wait
    /// for delayed ACKs, ~40 ms per request.
    pub tcp_quickack: bool,
    /// On SIGTERM/SIGINT: how long in-flight requests may take before the process exits.
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    /// Connections older than this are sent GOAWAY so agents reconnect and spread over new
    /// replicas (pilot-agent and ztunnel keep one connection for hours otherwise).
    #[serde(with = "duration")]
    pub max_connection_age: Duration,
    /// How long in-flight calls on an aged connection may still run.
    #[serde(with = "duration")]
    pub max_connection_age_grace: Duration,
    /// HTTP/2 PING interval on idle connections.
    #[serde(with = "duration")]
    pub http2_keepalive_interval: Duration,
    /// How long to wait for a PING answer before closing the connection.
    #[serde(with = "duration")]
    pub http2_keepalive_timeout: Duration,
    /// Have Vault issue the serving certificate instead of reading `cert_file`/`key_file`.
    pub self_issued: Option<SelfIssuedConfig>,
    /// Serving threads, each serving whole connections: `0` (the default) starts one per CPU
    /// the process may use (affinity and cgroup quota included). Connections are packed onto
    /// the fewest that keep up (see `worker`), so a larger count costs nothing at low load.
    pub workers: usize,
    /// The share of its time (0–0.7) below which a serving thread takes new connections ahead
    /// of the next; a thread 0.25 above it runs its new calls on the least busy thread while
    /// one is below it. `0` spreads connections over the least busy threads (see
    /// `worker::Packing`).
    pub worker_packing: crate::worker::Packing,
    /// Requests processed at once (size it to what Vault sustains); more wait in a queue.
    pub max_in_flight: usize,
    /// How long a call without a `grpc-timeout` (pilot-agent and ztunnel send none) may wait
    /// for a slot before it is shed with `ResourceExhausted`; a call with one waits as long
    /// as its deadline allows. Sized for a renewal storm: waiting beats a refusal, which
    /// pilot-agent retries within ~3 s and agentgateway turns into an outage.
    #[serde(with = "duration")]
    pub queue_timeout: Duration,
    /// Bounds on connections, streams and queued calls before authentication.
    pub limits: LimitsConfig,
    /// TLS versions, cipher suites and key-exchange groups.
    pub tls: TlsPolicyConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 15012)),
            cert_file: None,
            key_file: None,
            client_ca_file: None,
            reload_interval: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            tcp_quickack: true,
            shutdown_grace: Duration::from_secs(20),
            workers: 0,
            worker_packing: crate::worker::Packing::DEFAULT,
            max_in_flight: 256,
            queue_timeout: DEFAULT_QUEUE_TIMEOUT,
            self_issued: None,
            max_connection_age: Duration::from_secs(30 * 60),
            max_connection_age_grace: Duration::from_secs(30),
            http2_keepalive_interval: Duration::from_secs(30),
            http2_keepalive_timeout: Duration::from_secs(10),
            limits: LimitsConfig::default(),
            tls: TlsPolicyConfig::default(),
        }
    }
}

/// A serving certificate the signer obtains from Vault itself (key generated in memory, CSR
/// signed by `role` on `vault.mount`) and renews at two thirds of its lifetime.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SelfIssuedConfig {
    /// PKI role allowed to sign the signer's own names.
    pub role: String,
    /// DNS names and IP addresses to carry: every host clients put in `CA_ADDR`/`CA_ADDRESS`.
    pub names: Vec<String>,
    /// Requested lifetime.
    #[serde(with = "duration")]
    pub ttl: Duration,
}

impl Default for SelfIssuedConfig {
    fn default() -> Self {
        Self {
            role: "istio-vault-ca-serving".into(),
            names: Vec::new(),
            ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// A setting that must be a positive duration.
pub(super) fn positive(key: &str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        return Err(ConfigError::invalid(key, "must be positive"));
    }
    Ok(())
}

impl ServerConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        match &self.self_issued {
            None => {
                if self.cert_file.is_none() {
                    return Err(ConfigError::invalid(
                        "server.cert_file",
                        "is required (or configure server.self_issued)",
                    ));
                }
                if self.key_file.is_none() {
                    return Err(ConfigError::invalid("server.key_file", "is required"));
                }
            }
            Some(s) => {
                if s.names.is_empty() {
                    return Err(ConfigError::invalid(
                        "server.self_issued.names",
                        "must list the names clients dial",
                    ));
                }
                if s.ttl < Duration::from_secs(5) {
                    return Err(ConfigError::invalid(
                        "server.self_issued.ttl",
                        "must be at least 5s",
                    ));
                }
            }
        }
        if self.max_in_flight == 0 {
            return Err(ConfigError::invalid(
                "server.max_in_flight",
                "must be at least 1",
            ));
        }
        if self.workers > MAX_WORKERS {
            return Err(ConfigError::invalid(
                "server.workers",
                format!("must be at most {MAX_WORKERS} (0: one per CPU)"),
            ));
        }
        self.limits.validate()?;
        self.tls.validate()?;
        positive("server.request_timeout", self.request_timeout)?;
        positive("server.reload_interval", self.reload_interval)?;
        positive("server.handshake_timeout", self.handshake_timeout)?;
        positive(
            "server.http2_keepalive_interval",
            self.http2_keepalive_interval,
        )?;
        if self.http2_keepalive_timeout < MIN_HTTP2_KEEPALIVE_TIMEOUT {
            return Err(ConfigError::invalid(
                "server.http2_keepalive_timeout",
                format!(
                    "must be at least {}s: a connection whose calls keep being refused is left \
                     unread for up to 4s, its PING answer with it",
                    MIN_HTTP2_KEEPALIVE_TIMEOUT.as_secs()
                ),
            ));
        }
        Ok(())
    }
}
