//! The gate every call passes before its message is read: a slot among
//! `server.max_in_flight` (and `server.limits.max_in_flight_per_peer` for its source address),
//! a bounded wait for one, and a deadline for the message to arrive.
//!
//! Nothing of a call is buffered until it holds a slot: while it waits, the HTTP/2 flow-control
//! window of its connection bounds what the client can push. Calls refused here, and calls
//! that tonic refuses while decoding (oversized or malformed messages), are reported through
//! [`outcome`](super::outcome) like every other refusal, with a precise code.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;
use tonic::{Code, Status};

use super::outcome::{self, Call, Refused};
use crate::telemetry::SPAN_TARGET;

/// The gRPC path of the certificate service's one method.
pub const CREATE_CERTIFICATE: &str = "/istio.v1.auth.IstioCertificateService/CreateCertificate";

/// Limits the gate enforces (from `server.*` and `server.limits.*`).
#[derive(Debug, Clone)]
pub struct GateLimits {
    pub max_in_flight: usize,
    pub max_in_flight_per_peer: usize,
    pub max_queued: usize,
    pub queue_timeout: Duration,
    pub body_timeout: Duration,
    /// Largest request message tonic accepts (to word the refusal).
    pub max_message_bytes: usize,
}

/// Admission before decoding, shared by all connections.
pub struct Gate {
    limits: GateLimits,
    state: Mutex<State>,
}

/// Slots and waiters. Freed slots go to waiting peers in turn (round robin over source
/// addresses), so a peer with a thousand waiting calls delays a peer with one by at most one
/// turn, and a full queue drops the newest waiter of the peer with the most.
#[derive(Default)]
struct State {
    free: usize,
    in_flight: HashMap<IpAddr, usize>,
    waiting: HashMap<IpAddr, VecDeque<Waiter>>,
    /// Peers with waiters, in the order they get the next slot.
    turn: VecDeque<IpAddr>,
    queued: usize,
    next_id: u64,
}

struct Waiter {
    id: u64,
    grant: oneshot::Sender<()>,
}

impl State {
    fn running(&self, ip: IpAddr) -> usize {
        self.in_flight.get(&ip).copied().unwrap_or(0)
    }

    fn start(&mut self, ip: IpAddr) {
        *self.in_flight.entry(ip).or_insert(0) += 1;
    }

    fn finish(&mut self, ip: IpAddr) {
        if let Some(n) = self.in_flight.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.in_flight.remove(&ip);
            }
        }
    }

    /// Removes waiter `id` of `ip`, if it still waits.
    fn forget(&mut self, ip: IpAddr, id: u64) -> bool {
        let Some(queue) = self.waiting.get_mut(&ip) else {
            return false;
        };
        let Some(at) = queue.iter().position(|w| w.id == id) else {
            return false;
        };
        queue.remove(at);
        self.queued -= 1;
        if queue.is_empty() {
            self.waiting.remove(&ip);
            self.turn.retain(|p| *p != ip);
        }
        true
    }

    /// Gives a free slot to the next waiting peer below its own limit; keeps it free if none.
    fn hand_over(&mut self, per_peer: usize) {
        let mut tried = 0;
        while tried < self.turn.len() {
            let Some(ip) = self.turn.pop_front() else {
                break;
            };
            if self.running(ip) >= per_peer {
                self.turn.push_back(ip);
                tried += 1;
                continue;
            }
            let Some(queue) = self.waiting.get_mut(&ip) else {
                continue;
            };
            let waiter = queue.pop_front();
            if queue.is_empty() {
                self.waiting.remove(&ip);
            } else {
                self.turn.push_back(ip);
            }
            let Some(waiter) = waiter else { continue };
            self.queued -= 1;
            // A waiter whose call was cancelled is gone: try the next one.
            if waiter.grant.send(()).is_ok() {
                self.start(ip);
                return;
            }
            tried = 0;
        }
        self.free += 1;
    }

    /// Makes room in a full queue for a call from `ip`: drops the newest waiter of the peer
    /// with the most, if that peer has more waiters than `ip` would.
    fn make_room(&mut self, ip: IpAddr) -> bool {
        let mine = self.waiting.get(&ip).map_or(0, VecDeque::len);
        let Some((&hog, len)) = self
            .waiting
            .iter()
            .map(|(p, q)| (p, q.len()))
            .max_by_key(|(_, n)| *n)
        else {
            return false;
        };
        if len <= mine + 1 {
            return false;
        }
        if let Some(queue) = self.waiting.get_mut(&hog) {
            // Dropping the sender tells the waiter it was dropped from the queue.
            queue.pop_back();
            self.queued -= 1;
        }
        true
    }
}

