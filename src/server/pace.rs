//! Pacing a connection that keeps the signer busy without being served: calls that keep
//! being refused, and control frames that each ask for an answer.
//!
//! A refusal is cheap (the gate answers before a message is read, the checks refuse garbage
//! before any cryptography), but it still costs HTTP/2 framing, HPACK and a TLS record, and a
//! client that replaces each refused stream at once can ask for thousands a second on one
//! connection: enough, over a few hundred connections, to keep the serving threads busy and
//! slow every legitimate call sharing them. A PING or SETTINGS frame is cheaper still, but
//! each is answered, and a client can send a million a second
//! ([`super::control_frames`] finds them in what the connection reads).
//!
//! So each connection has two budgets: refusals of the caller's making
//! (`server.limits.max_refusals_per_second`, `refusal_burst`) and control frames
//! (`max_control_frames_per_second`, `control_frame_burst`). Beyond either, the connection is
//! not read for a while: one interval of the rate per refusal or frame over the budget, at
//! most [`MAX_PAUSE`] at a time. While it is paused nothing of it is decoded: its next
//! streams and frames wait in its socket, the answers to its refused calls wait too, and
//! calls it has already made go on (their answers leave when it resumes). After each pause
//! the connection is read again before it can be paused again, so a client that stops is
//! never held longer than [`MAX_PAUSE`]. Because one read can start up to
//! `max_concurrent_streams` calls, a connection is answered at most
//! max(`max_refusals_per_second`, `max_concurrent_streams` / [`MAX_PAUSE`]) refusals a second
//! once its burst is spent (10 with the defaults). Control frames are metered exactly: a read
//! is handed on only up to the frame that paused the connection ([`super::control_frames`]),
//! so a flooding connection is answered its rate, 10 a second, instead of a million.
//!
//! Not counted: `Unavailable`, `DeadlineExceeded`, `Internal` and the like, which say the
//! signer or Vault could not serve the call, not that the caller asked for something it may
//! not have; a mesh-wide Vault outage must not pace every agent. Nor the ACKs of the signer's
//! own PINGs and SETTINGS.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};
use tonic::Code;

use super::log_limit::LogLimit;
use super::status::refusal_code;
use crate::rate::{Debt, Rate};

/// The longest a connection is left unread at a time. Under the HTTP/2 keepalive timeouts on
/// either side (the signer's `server.http2_keepalive_timeout`: 10 s by default, at least 5 s
/// by validation; ztunnel's: 10 s), so a paused connection is not taken for a dead one.
pub const MAX_PAUSE: Duration = Duration::from_secs(4);
const _: () = assert!(
    MAX_PAUSE.as_secs() < crate::config::MIN_HTTP2_KEEPALIVE_TIMEOUT.as_secs(),
    "the signer's own keepalive must outlast a pause"
);

/// How far beyond its budget a connection's debt may run: a client that keeps being refused
/// stays paced for this long after it stops.
const DEBT_HORIZON: Duration = Duration::from_secs(10);

/// One connection's budgets and, while it is paused, until when.
pub struct Pace {
    peer: SocketAddr,
    /// `None`: refusals never pause it (`max_refusals_per_second = 0`).
    refusals: Option<Mutex<Debt>>,
    /// `None`: control frames never pause it (`max_control_frames_per_second = 0`).
    control_frames: Option<Mutex<Debt>>,
    start: Instant,
    /// End of the current pause in nanoseconds after `start` (0: not paused).
    until: AtomicU64,
}

/// What a connection was paused for (its metric and its warning).
#[derive(Clone, Copy)]
enum Cause {
    Refusals,
    ControlFrames,
}

impl Pace {
    pub fn new(peer: SocketAddr, refusals: Option<Rate>, control_frames: Option<Rate>) -> Self {
        Self {
            peer,
            refusals: refusals.map(|rate| Mutex::new(Debt::new(rate))),
            control_frames: control_frames.map(|rate| Mutex::new(Debt::new(rate))),
            start: Instant::now(),
            until: AtomicU64::new(0),
        }
    }

