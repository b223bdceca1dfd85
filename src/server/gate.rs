//! The gate every call passes before its message is read: a slot among
//! `server.max_in_flight` (and `server.limits.max_in_flight_per_peer` for its source address),
//! a wait for one bounded by the call's own deadline, and a deadline for the message to arrive.
//!
//! A call waits as long as its deadline allows: its `grpc-timeout` less the signer's recent
//! service time (what it still needs once it holds a slot), or `server.queue_timeout` when it
//! carries none (pilot-agent and ztunnel send none). It is refused before that only when the
//! queue is full, or at once when its deadline leaves no time to wait.
//!
//! Nothing of a call is buffered until it holds a slot: while it waits, the HTTP/2 flow-control
//! window of its connection bounds what the client can push. Calls refused here, and calls
//! that tonic refuses while decoding (oversized or malformed messages), are reported through
//! [`outcome`](super::outcome) like every other refusal, with a precise code.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::Body;
use tokio::sync::oneshot;
use tonic::{Code, Status};

use super::outcome::{self, Call, Refused};
pub use super::shed::Shed;
use super::status::{Rejection, refusal_code};
use crate::telemetry::SPAN_TARGET;
use deadline::{Deadline, grpc_timeout};
pub use pass::{Pass, Slot};
use queue::State;

mod deadline;
mod pass;
mod queue;

/// The gRPC path of the certificate service's one method.
pub const CREATE_CERTIFICATE: &str = "/istio.v1.auth.IstioCertificateService/CreateCertificate";

/// Limits the gate enforces (from `server.*` and `server.limits.*`).
#[derive(Debug, Clone)]
pub struct GateLimits {
    pub max_in_flight: usize,
    pub max_in_flight_per_peer: usize,
    pub max_queued: usize,
    /// Calls that may hand their slot on while they wait for Vault ([`Slot::release`]).
    pub max_waiting_for_vault: usize,
    /// Longest wait for a slot of a call that carries no `grpc-timeout`.
    pub queue_timeout: Duration,
    pub body_timeout: Duration,
    /// Largest request message tonic accepts (to word the refusal).
    pub max_message_bytes: usize,
}

/// Longest wait for a slot whatever the call's `grpc-timeout` says (an hour-long deadline
/// would otherwise hold a queue place for an hour).
pub const MAX_QUEUE_WAIT: Duration = Duration::from_secs(300);

/// What a call is assumed to need once it holds a slot, before any call was served.
const INITIAL_SERVICE_ESTIMATE: Duration = Duration::from_millis(100);

/// The least a call with a deadline keeps for its own service when it waits.
const MIN_SERVICE_RESERVE: Duration = Duration::from_millis(20);

/// Admission before decoding, shared by all connections.
pub struct Gate {
    limits: GateLimits,
    state: Mutex<State>,
    /// Moving average of how long served calls took once admitted (nanoseconds): what a
    /// waiting call with a deadline keeps in reserve.
    service_nanos: AtomicU64,
    /// Calls that handed their slot on while they wait for Vault ([`Slot::release`]).
    released: AtomicUsize,
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
        urgency = Empty,
    )
}