/// A call's place in the signer: released (and handed to the next waiting peer) when the
/// call is answered.
pub struct Pass {
    gate: Arc<Gate>,
    ip: IpAddr,
}

impl Drop for Pass {
    fn drop(&mut self) {
        let mut state = self.gate.state();
        state.finish(self.ip);
        state.hand_over(self.gate.limits.max_in_flight_per_peer);
    }
}

/// Why the gate refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Shed {
    #[error("signer is overloaded: {0} calls already wait for a slot; retry later")]
    QueueFull(usize),
    #[error("signer is overloaded: no slot within {0:?}; retry later")]
    Overloaded(Duration),
    #[error("too many calls from this address at once: no slot within {0:?}; retry later")]
    PeerOverloaded(Duration),
}

impl Shed {
    fn reason(self) -> &'static str {
        match self {
            Self::QueueFull(_) => "queue-full",
            Self::Overloaded(_) => "overloaded",
            Self::PeerOverloaded(_) => "peer-overloaded",
        }
    }
}

/// Per-call context the gate hands to the handler through the request's extensions: the
/// call's span (with its `admission` child already recorded) and whether it was reported.
#[derive(Clone)]
pub struct Arrival {
    pub span: tracing::Span,
    pub start: Instant,
    reported: Arc<AtomicBool>,
}