    /// Counts the answer to one call against the budget if it refuses the call for a reason
    /// of the caller's making, and pauses the connection once the budget is spent.
    pub fn answered<B>(&self, response: &http::Response<B>) {
        let Some(debt) = &self.refusals else { return };
        if !refusal_code(response.headers()).is_some_and(callers_doing) {
            return;
        }
        self.charge(debt, 1, Cause::Refusals);
    }

    /// Counts `frames` PING and SETTINGS frames the client sent (not ACKs) against their
    /// budget, and pauses the connection once it is spent; whether they paused it.
    pub fn control_frames(&self, frames: usize) -> bool {
        let Some(debt) = &self.control_frames else {
            return false;
        };
        frames > 0 && self.charge(debt, frames, Cause::ControlFrames)
    }

    /// Adds `n` events to `debt` and pauses the connection for what is over the budget;
    /// whether it did.
    fn charge(&self, debt: &Mutex<Debt>, n: usize, cause: Cause) -> bool {
        let (wait, over) = {
            let mut debt = debt.lock().unwrap_or_else(|e| e.into_inner());
            let mut wait = Duration::ZERO;
            let mut over = 0;
            for _ in 0..n {
                wait = debt.add(DEBT_HORIZON);
                over += u64::from(!wait.is_zero());
            }
            (wait, over)
        };
        if over == 0 {
            return false;
        }
        let until = self.start.elapsed() + wait.min(MAX_PAUSE);
        let until = u64::try_from(until.as_nanos()).unwrap_or(u64::MAX);
        self.until.fetch_max(until, Ordering::AcqRel);
        static REFUSALS: LogLimit = LogLimit::new();
        static CONTROL_FRAMES: LogLimit = LogLimit::new();
        match cause {
            Cause::Refusals => {
                crate::metrics::refusal_paced();
                if let Some(suppressed) = REFUSALS.due() {
                    tracing::warn!(
                        peer = %self.peer,
                        suppressed,
                        "pausing a connection whose calls keep being refused (see server.limits.max_refusals_per_second)"
                    );
                }
            }
            Cause::ControlFrames => {
                crate::metrics::control_frames_paced(over);
                if let Some(suppressed) = CONTROL_FRAMES.due() {
                    tracing::warn!(
                        peer = %self.peer,
                        suppressed,
                        "pausing a connection that floods PING or SETTINGS frames (see server.limits.max_control_frames_per_second)"
                    );
                }
            }
        }
        true
    }

    /// Until when the connection is paused, if it is now.
    pub(super) fn paused_until(&self) -> Option<Instant> {
        let until = self.until.load(Ordering::Acquire);
        if until == 0 {
            return None;
        }
        let until = self.start + Duration::from_nanos(until);
        (until > Instant::now()).then_some(until)
    }
}

/// Whether a refusal with `code` is of the caller's making (it asked for what it may not
/// have, sent what cannot be served, or asked too often), as opposed to the signer or Vault
/// being unable to serve it.
fn callers_doing(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::ResourceExhausted
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::Unimplemented
            | Code::Unauthenticated
    )
}

/// A connection's future, not polled while its [`Pace`] is paused.
pub struct Paced<'a, F> {
    inner: F,
    pace: &'a Pace,
    /// Created at the connection's first pause (most connections never have one).
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<'a, F> Paced<'a, F> {
    pub fn new(inner: F, pace: &'a Pace) -> Self {
        Self {
            inner,
            pace,
            sleep: None,
        }
    }

    /// The connection itself (to ask it to shut down).
    pub fn get_mut(&mut self) -> &mut F {
        &mut self.inner
    }
}