impl Gate {
    pub fn new(limits: GateLimits) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State::new(limits.max_in_flight)),
            limits,
            service_nanos: AtomicU64::new(INITIAL_SERVICE_ESTIMATE.as_nanos() as u64),
            released: AtomicUsize::new(0),
        })
    }

    /// What a call still needs once it holds a slot (recent served calls, averaged).
    fn service_estimate(&self) -> Duration {
        Duration::from_nanos(self.service_nanos.load(Ordering::Relaxed))
    }

    /// Folds a served call's time after admission into the estimate (weight 1/8).
    fn observe_service(&self, took: Duration) {
        let took = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .service_nanos
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(old - old / 8 + took / 8)
            });
    }

    /// How long a call that arrived at `arrival` with `timeout` (its `grpc-timeout`) may
    /// wait for a slot: until its deadline less what serving it takes.
    fn wait_limit(&self, timeout: Option<Duration>) -> Result<Duration, Shed> {
        let Some(timeout) = timeout else {
            return Ok(self.limits.queue_timeout);
        };
        let reserve = self.service_estimate().max(MIN_SERVICE_RESERVE);
        match timeout.checked_sub(reserve) {
            Some(wait) if !wait.is_zero() => Ok(wait.min(MAX_QUEUE_WAIT)),
            _ => Err(Shed::NoTimeToWait(timeout, reserve)),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits (in turn with other peers, as long as the call's `timeout` allows: see
    /// [`Gate::wait_limit`]) for a slot for a call from `ip`.
    pub async fn enter(
        self: &Arc<Self>,
        ip: IpAddr,
        timeout: Option<Duration>,
    ) -> Result<Pass, Shed> {
        let per_peer = self.limits.max_in_flight_per_peer;
        let (id, granted, wait) = {
            let mut state = self.state();
            if state.try_start(ip, per_peer) {
                return Ok(Pass {
                    gate: self.clone(),
                    ip,
                });
            }
            // Waiting is pointless when the deadline cannot be met after it.
            let wait = self.wait_limit(timeout)?;
            let Some((id, granted)) = state.enqueue(ip, self.limits.max_queued) else {
                return Err(Shed::QueueFull(self.limits.max_queued));
            };
            // A slot may be free while this peer is at its limit or others wait: nothing to
            // hand over now; releases do it.
            (id, granted, wait)
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
            since: Instant,
        }
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                crate::metrics::queue_left(self.since.elapsed());
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
            since: Instant::now(),
        };
        crate::metrics::queue_entered();
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
        let refuse = |rejection: Rejection| {
            let status = rejection.status();
            if let Some(arrival) = &arrival {
                let cluster = req.headers().get("clusterid");
                report(
                    arrival,
                    cluster,
                    peer,
                    &status,
                    rejection.reason(),
                    &status.message(),
                );
            }
            status.into_http()
        };
        let timeout = match grpc_timeout(req.headers()) {
            Ok(timeout) => timeout,
            Err(e) => return refuse(Rejection::MalformedTimeout(e.to_string())),
        };
        let admission = tracing::info_span!(target: SPAN_TARGET, parent: &span, "admission");
        let entered = {
            use tracing::Instrument;
            let ip = peer.map_or(IpAddr::from([0, 0, 0, 0]), |p| p.ip());
            self.enter(ip, timeout).instrument(admission).await
        };
        let pass = match entered {
            Ok(pass) => pass,
            Err(shed) => return refuse(Rejection::Shed(shed)),
        };
        let admitted = Instant::now();
        let deadline = admitted + self.limits.body_timeout;
        if let Some(arrival) = &arrival {
            req.extensions_mut().insert(arrival.clone());
        }
        let slot = Slot::new(pass);
        req.extensions_mut().insert(slot.clone());
        let (parts, body) = req.into_parts();
        let body = tonic::body::Body::new(Deadline::new(body, deadline, self.limits.body_timeout));
        let req = http::Request::from_parts(parts, body);
        // All a late refusal report needs of the headers (a reference-counted copy).
        let cluster_header = req.headers().get("clusterid").cloned();
        let response = match tower::ServiceExt::oneshot(service, req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        slot.end();
        let Some(arrival) = arrival.filter(|a| !a.reported()) else {
            // An answered certificate call (trailers carry its status; an error the handler
            // reported comes as a trailers-only response with grpc-status in the headers).
            if certificate_call && !response.headers().contains_key(Status::GRPC_STATUS) {
                self.observe_service(admitted.elapsed());
            }
            return response;
        };
        // The handler never ran: tonic refused the message. Say precisely why.
        let code = refusal_code(response.headers()).unwrap_or(Code::Ok);
        if code == Code::Ok {
            return response;
        }
        let rejection = Rejection::from_transport(
            code,
            self.limits.max_message_bytes,
            self.limits.body_timeout,
        );
        let (status, reason) = (rejection.status(), rejection.reason());
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
            urgency: None,
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(max_in_flight: usize, per_peer: usize) -> Arc<Gate> {
        Gate::new(GateLimits {
            max_in_flight,
            max_in_flight_per_peer: per_peer,
            max_queued: 8,
            max_waiting_for_vault: 8,
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
        let first = g.enter(ip(1), None).await.unwrap();
        let waiter = tokio::spawn({
            let g = g.clone();
            async move { g.enter(ip(2), None).await.map(|_| ()) }
        });
        tokio::task::yield_now().await;
        while g.state().queued == 0 {
            tokio::task::yield_now().await;
        }
        // The slot goes to the waiter, which is cancelled before it can see it.
        drop(first);
        waiter.abort();
        let _ = waiter.await;
        let third = tokio::time::timeout(Duration::from_millis(100), g.enter(ip(3), None))
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
        let held = g.enter(ip(1), None).await.unwrap();
        let mut busy = Vec::new();
        for _ in 0..4 {
            let g = g.clone();
            // The task's output (its pass) is kept until it is joined: slots stay taken.
            busy.push(tokio::spawn(async move { g.enter(ip(1), None).await.ok() }));
        }
        while g.state().queued < 4 {
            tokio::task::yield_now().await;
        }
        let quiet = tokio::spawn({
            let g = g.clone();
            async move { g.enter(ip(2), None).await.map(|pass| (pass.ip, pass)) }
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
    /// A call waiting for Vault hands its slot to the next waiter; at most
    /// `max_waiting_for_vault` (8 here) do so at once, and each counts until it is answered.
    #[tokio::test]
    async fn a_handed_on_slot_goes_to_the_next_call_within_the_bound() {
        let g = gate(1, 16);
        let slots: Vec<Slot> = {
            let mut slots = vec![Slot::new(g.enter(ip(1), None).await.unwrap())];
            for _ in 0..8 {
                let next = tokio::spawn({
                    let g = g.clone();
                    async move { g.enter(ip(1), None).await.map(Slot::new) }
                });
                while g.state().queued < 1 {
                    tokio::task::yield_now().await;
                }
                slots.last().unwrap().release();
                slots.push(next.await.unwrap().expect("the handed-on slot"));
            }
            slots
        };
        assert_eq!(g.released.load(Ordering::Relaxed), 8);
        // The ninth call waiting for Vault keeps its slot: the next caller waits.
        slots[8].release();
        assert_eq!(g.released.load(Ordering::Relaxed), 8);
        assert_eq!(g.state().running(ip(1)), 1);
        assert!(slots[8].holds_pass());
        // An answered call that had handed its slot on makes room for another.
        slots[0].end();
        slots[0].release();
        assert_eq!(
            g.released.load(Ordering::Relaxed),
            7,
            "released once, ended once"
        );
        slots[8].release();
        assert_eq!(g.released.load(Ordering::Relaxed), 8);
        assert_eq!(g.state().running(ip(1)), 0);
        drop(slots);
        assert_eq!(
            g.released.load(Ordering::Relaxed),
            0,
            "dropped calls count no more"
        );
    }

    #[test]
    fn grpc_timeout_follows_the_wire_format() {
        let parse = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert("grpc-timeout", http::HeaderValue::from_str(v).unwrap());
            grpc_timeout(&h).ok().flatten()
        };
        assert_eq!(grpc_timeout(&http::HeaderMap::new()).unwrap(), None);
        assert_eq!(parse("20S"), Some(Duration::from_secs(20)));
        assert_eq!(parse("1000m"), Some(Duration::from_secs(1)));
        assert_eq!(parse("2M"), Some(Duration::from_secs(120)));
        assert_eq!(
            parse("99999999H"),
            Some(Duration::from_secs(99_999_999 * 3600))
        );
        assert_eq!(parse("5u"), Some(Duration::from_micros(5)));
        assert_eq!(parse("7n"), Some(Duration::from_nanos(7)));
        for bad in [
            "",
            "S",
            "10",
            "10s",
            "123456789S",
            "-1S",
            "1.5S",
            " 1S",
            "1 S",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    /// A call with a deadline waits until its deadline less what serving takes; one whose
    /// deadline leaves nothing is refused before it waits; no deadline: `queue_timeout`.
    #[test]
    fn the_wait_follows_the_deadline() {
        let g = gate(1, 1);
        assert_eq!(g.wait_limit(None), Ok(Duration::from_secs(5)));
        assert_eq!(
            g.wait_limit(Some(Duration::from_secs(20))),
            Ok(Duration::from_secs(20) - INITIAL_SERVICE_ESTIMATE)
        );
        assert_eq!(
            g.wait_limit(Some(Duration::from_secs(3600))),
            Ok(MAX_QUEUE_WAIT)
        );
        assert!(matches!(
            g.wait_limit(Some(Duration::from_millis(50))),
            Err(Shed::NoTimeToWait(..))
        ));
        // Served calls took 2 s: a 1 s deadline cannot be met after any wait.
        for _ in 0..64 {
            g.observe_service(Duration::from_secs(2));
        }
        assert!(g.service_estimate() > Duration::from_millis(1900));
        assert!(matches!(
            g.wait_limit(Some(Duration::from_secs(1))),
            Err(Shed::NoTimeToWait(..))
        ));
    }

    /// A call that must queue and whose deadline cannot be met is refused at once; with a
    /// free slot it is served whatever its deadline.
    #[tokio::test]
    async fn a_hopeless_deadline_is_refused_without_waiting() {
        let g = gate(1, 1);
        let short = Some(Duration::from_millis(10));
        let held = g.enter(ip(1), short).await.expect("a free slot is taken");
        let refused = g.enter(ip(2), short).await.map(|_| ()).unwrap_err();
        assert!(matches!(refused, Shed::NoTimeToWait(..)), "{refused}");
        assert_eq!(g.state().queued, 0, "nothing was queued");
        drop(held);
    }
}
