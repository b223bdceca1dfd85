//! The signer's own Vault token: obtained by one of five methods, renewed at about two thirds
//! of its lease, replaced by a new login when renewal stops extending it, and replaced at once
//! (at most once per `min_relogin_interval`) when a call is answered `403`.
//!
//! The token is published through an `ArcSwap` read on every request; a generation counter
//! on a `watch` channel lets a request that got `403` wait for the replacement.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde::Deserialize;
use tokio::sync::{Notify, watch};

use super::{TokenSource, VaultClient, VaultError, VaultToken, read_token_file};
use crate::config::{RoleId, VaultConfig, VaultLogin};

/// How to (re)obtain a token.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// A given token: read from a file (re-read on change) or the environment.
    Token(TokenSource),
    AppRole {
        mount: String,
        role_id: RoleId,
        secret_id_file: PathBuf,
    },
    /// Kubernetes or JWT auth: `{role, jwt}` with the JWT read from a file at each login.
    Jwt {
        mount: String,
        role: String,
        jwt_file: PathBuf,
    },
    /// TLS certificate auth: the client's TLS certificate (`vault.client_cert_file`) is the
    /// credential; `{name}` picks the certificate role when set.
    Cert { mount: String, role: Option<String> },
}

impl Credentials {
    pub fn from_config(
        config: &VaultConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, VaultError> {
        let a = &config.auth;
        let mount = a
            .mount
            .clone()
            .unwrap_or_else(|| a.login.default_mount().to_owned());
        // What each method needs was decided as the config was read (VaultLogin).
        Ok(match &a.login {
            VaultLogin::Token => Self::Token(TokenSource::from_config(config, env)?),
            VaultLogin::AppRole {
                role_id,
                secret_id_file,
            } => Self::AppRole {
                mount,
                role_id: role_id.clone(),
                secret_id_file: secret_id_file.clone(),
            },
            VaultLogin::Kubernetes { role, jwt_file } | VaultLogin::Jwt { role, jwt_file } => {
                Self::Jwt {
                    mount,
                    role: role.clone(),
                    jwt_file: jwt_file.clone(),
                }
            }
            VaultLogin::Cert { role } => Self::Cert {
                mount,
                role: role.clone(),
            },
        })
    }

    fn method(&self) -> &'static str {
        match self {
            Self::Token(_) => "token",
            Self::AppRole { .. } => "approle",
            Self::Jwt { .. } => "login",
            Self::Cert { .. } => "cert",
        }
    }
}

/// A token and what Vault said about its lifetime.
#[derive(Debug, Clone)]
pub struct Lease {
    pub token: VaultToken,
    /// Zero for a token that never expires (e.g. a root token).
    pub ttl: Duration,
    pub renewable: bool,
}

/// The token in use and its health, shared by the client and the maintenance task.
pub struct AuthState {
    pub(super) token: ArcSwap<VaultToken>,
    /// Unix seconds the current token expires; 0 = never; -1 = no token yet.
    expires_at: AtomicI64,
    relogin: Notify,
    generation: watch::Sender<u64>,
}

impl AuthState {
    pub(super) fn new() -> Self {
        Self {
            token: ArcSwap::from_pointee(VaultToken::placeholder()),
            expires_at: AtomicI64::new(-1),
            relogin: Notify::new(),
            generation: watch::Sender::new(0),
        }
    }

    fn publish(&self, lease: &Lease) {
        self.token.store(Arc::new(lease.token.clone()));
        let exp = if lease.ttl.is_zero() {
            0
        } else {
            crate::time::now_unix() + lease.ttl.as_secs() as i64
        };
        self.expires_at.store(exp, Ordering::Relaxed);
        self.generation.send_modify(|g| *g += 1);
    }

    fn extend(&self, ttl: Duration) {
        self.expires_at.store(
            crate::time::now_unix() + ttl.as_secs() as i64,
            Ordering::Relaxed,
        );
    }

    /// True while the signer holds a token that has not expired.
    pub fn token_valid(&self) -> bool {
        match self.expires_at.load(Ordering::Relaxed) {
            -1 => false,
            0 => true,
            exp => exp > crate::time::now_unix(),
        }
    }