impl<F: Future + Unpin> Future for Paced<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        if let Some(until) = this.pace.paused_until() {
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
            if sleep.deadline() != until {
                sleep.as_mut().reset(until);
            }
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        Pin::new(&mut this.inner).poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    fn refusal(code: Code) -> http::Response<()> {
        let mut r = http::Response::new(());
        r.headers_mut()
            .insert(tonic::Status::GRPC_STATUS, (code as i32).into());
        r
    }

    fn rate(per_second: u32, burst: u32) -> Option<Rate> {
        Some(Rate::new(
            NonZeroU32::new(per_second).unwrap(),
            Duration::from_secs(1),
            NonZeroU32::new(burst).unwrap(),
        ))
    }

    fn pace(per_second: u32, burst: u32) -> Pace {
        Pace::new(([127, 0, 0, 1], 1).into(), rate(per_second, burst), None)
    }

    #[tokio::test(start_paused = true)]
    async fn the_callers_refusals_beyond_the_burst_pause_the_connection() {
        let pace = pace(10, 3);
        for _ in 0..2 {
            pace.answered(&refusal(Code::Unauthenticated));
        }
        assert_eq!(pace.paused_until(), None);
        // Served calls and the signer's own failures never count.
        for _ in 0..50 {
            pace.answered(&http::Response::new(()));
            pace.answered(&refusal(Code::Unavailable));
            pace.answered(&refusal(Code::DeadlineExceeded));
        }
        assert_eq!(pace.paused_until(), None);
        // The third empties the bucket: 100 ms until the next has room.
        pace.answered(&refusal(Code::ResourceExhausted));
        let now = Instant::now();
        assert_eq!(pace.paused_until(), Some(now + Duration::from_millis(100)));
        // However far over, at most MAX_PAUSE at a time.
        for _ in 0..100 {
            pace.answered(&refusal(Code::PermissionDenied));
        }
        assert_eq!(pace.paused_until(), Some(now + MAX_PAUSE));
        tokio::time::advance(MAX_PAUSE).await;
        assert_eq!(pace.paused_until(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn off_never_pauses() {
        let pace = Pace::new(([127, 0, 0, 1], 1).into(), None, None);
        for _ in 0..1000 {
            pace.answered(&refusal(Code::Unauthenticated));
            pace.control_frames(1000);
        }
        assert_eq!(pace.paused_until(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_paused_connection_is_not_polled_until_the_pause_ends() {
        let pace = pace(10, 1);
        let polls = std::sync::atomic::AtomicUsize::new(0);
        let inner = std::future::poll_fn(|_| {
            polls.fetch_add(1, Ordering::Relaxed);
            Poll::<()>::Pending
        });
        tokio::pin!(inner);
        let mut paced = Paced::new(inner, &pace);
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(Pin::new(&mut paced).poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::Relaxed), 1);
        // One refusal empties a bucket of one: paused for 100 ms.
        pace.answered(&refusal(Code::Unauthenticated));
        assert!(Pin::new(&mut paced).poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::Relaxed), 1, "polled while paused");
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(Pin::new(&mut paced).poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::Relaxed), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn control_frames_beyond_their_own_burst_pause_the_connection() {
        let pace = Pace::new(([127, 0, 0, 1], 1).into(), rate(10, 1), rate(10, 32));
        // A client's SETTINGS and keepalive PINGs: within the burst.
        pace.control_frames(1);
        pace.control_frames(30);
        assert_eq!(pace.paused_until(), None);
        // Refusals have a budget of their own: the frames spent none of it.
        pace.answered(&refusal(Code::Unauthenticated));
        let now = Instant::now();
        assert_eq!(pace.paused_until(), Some(now + Duration::from_millis(100)));
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(pace.paused_until(), None);
        // One read of a flood: 1,800 frames, paused for at most MAX_PAUSE.
        pace.control_frames(1800);
        assert_eq!(pace.paused_until(), Some(Instant::now() + MAX_PAUSE));
    }
}
