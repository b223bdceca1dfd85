//! The one place a call's outcome is reported: metrics, the request span's fields, the request
//! log line (target `istio_vault_ca::request`) and the audit line. Calls refused by the gate
//! before the handler ran (overload, slow or oversized messages) go through here too, so every
//! CreateCertificate call is counted and logged exactly once.

use std::fmt::Display;
use std::net::SocketAddr;
use std::time::Instant;

use tonic::{Code, Status};

use crate::authn::Caller;
use crate::signer::{Certified, Routed};
use crate::telemetry::{AUDIT_TARGET, REQUEST_TARGET};
use crate::vault::Urgency;

/// Where and when a call arrived.
pub struct Call<'a> {
    pub span: &'a tracing::Span,
    pub start: Instant,
    pub peer: Option<SocketAddr>,
    /// The `clusterid` header as sent (empty when absent).
    pub cluster: &'a str,
}

/// Names one refused call in the status a caller reads and in the signer's request and audit
/// lines, so an operator finds the detail a status leaves out: `<process>-<sequence>`, the
/// process part random per start (replicas and restarts do not collide).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestId(u64);

impl RequestId {
    /// The next id of this process.
    pub fn next() -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Self(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }
}

impl Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        static PROCESS: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
        let process = PROCESS.get_or_init(|| {
            let mut bytes = [0u8; 4];
            let _ = aws_lc_rs::rand::fill(&mut bytes);
            u32::from_be_bytes(bytes)
        });
        write!(f, "{process:08x}-{}", self.0)
    }
}

/// A refused call.
pub struct Refused<'a> {
    pub status: &'a Status,
    /// Named in the status where it leaves details to the log.
    pub request_id: RequestId,
    /// Short stable label (metrics, logs).
    pub reason: &'static str,
    /// The full reason, for the signer's own log and audit trail.
    pub error: &'a dyn Display,
    /// Who asked, when authentication had succeeded.
    pub caller: Option<&'a Caller>,
    /// The identity asked for, when known.
    pub requested: Option<&'a str>,
    /// Where the call was routed, when it got that far.
    pub routed: Option<&'a Routed>,
    /// Its place in Vault's queue, when it got that far.
    pub urgency: Option<Urgency>,
}

/// Reports an issued certificate.
pub fn issued(call: &Call<'_>, caller: &Caller, certified: &Certified, urgency: Urgency) {
    let Certified {
        identity,
        routed,
        chain,
        clamped,
    } = certified;
    let took = call.start.elapsed();
    call.span
        .record("cluster", call.cluster)
        .record("otel.status_code", "ok")
        .record("rpc.grpc.status_code", Code::Ok as i32)
        .record("outcome", "issued")
        .record("caller", tracing::field::display(&caller.identity))
        .record("authn", caller.method.as_str())
        .record("identity", tracing::field::display(identity))
        .record("serial", tracing::field::display(&chain.serial))
        .record("route", &*routed.route)
        .record("sign_target", &*routed.target);
    crate::metrics::request("issued", Code::Ok, None, took);
    crate::metrics::routed(&routed.route, &routed.target, "issued");
    crate::metrics::issued(chain.not_after);
    tracing::info!(
        target: REQUEST_TARGET,
        identity = %identity,
        caller = %caller.identity,
        authn = caller.method.as_str(),
        cluster = call.cluster,
        outcome = "issued",
        code = ?Code::Ok,
        serial = %chain.serial,
        not_after = chain.not_after,
        clamped,
        route = &*routed.route,
        sign_target = &*routed.target,
        urgency = urgency.as_str(),
        duration_ms = millis(took),
        peer = %Peer(call.peer),
        "CreateCertificate"
    );
    tracing::info!(
        target: AUDIT_TARGET,
        outcome = "issued",
        code = "OK",
        caller = %caller.identity,
        authn = caller.method.as_str(),
        caller_pod = caller_pod(caller).map(tracing::field::display),
        caller_node = caller_node(caller),
        cluster = call.cluster,
        requested = %identity,
        issued = %identity,
        serial = %chain.serial,
        not_after = chain.not_after,
        clamped,
        route = &*routed.route,
        sign_target = &*routed.target,
        urgency = urgency.as_str(),
        peer = %Peer(call.peer),
        "certificate issued"
    );
}

/// Reports a refusal, wherever it was decided.
pub fn refused(call: &Call<'_>, r: Refused<'_>) {
    let took = call.start.elapsed();
    let code = r.status.code();
    if code == Code::ResourceExhausted {
        crate::metrics::shed(r.reason);
    }
    crate::metrics::request("refused", code, Some(r.reason), took);
    let route = r.routed.map(|x| &*x.route);
    let sign_target = r.routed.map(|x| &*x.target);
    if let Some(routed) = r.routed {
        crate::metrics::routed(&routed.route, &routed.target, "refused");
        call.span
            .record("route", &*routed.route)
            .record("sign_target", &*routed.target);
    }
    let authn = r.caller.map(|c| c.method.as_str());
    let caller_id = r.caller.map(|c| c.identity.to_string());
    call.span
        .record("cluster", call.cluster)
        .record("otel.status_code", "error")
        .record("otel.status_description", r.status.message())
        .record("rpc.grpc.status_code", code as i32)
        .record("outcome", "refused")
        .record("reason", r.reason)
        .record("caller", caller_id.as_deref().unwrap_or("-"));
    tracing::info!(
        target: REQUEST_TARGET,
        caller = caller_id.as_deref().unwrap_or("-"),
        cluster = call.cluster,
        outcome = "refused",
        code = ?code,
        reason = r.reason,
        error = %r.error,
        request_id = %r.request_id,
        route,
        sign_target,
        urgency = r.urgency.map(Urgency::as_str),
        duration_ms = millis(took),
        peer = %Peer(call.peer),
        "CreateCertificate"
    );
    tracing::info!(
        target: AUDIT_TARGET,
        outcome = "refused",
        code = ?code,
        caller = caller_id.as_deref().unwrap_or("-"),
        authn,
        caller_pod = r.caller.and_then(caller_pod).map(tracing::field::display),
        caller_node = r.caller.and_then(caller_node),
        cluster = call.cluster,
        requested = r.requested.unwrap_or("-"),
        reason = r.reason,
        error = %r.error,
        request_id = %r.request_id,
        route,
        sign_target,
        urgency = r.urgency.map(Urgency::as_str),
        peer = %Peer(call.peer),
        "certificate refused"
    );
}

/// A duration in milliseconds rounded to the microsecond (`7.744`, not `7.7438009999999995`).
fn millis(d: std::time::Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

/// The caller's address as `ip:port`, `-` when unknown (never `Some(…)`).
struct Peer(Option<SocketAddr>);

impl Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(addr) => write!(f, "{addr}"),
            None => f.write_str("-"),
        }
    }
}

/// The caller's pod as `namespace/name`, when its credential is bound to a pod: in the audit
/// trail it says which workload, or which ztunnel, asked. Formatted only if the line is written.
fn caller_pod(caller: &Caller) -> Option<impl Display + '_> {
    struct PodName<'a>(&'a str, &'a str);
    impl Display for PodName<'_> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{}/{}", self.0, self.1)
        }
    }
    let pod = caller.pod.as_ref()?;
    Some(PodName(caller.identity.namespace(), &pod.name))
}

/// The node of the caller's pod, when its credential names one.
fn caller_node(caller: &Caller) -> Option<&str> {
    caller.pod.as_ref()?.node.as_deref()
}
