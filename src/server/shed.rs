//! Why the admission gate refused a call (a leaf: the gate produces it, `status` maps it).

use std::time::Duration;

/// Why the gate refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Shed {
    #[error("signer is overloaded: {0} calls already wait for a slot; retry later")]
    QueueFull(usize),
    #[error("signer is overloaded: no slot within {0:?}; retry later")]
    Overloaded(Duration),
    /// The call's deadline left no time to wait (its `grpc-timeout`, what serving needs).
    #[error(
        "signer is overloaded: the call's deadline ({0:?}) leaves no time to wait for a slot \
         (serving takes ~{1:?}); retry later"
    )]
    NoTimeToWait(Duration, Duration),
    #[error("too many calls from this address at once: no slot within {0:?}; retry later")]
    PeerOverloaded(Duration),
}
