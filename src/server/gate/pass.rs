//! A call's place among `server.max_in_flight`: the [`Pass`] it holds from admission until it
//! is answered, and the [`Slot`] through which the handler may hand it on earlier.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::Gate;

/// A call's admitted [`Pass`], which the handler may hand on before the call is answered:
/// while the call waits for its turn at Vault (`vault.max_requests_per_second`) it is
/// authenticated, holds only its parsed request, and must not keep the slots that calls still
/// to be authenticated need. At most `server.limits.max_waiting_for_vault` calls wait so at
/// once; beyond that a call keeps its slot while it waits. The gate puts it in the request's
/// extensions.
#[derive(Clone)]
pub struct Slot(Arc<Mutex<Held>>);

enum Held {
    Pass(Pass),
    /// Handed on; counted among the calls that wait for Vault without a slot until dropped.
    Released {
        _count: Released,
    },
    Done,
}

struct Released(Arc<Gate>);

impl Drop for Released {
    fn drop(&mut self) {
        self.0.released.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Slot {
    pub(super) fn new(pass: Pass) -> Self {
        Self(Arc::new(Mutex::new(Held::Pass(pass))))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands the slot on, unless `server.limits.max_waiting_for_vault` calls already wait for
    /// Vault without one (a no-op the second time).
    pub fn release(&self) {
        let mut held = self.lock();
        let Held::Pass(pass) = &*held else {
            return;
        };
        let gate = pass.gate.clone();
        let under = gate
            .released
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < gate.limits.max_waiting_for_vault).then_some(n + 1)
            })
            .is_ok();
        if under {
            crate::metrics::slot_handed_on();
            let pass = std::mem::replace(
                &mut *held,
                Held::Released {
                    _count: Released(gate),
                },
            );
            drop(held);
            drop(pass);
        }
    }

    /// Whether the call still holds its slot (for tests).
    #[cfg(test)]
    pub(super) fn holds_pass(&self) -> bool {
        matches!(*self.lock(), Held::Pass(_))
    }

    /// The call is answered: its slot, or its place among those waiting without one, is free.
    pub(super) fn end(&self) {
        let done = std::mem::replace(&mut *self.lock(), Held::Done);
        drop(done);
    }
}

/// A call's place in the signer: released (and handed to the next waiting peer) when the
/// call is answered, or earlier through its [`Slot`].
pub struct Pass {
    pub(super) gate: Arc<Gate>,
    pub(super) ip: IpAddr,
}

impl Drop for Pass {
    fn drop(&mut self) {
        let mut state = self.gate.state();
        state.finish(self.ip);
        state.hand_over(self.gate.limits.max_in_flight_per_peer);
    }
}
