//! How a [`VaultClient`] reaches Vault: the pooled HTTP client (rebuilt when the TLS files
//! rotate), the circuit breaker, one attempt per node in placement order (given up when the
//! prober marks the node down), and Vault's answers mapped to [`VaultError`].

use std::time::Duration;

use reqwest::StatusCode;

use super::nodes::Placement;
use super::tls_files::TlsMaterial;
use super::wire::ErrorBody;
use super::{CallRecord, TlsFilesError, VaultClient, VaultError, outbound};
use crate::http_policy::BodyError;

/// What the HTTP client is built from besides the TLS files; kept to rebuild it on rotation.
#[derive(Debug, Clone, Copy)]
pub(super) struct HttpSettings {
    pub(super) timeout: Duration,
    /// Several nodes: redirects are not followed (see [`HttpSettings::build`]).
    pub(super) cluster: bool,
    pub(super) plain_http: bool,
    /// `vault.max_response_bytes`.
    pub(super) max_response_bytes: usize,
}

/// The pooled HTTP client and what it was built from.
pub(super) struct HttpClient {
    /// One per core the process may use and one for every other thread, chosen by
    /// [`crate::worker::current`]: a serving worker's calls use connections its own runtime
    /// drives (with more workers than cores, some share one; it still works, across threads).
    clients: Vec<reqwest::Client>,
    pub(super) tls_digest: [u8; 32],
    pub(super) client_cert_not_after: Option<i64>,
}

impl HttpClient {
    /// The client for this thread (requests are built and sent on the same one).
    pub(super) fn client(&self) -> &reqwest::Client {
        &self.clients[crate::worker::current() % self.clients.len()]
    }
}

impl HttpSettings {
    pub(super) fn build(&self, tls: TlsMaterial) -> Result<HttpClient, TlsFilesError> {
        let clients = (0..=crate::worker::available())
            .map(|_| self.build_one(&tls))
            .collect::<Result<_, _>>()?;
        Ok(HttpClient {
            clients,
            tls_digest: tls.digest,
            client_cert_not_after: tls.client_not_after,
        })
    }

    fn build_one(&self, tls: &TlsMaterial) -> Result<reqwest::Client, TlsFilesError> {
        let mut builder = crate::http_client()
            .timeout(self.timeout)
            .connect_timeout(self.timeout.min(Duration::from_secs(3)))
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            // No transparent replays (reqwest retries an HTTP/2 `GOAWAY` or `REFUSED_STREAM`
            // on its own): every call Vault sees is an attempt of `send_to_nodes`, which takes
            // its turn of the outbound limit and counts against `vault.retries`. Nor is each
            // request copied (headers, extensions) in case it is replayed.
            .retry(reqwest::retry::never().max_retries_per_request(0))
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
        tls.apply(builder, self.plain_http)?
            .build()
            .map_err(|e| TlsFilesError::Client(e.to_string()))
    }
}

/// How one attempt on one node ended.
pub(super) enum Attempt<T> {
    Answered(Result<T, VaultError>),
    /// The health prober marked the node down while the call waited (its name).
    NodeMarkedDown(String),
}

impl<T> Attempt<T> {
    pub(super) fn result(self) -> Result<T, VaultError> {
        match self {
            Attempt::Answered(r) => r,
            Attempt::NodeMarkedDown(node) => Err(VaultError::NodeDown(node)),
        }
    }
}

impl VaultClient {
    /// Sends one request (to the active node first, with several nodes) through the circuit
    /// breaker; `op` labels its metrics.
    pub(super) async fn send<T: serde::de::DeserializeOwned>(
        &self,
        op: &'static str,
        req: reqwest::RequestBuilder,
    ) -> Result<T, VaultError> {
        self.send_placed(op, req, Placement::Active).await
    }

    /// Sends one request through the circuit breaker, trying the nodes in turn as `placement`
    /// orders them; `op` labels its metrics.
    pub(super) async fn send_placed<T: serde::de::DeserializeOwned>(
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
    pub(super) async fn send_to_nodes<T: serde::de::DeserializeOwned>(
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
    pub(super) async fn attempt<T: serde::de::DeserializeOwned>(
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
    pub(super) fn record_attempt<T>(&self, i: usize, result: &Result<T, VaultError>) -> bool {
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

    pub(super) async fn send_once<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::Request,
    ) -> Result<T, VaultError> {
        // Every attempt takes a turn (retries and failover included: no amplification).
        if let Some(outbound) = &self.outbound {
            outbound.turn(outbound::MAX_WAIT).await?;
        }
        // The call holds its own reference to the client; the guard is gone before it waits.
        let call = self.http.load().client().execute(req);
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

    pub(super) fn transport_error(&self, e: reqwest::Error) -> VaultError {
        if e.is_timeout() {
            VaultError::Timeout(self.timeout)
        } else {
            // `without_url` keeps the message short; the URL carries no secrets anyway.
            VaultError::Unreachable(crate::http_policy::error_chain(&e.without_url()))
        }
    }
}