    pub(super) fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    /// Asks for a new token after a `403` and waits (bounded) until one is published.
    /// Returns whether the token changed since generation `seen`.
    pub(super) async fn replace_after_forbidden(&self, seen: u64, wait: Duration) -> bool {
        let mut rx = self.generation.subscribe();
        if *rx.borrow() != seen {
            return true;
        }
        self.relogin.notify_one();
        tokio::time::timeout(wait, rx.wait_for(|g| *g != seen))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

#[derive(Deserialize)]
struct AuthEnvelope {
    auth: Option<AuthData>,
}

#[derive(Deserialize)]
struct AuthData {
    client_token: String,
    #[serde(default)]
    lease_duration: u64,
    #[serde(default)]
    renewable: bool,
}

#[derive(Deserialize)]
struct LookupData {
    #[serde(default)]
    ttl: u64,
    #[serde(default)]
    renewable: bool,
}

impl VaultClient {
    /// For the token method, puts the configured token in use before Vault has confirmed it
    /// (so calls can succeed as soon as Vault answers); readiness stays false until it has.
    pub fn use_unverified(&self, creds: &Credentials) {
        if let Credentials::Token(source) = creds {
            let token = match source {
                TokenSource::Static(t) => Some(t.clone()),
                TokenSource::File { path, .. } => read_token_file(path).ok(),
            };
            if let Some(t) = token {
                self.auth.token.store(Arc::new(t));
            }
        }
    }

    /// Obtains a token with `creds` and publishes it.
    pub async fn authenticate(&self, creds: &Credentials) -> Result<Lease, VaultError> {
        let lease = match creds {
            Credentials::Token(source) => {
                let token = match source {
                    TokenSource::Static(t) => t.clone(),
                    TokenSource::File { path, .. } => read_token_file(path)?,
                };
                self.lookup(&token).await?
            }
            Credentials::AppRole {
                mount,
                role_id,
                secret_id_file,
            } => {
                let role_id = match role_id {
                    RoleId::Value(v) => v.clone(),
                    RoleId::File(f) => read_secret(f)?,
                };
                let body = serde_json::json!({"role_id": role_id, "secret_id": read_secret(secret_id_file)?});
                self.login(mount, body).await?
            }
            Credentials::Jwt {
                mount,
                role,
                jwt_file,
            } => {
                let body = serde_json::json!({"role": role, "jwt": read_secret(jwt_file)?});
                self.login(mount, body).await?
            }
            Credentials::Cert { mount, role } => {
                let body = match role {
                    Some(name) => serde_json::json!({ "name": name }),
                    None => serde_json::json!({}),
                };
                self.login(mount, body).await?
            }
        };
        self.auth.publish(&lease);
        Ok(lease)
    }

    pub(super) async fn login(
        &self,
        mount: &str,
        body: serde_json::Value,
    ) -> Result<Lease, VaultError> {
        let url = self.api_url(&format!("auth/{mount}/login"))?;
        let req = self.unauthenticated(reqwest::Method::POST, url).json(&body);
        let env: AuthEnvelope = self.send("login", req).await?;
        lease_from(env)
    }

    async fn lookup(&self, token: &VaultToken) -> Result<Lease, VaultError> {
        let url = self.api_url("auth/token/lookup-self")?;
        let req = self
            .unauthenticated(reqwest::Method::GET, url)
            .header(super::TOKEN_HEADER, token.0.clone());
        let env: super::Envelope<LookupData> = self.send("lookup", req).await?;
        let data = env
            .data
            .ok_or_else(|| VaultError::Malformed("lookup-self has no data".into()))?;
        Ok(Lease {
            token: token.clone(),
            ttl: Duration::from_secs(data.ttl),
            renewable: data.renewable,
        })
    }

    async fn renew(&self, current: &Lease) -> Result<Lease, VaultError> {
        let url = self.api_url("auth/token/renew-self")?;
        let req = self
            .request(reqwest::Method::POST, url)
            .json(&serde_json::json!({"increment": format!("{}s", current.ttl.as_secs())}));
        let env: AuthEnvelope = self.send("renew", req).await?;
        let mut lease = lease_from(env)?;
        // Vault answers with the same token; keep the one we hold (redaction-safe).
        lease.token = current.token.clone();
        Ok(lease)
    }

    /// Keeps the token valid until `shutdown`: renews at ~2/3 of the lease (with jitter),
    /// logs in again when renewal is impossible or stops extending the lease, when a call got
    /// `403`, or (token method) when the token file changes. Failures retry with backoff while
    /// the current token stays in use.
    pub async fn maintain_token(
        self,
        creds: Credentials,
        lease: Option<Lease>,
        min_relogin: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let file = match &creds {
            Credentials::Token(TokenSource::File { path, interval }) => {
                Some((path.clone(), *interval))
            }
            _ => None,
        };
        let mut file_seen = file.as_ref().and_then(|(p, _)| std::fs::read(p).ok());
        let mut last_login = Instant::now();
        let mut backoff =
            crate::backoff::Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        // Without a lease yet (Vault was unreachable at start-up), log in right away.
        let mut next = lease
            .as_ref()
            .map_or(Some(Duration::ZERO), renew_delay)
            .map(|d| tokio::time::Instant::now() + d);
        let mut lease = lease.unwrap_or(Lease {
            token: VaultToken::placeholder(),
            ttl: Duration::ZERO,
            renewable: false,
        });
        loop {
            let poll = file.as_ref().map_or(Duration::from_secs(3600), |(_, i)| *i);
            let action = tokio::select! {
                _ = shutdown.changed() => return,
                _ = sleep_until_opt(next) => if lease.renewable { Action::Renew } else { Action::Login },
                _ = self.auth.relogin.notified() => Action::Forced,
                _ = tokio::time::sleep(poll), if file.is_some() => Action::CheckFile,
            };
            let result = match action {
                Action::CheckFile => {
                    let now = file.as_ref().and_then(|(p, _)| std::fs::read(p).ok());
                    if now == file_seen {
                        continue;
                    }
                    file_seen = now;
                    self.authenticate(&creds).await.inspect(|_| {
                        tracing::info!("Vault token file changed; new token in use");
                    })
                }
                Action::Forced if last_login.elapsed() < min_relogin => {
                    tracing::warn!(
                        "Vault refused the token; a new login was made moments ago, not logging in again yet"
                    );
                    continue;
                }
                Action::Forced | Action::Login => {
                    last_login = Instant::now();
                    self.authenticate(&creds).await
                }
                Action::Renew => match self.renew(&lease).await {
                    // Renewal that no longer extends the lease (max TTL reached): log in again.
                    Ok(renewed) if renewed.ttl < lease.ttl / 2 => {
                        last_login = Instant::now();
                        self.authenticate(&creds).await
                    }
                    Ok(renewed) => {
                        self.auth.extend(renewed.ttl);
                        Ok(renewed)
                    }
                    Err(VaultError::Forbidden(_)) => {
                        last_login = Instant::now();
                        self.authenticate(&creds).await
                    }
                    Err(e) => Err(e),
                },
            };
            match result {
                Ok(new) => {
                    tracing::debug!(
                        method = creds.method(),
                        ttl_s = new.ttl.as_secs(),
                        renewable = new.renewable,
                        "Vault token refreshed"
                    );
                    lease = new;
                    backoff.reset();
                    next = renew_delay(&lease).map(|d| tokio::time::Instant::now() + d);
                }
                Err(e) => {
                    let retry_in = backoff.next_delay();
                    tracing::warn!(method = creds.method(), error = %e, ?retry_in, "could not refresh the Vault token; keeping the current one");
                    next = Some(tokio::time::Instant::now() + retry_in);
                }
            }
        }
    }
}

enum Action {
    Renew,
    Login,
    Forced,
    CheckFile,
}

fn lease_from(env: AuthEnvelope) -> Result<Lease, VaultError> {
    let auth = env
        .auth
        .ok_or_else(|| VaultError::Malformed("login response has no auth".into()))?;
    Ok(Lease {
        token: VaultToken::new(&auth.client_token)?,
        ttl: Duration::from_secs(auth.lease_duration),
        renewable: auth.renewable,
    })
}

/// When to act next: about two thirds into the lease, minus up to 10% jitter so replicas do
/// not renew in lockstep. `None` for a token that never expires.
fn renew_delay(lease: &Lease) -> Option<Duration> {
    if lease.ttl.is_zero() {
        return None;
    }
    let jitter = crate::backoff::jitter() / 10.0; // 0..0.1
    // Vault's lease duration is Vault's to choose: renew at least daily, and never compute a
    // deadline past the clock's range.
    Some(
        lease
            .ttl
            .min(MAX_LEASE_CONSIDERED)
            .mul_f64(crate::time::RENEW_AT - jitter)
            .max(Duration::from_millis(200)),
    )
}

/// Longest lease the renewal schedule takes at its word.
const MAX_LEASE_CONSIDERED: Duration = Duration::from_secs(36 * 3600);

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn read_secret(path: &Path) -> Result<String, VaultError> {
    let s = std::fs::read_to_string(path)
        .map_err(|e| VaultError::Token(format!("cannot read {}: {e}", path.display())))?;
    let s = s.trim();
    if s.is_empty() {
        return Err(VaultError::Token(format!("{} is empty", path.display())));
    }
    Ok(s.to_owned())
}
