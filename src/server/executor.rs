//! Where the HTTP/2 server runs each call: on its connection's serving thread, or on another
//! when that one is overloaded and another has room ([`Workers::overflow`]).

use std::future::Future;
use std::sync::Arc;

use crate::worker::Workers;

/// The HTTP/2 server's executor: hyper spawns each stream (one call) through it.
#[derive(Clone)]
pub struct CallExecutor {
    workers: Arc<Workers>,
}

impl CallExecutor {
    pub fn new(workers: Arc<Workers>) -> Self {
        Self { workers }
    }
}

impl<F> hyper::rt::Executor<F> for CallExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, call: F) {
        match self.workers.overflow() {
            Some(other) => {
                crate::metrics::call_overflowed();
                other.spawn(call);
            }
            None => {
                tokio::spawn(call);
            }
        }
    }
}
