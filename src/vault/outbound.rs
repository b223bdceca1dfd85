//! The signer's own limit on calls to one Vault server (`vault.max_requests_per_second`):
//! every attempt (a retry and a failover to another node included) takes a turn, and a call
//! waits for its turn rather than learning Vault's quota from a `429`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::VaultError;
use crate::rate::{Limiter, Rate};

/// Longest wait for a turn: a call further back is refused at once (`Throttled`). Calls are
/// normally ended sooner by their request deadline (`server.request_timeout`).
pub(super) const MAX_WAIT: Duration = Duration::from_secs(60);

/// The limiter and what it did, for the metrics.
pub(super) struct Outbound {
    limiter: Limiter,
    delayed: AtomicU64,
    waited_nanos: AtomicU64,
}

/// What the outbound limit of one server did since start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutboundStatus {
    /// Calls that had to wait for their turn.
    pub delayed: u64,
    /// Their waits, summed.
    pub waited: Duration,
}

impl Outbound {
    pub(super) fn new(rate: Rate) -> Self {
        Self {
            limiter: Limiter::new(rate),
            delayed: AtomicU64::new(0),
            waited_nanos: AtomicU64::new(0),
        }
    }

    /// Waits for the next turn; refuses at once when it is more than `max_wait` away (the
    /// caller's own deadline, `server.request_timeout`, usually ends the wait first).
    pub(super) async fn turn(&self, max_wait: Duration) -> Result<(), VaultError> {
        let wait = self
            .limiter
            .reserve(max_wait)
            .map_err(VaultError::Throttled)?;
        if !wait.is_zero() {
            self.delayed.fetch_add(1, Ordering::Relaxed);
            let nanos = u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX);
            self.waited_nanos.fetch_add(nanos, Ordering::Relaxed);
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }

    pub(super) fn status(&self) -> OutboundStatus {
        OutboundStatus {
            delayed: self.delayed.load(Ordering::Relaxed),
            waited: Duration::from_nanos(self.waited_nanos.load(Ordering::Relaxed)),
        }
    }
}
