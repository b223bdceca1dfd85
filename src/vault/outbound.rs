//! The signer's own limit on calls to one Vault server (`vault.max_requests_per_second`):
//! every attempt (a retry and a failover to another node included) takes a turn, and a call
//! waits for its turn rather than learning Vault's quota from a `429`.
//!
//! Waiting calls take their turns by [`Urgency`]: a certificate for a workload that holds no
//! valid one (a new pod, a restarted ztunnel) goes before the renewal of one that is still
//! valid. The signer's pipeline says which a call is ([`queued`]); every other call to Vault
//! (logins, ledger writes, CRLs) counts as urgent.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::VaultError;
use crate::rate::{Class, Limiter, Rate};

/// Longest wait for a turn: a call further back is refused at once (`Throttled`). Calls are
/// normally ended sooner by their request deadline (`server.request_timeout`).
pub(super) const MAX_WAIT: Duration = Duration::from_secs(60);

/// How soon a sign call's certificate is needed, for its place among calls waiting for a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Urgency {
    /// The workload holds no valid certificate from this signer: a first issuance, or one
    /// whose certificate expired.
    #[default]
    Unserved,
    /// The workload renews a certificate that is still valid: it can wait.
    Renewal,
}

impl Urgency {
    /// The label of the metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Urgency::Unserved => "unserved",
            Urgency::Renewal => "renewal",
        }
    }

    fn class(self) -> Class {
        match self {
            Urgency::Unserved => Class::Ahead,
            Urgency::Renewal => Class::Behind,
        }
    }
}

/// What the pipeline tells the outbound limit about the Vault calls of one request.
struct Queueing {
    urgency: Urgency,
    /// Runs once, when a call first has to wait for a turn (the server hands the request's
    /// admission slot on: a call waiting for Vault's pace holds no slot).
    on_wait: Cell<Option<Box<dyn FnOnce() + Send>>>,
}

tokio::task_local! {
    static QUEUEING: Queueing;
}

/// Runs `fut`, whose calls to Vault wait for their turns as `urgency` says, running `on_wait`
/// the first time one of them has to wait.
///
/// A plain function, not an `async fn`: an `async fn` would hold `fut` twice (as its argument
/// and inside the scope it awaits), doubling the size of every request's future.
pub fn queued<F: Future>(
    urgency: Urgency,
    on_wait: Option<Box<dyn FnOnce() + Send>>,
    fut: F,
) -> impl Future<Output = F::Output> {
    let queueing = Queueing {
        urgency,
        on_wait: Cell::new(on_wait),
    };
    QUEUEING.scope(queueing, fut)
}

/// The limiter and what it did, for the metrics.
pub(super) struct Outbound {
    limiter: Limiter,
    turns: AtomicU64,
    delayed: AtomicU64,
    waited_nanos: AtomicU64,
}

/// What the outbound limit of one server did since start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutboundStatus {
    /// Calls that took a turn: what was sent to the server, retries included.
    pub turns: u64,
    /// Calls that had to wait for their turn.
    pub delayed: u64,
    /// Their waits, summed.
    pub waited: Duration,
    /// Calls waiting now: for workloads without a valid certificate, and renewals.
    pub waiting_unserved: usize,
    pub waiting_renewal: usize,
}

impl Outbound {
    pub(super) fn new(rate: Rate) -> Self {
        Self {
            limiter: Limiter::new(rate),
            turns: AtomicU64::new(0),
            delayed: AtomicU64::new(0),
            waited_nanos: AtomicU64::new(0),
        }
    }

    /// Waits for the next turn; refuses at once when it is more than `max_wait` away (the
    /// caller's own deadline, `server.request_timeout`, usually ends the wait first), and
    /// when urgent calls kept passing it until `max_wait` ran out.
    pub(super) async fn turn(&self, max_wait: Duration) -> Result<(), VaultError> {
        let urgency = QUEUEING.try_with(|q| q.urgency).unwrap_or_default();
        let on_wait = || {
            let hook = QUEUEING.try_with(|q| q.on_wait.take()).ok().flatten();
            if let Some(hook) = hook {
                hook();
            }
        };
        let waited = self
            .limiter
            .turn(urgency.class(), max_wait, on_wait)
            .await
            .map_err(VaultError::Throttled)?;
        self.turns.fetch_add(1, Ordering::Relaxed);
        if !waited.is_zero() {
            self.delayed.fetch_add(1, Ordering::Relaxed);
            let nanos = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
            self.waited_nanos.fetch_add(nanos, Ordering::Relaxed);
        }
        Ok(())
    }

    pub(super) fn status(&self) -> OutboundStatus {
        let waiting = self.limiter.waiting();
        OutboundStatus {
            turns: self.turns.load(Ordering::Relaxed),
            delayed: self.delayed.load(Ordering::Relaxed),
            waited: Duration::from_nanos(self.waited_nanos.load(Ordering::Relaxed)),
            waiting_unserved: waiting.ahead,
            waiting_renewal: waiting.behind,
        }
    }
}