impl Arrival {
    /// A call's span and start time, for a call that arrived now.
    pub fn now() -> Self {
        Self {
            span: request_span(),
            start: Instant::now(),
            reported: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Called by whoever reports the call's outcome, so the gate does not report it again.
    pub fn mark_reported(&self) {
        self.reported.store(true, Ordering::Relaxed);
    }

    fn reported(&self) -> bool {
        self.reported.load(Ordering::Relaxed)
    }
}

/// The server span of one CreateCertificate call. Disabled (a cached no-op) unless OTLP
/// export is on.
fn request_span() -> tracing::Span {
    use tracing::field::Empty;
    tracing::info_span!(
        target: SPAN_TARGET,
        "CreateCertificate",
        otel.name = "istio.v1.auth.IstioCertificateService/CreateCertificate",
        otel.kind = "server",
        otel.status_code = Empty,
        otel.status_description = Empty,
        rpc.system = "grpc",
        rpc.service = "istio.v1.auth.IstioCertificateService",
        rpc.method = "CreateCertificate",
        rpc.grpc.status_code = Empty,
        caller = Empty,
        authn = Empty,
        cluster = Empty,
        identity = Empty,
        outcome = Empty,
        reason = Empty,
        serial = Empty,
        route = Empty,
        sign_target = Empty,
    )
}

impl Gate {
    pub fn new(limits: GateLimits) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                free: limits.max_in_flight,
                ..State::default()
            }),
            limits,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits (boundedly, in turn with other peers) for a slot for a call from `ip`.
    pub async fn enter(self: &Arc<Self>, ip: IpAddr) -> Result<Pass, Shed> {
        let per_peer = self.limits.max_in_flight_per_peer;
        let (id, granted) = {
            let mut state = self.state();
            if state.free > 0 && state.running(ip) < per_peer && !state.waiting.contains_key(&ip) {
                state.free -= 1;
                state.start(ip);
                return Ok(Pass {
                    gate: self.clone(),
                    ip,
                });
            }
            if state.queued >= self.limits.max_queued && !state.make_room(ip) {
                return Err(Shed::QueueFull(self.limits.max_queued));
            }
            let id = state.next_id;
            state.next_id += 1;
            let (grant, granted) = oneshot::channel();
            let queue = state.waiting.entry(ip).or_default();
            queue.push_back(Waiter { id, grant });
            if queue.len() == 1 {
                state.turn.push_back(ip);
            }
            state.queued += 1;
            // A slot may be free while this peer is at its limit or others wait: nothing to
            // hand over now; releases do it.
            (id, granted)
        };
        /// The call's place in the queue. If the call is cancelled while it waits (the client
        /// reset the stream), the waiter is removed, or, if a slot was handed to it in the
        /// meantime, that slot is passed on: a cancelled waiter never keeps a slot.
        struct Waiting<'a> {
            gate: &'a Gate,
            ip: IpAddr,
            id: u64,
            granted: oneshot::Receiver<()>,
            armed: bool,
        }
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                if !self.armed {
                    return;
                }
                let mut state = self.gate.state();
                if !state.forget(self.ip, self.id) && self.granted.try_recv().is_ok() {
                    state.finish(self.ip);
                    state.hand_over(self.gate.limits.max_in_flight_per_peer);
                }
            }
        }
        let mut waiting = Waiting {
            gate: self,
            ip,
            id,
            granted,
            armed: true,
        };
        let wait = self.limits.queue_timeout;
        let result = tokio::time::timeout(wait, &mut waiting.granted).await;
        let pass = || Pass {
            gate: self.clone(),
            ip,
        };
        let outcome = match result {
            Ok(Ok(())) => Ok(pass()),
            // Dropped from a full queue to make room for a quieter peer.
            Ok(Err(_)) => Err(Shed::QueueFull(self.limits.max_queued)),
            Err(_) => {
                let mut state = self.state();
                if state.forget(ip, id) {
                    Err(if state.running(ip) >= per_peer {
                        Shed::PeerOverloaded(wait)
                    } else {
                        Shed::Overloaded(wait)
                    })
                } else {
                    drop(state);
                    match waiting.granted.try_recv() {
                        // Granted just as the wait ran out: the slot is ours.
                        Ok(()) => Ok(pass()),
                        // Dropped from a full queue just then.
                        Err(_) => Err(Shed::QueueFull(self.limits.max_queued)),
                    }
                }
            }
        };
        waiting.armed = false;
        outcome
    }

    /// Admits `req`, gives its body a deadline, runs `service`, and reports refusals that the
    /// handler did not report itself.
    pub async fn run<B, S>(
        self: Arc<Self>,
        peer: Option<SocketAddr>,
        mut req: http::Request<B>,
        service: S,
    ) -> http::Response<tonic::body::Body>
    where
        B: Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        S: tower::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = std::convert::Infallible,
            >,
    {
        let certificate_call = req.uri().path() == CREATE_CERTIFICATE;
        let arrival = if certificate_call {
            let arrival = Arrival::now();
            crate::telemetry::set_remote_parent(&arrival.span, req.headers());
            Some(arrival)
        } else {
            None
        };
        let span = arrival
            .as_ref()
            .map_or_else(tracing::Span::none, |a| a.span.clone());
        let admission = tracing::info_span!(target: SPAN_TARGET, parent: &span, "admission");
        let entered = {
            use tracing::Instrument;
            let ip = peer.map_or(IpAddr::from([0, 0, 0, 0]), |p| p.ip());
            self.enter(ip).instrument(admission).await
        };
        let pass = match entered {
            Ok(pass) => pass,
            Err(shed) => {
                let status = Status::resource_exhausted(shed.to_string());
                if let Some(arrival) = &arrival {
                    let cluster = req.headers().get("clusterid");
                    report(arrival, cluster, peer, &status, shed.reason(), &shed);
                }
                return status.into_http();
            }
        };
        let deadline = Instant::now() + self.limits.body_timeout;
        if let Some(arrival) = &arrival {
            req.extensions_mut().insert(arrival.clone());
        }
        let (parts, body) = req.into_parts();
        let body = tonic::body::Body::new(Deadline::new(body, deadline, self.limits.body_timeout));
        let req = http::Request::from_parts(parts, body);
        // All a late refusal report needs of the headers (a reference-counted copy).
        let cluster_header = req.headers().get("clusterid").cloned();
        let response = match tower::ServiceExt::oneshot(service, req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        drop(pass);
        let Some(arrival) = arrival.filter(|a| !a.reported()) else {
            return response;
        };
        // The handler never ran: tonic refused the message. Say precisely why.
        let code = response
            .headers()
            .get(Status::GRPC_STATUS)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i32>().ok())
            .map(Code::from_i32)
            .unwrap_or(Code::Ok);
        let (status, reason) = match code {
            Code::Ok => return response,
            Code::OutOfRange | Code::ResourceExhausted => (
                Status::resource_exhausted(format!(
                    "request message larger than {} bytes",
                    self.limits.max_message_bytes
                )),
                "message-too-large",
            ),
            Code::DeadlineExceeded => (
                Status::deadline_exceeded(format!(
                    "request message not received within {:?}",
                    self.limits.body_timeout
                )),
                "slow-request",
            ),
            Code::Internal | Code::InvalidArgument | Code::Unknown => (
                Status::invalid_argument("malformed request message"),
                "malformed-request",
            ),
            other => (Status::new(other, "request refused"), "transport"),
        };
        let detail = response
            .headers()
            .get(Status::GRPC_MESSAGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        report(
            &arrival,
            cluster_header.as_ref(),
            peer,
            &status,
            reason,
            &format_args!("{} ({})", status.message(), detail),
        );
        status.into_http()
    }
}

fn report(
    arrival: &Arrival,
    cluster: Option<&http::HeaderValue>,
    peer: Option<SocketAddr>,
    status: &Status,
    reason: &'static str,
    error: &dyn std::fmt::Display,
) {
    arrival.mark_reported();
    let cluster = cluster
        .and_then(|v| v.to_str().ok())
        .map(crate::echo::truncated)
        .unwrap_or_default();
    outcome::refused(
        &Call {
            span: &arrival.span,
            start: arrival.start,
            peer,
            cluster: &cluster,
        },
        Refused {
            status,
            request_id: outcome::RequestId::next(),
            reason,
            error,
            caller: None,
            requested: None,
            routed: None,
        },
    );
}

/// A request body that must end by a deadline: a client that sends headers and then trickles
/// (or never finishes) its message holds its slot for at most `server.limits.body_timeout`.
struct Deadline<B> {
    inner: B,
    sleep: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
    done: bool,
}

impl<B> Deadline<B> {
    fn new(inner: B, deadline: Instant, timeout: Duration) -> Self {
        Self {
            inner,
            sleep: Box::pin(tokio::time::sleep_until(deadline.into())),
            timeout,
            done: false,
        }
    }
}

impl<B> Body for Deadline<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            if frame
                .as_ref()
                .is_none_or(|f| f.as_ref().is_ok_and(|f| f.is_trailers()))
            {
                this.done = true;
            }
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if !this.done && this.sleep.as_mut().poll(cx).is_ready() {
            this.done = true;
            return Poll::Ready(Some(Err(Box::new(Status::deadline_exceeded(format!(
                "request message not received within {:?}",
                this.timeout
            ))))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(max_in_flight: usize, per_peer: usize) -> Arc<Gate> {
        Gate::new(GateLimits {
            max_in_flight,
            max_in_flight_per_peer: per_peer,
            max_queued: 8,
            queue_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(1),
            max_message_bytes: 1024,
        })
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, n])
    }

    /// A waiter cancelled right after a slot was handed to it passes the slot on; one
    /// cancelled before keeps none. Either way no slot leaks.
    #[tokio::test]
    async fn cancelled_waiters_never_keep_a_slot() {
        let g = gate(1, 1);
        let first = g.enter(ip(1)).await.unwrap();
        let waiter = tokio::spawn({
            let g = g.clone();
            async move { g.enter(ip(2)).await.map(|_| ()) }
        });
        tokio::task::yield_now().await;
        while g.state().queued == 0 {
            tokio::task::yield_now().await;
        }
        // The slot goes to the waiter, which is cancelled before it can see it.
        drop(first);
        waiter.abort();
        let _ = waiter.await;
        let third = tokio::time::timeout(Duration::from_millis(100), g.enter(ip(3)))
            .await
            .expect("the slot was not leaked")
            .unwrap();
        drop(third);
        assert_eq!(g.state().free, 1);
        assert!(g.state().in_flight.is_empty());
    }

    /// Freed slots go to waiting addresses in turn: a quiet address waits behind at most one
    /// call of a busy one.
    #[tokio::test]
    async fn slots_are_handed_out_in_turn() {
        let g = gate(1, 8);
        let held = g.enter(ip(1)).await.unwrap();
        let mut busy = Vec::new();
        for _ in 0..4 {
            let g = g.clone();
            // The task's output (its pass) is kept until it is joined: slots stay taken.
            busy.push(tokio::spawn(async move { g.enter(ip(1)).await.ok() }));
        }
        while g.state().queued < 4 {
            tokio::task::yield_now().await;
        }
        let quiet = tokio::spawn({
            let g = g.clone();
            async move { g.enter(ip(2)).await.map(|pass| (pass.ip, pass)) }
        });
        while g.state().queued < 5 {
            tokio::task::yield_now().await;
        }
        drop(held);
        // The freed slot went to the busy address's oldest waiter; the quiet address is next,
        // ahead of the busy address's three other waiters.
        let order: Vec<IpAddr> = g.state().turn.iter().copied().collect();
        assert_eq!(order, vec![ip(2), ip(1)]);
        assert_eq!(g.state().running(ip(1)), 1);
        for b in busy {
            b.abort();
        }
        quiet.abort();
    }
}
