//! Prometheus metrics through the `metrics` facade, rendered at the admin port's `/metrics`.
//! Every metric and its meaning is listed in docs/metrics.md. Recording is a few atomic
//! operations; nothing here allocates per request beyond label look-ups.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

mod describe;
mod pod_cache;
mod state;

use describe::describe;
pub use pod_cache::PodCacheMetrics;
pub use state::{State, VaultState, state};

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The mandatory checks take tens to hundreds of microseconds each.
const CHECK_CPU_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01,
];

/// The CPU time of each mandatory check, by `check`.
const CHECK_CPU: &str = "istio_vault_ca_check_cpu_seconds";

/// Installs the process-wide recorder once and returns the handle that renders it.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("non-empty buckets")
                // A full name is matched before any suffix.
                .set_buckets_for_metric(Matcher::Full(CHECK_CPU.into()), CHECK_CPU_BUCKETS)
                .expect("non-empty buckets")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (tests embedding the signer); then
            // this handle renders an empty registry, which is still a valid exposition.
            let _ = ::metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

/// One finished CreateCertificate call.
pub fn request(
    outcome: &'static str,
    code: tonic::Code,
    reason: Option<&'static str>,
    took: Duration,
) {
    ::metrics::counter!("istio_vault_ca_requests_total", "outcome" => outcome, "code" => code_name(code)).increment(1);
    if let Some(reason) = reason {
        ::metrics::counter!("istio_vault_ca_refusals_total", "reason" => reason).increment(1);
    }
    ::metrics::histogram!("istio_vault_ca_request_duration_seconds").record(took.as_secs_f64());
}

/// One of the mandatory checks, for [`check_cpu`].
#[derive(Debug, Clone, Copy)]
pub enum Check {
    /// A bearer token's signature and claims.
    Token,
    /// The CSR: parse, self-signature, policy.
    Csr,
    /// What Vault issued, against its issuer, and the chain.
    Leaf,
}

/// Runs the mandatory check `f` (synchronous) and records the CPU time it took on this thread.
pub fn checked<T>(check: Check, f: impl FnOnce() -> T) -> T {
    let (out, cpu) = crate::cpu_time::measure(f);
    check_cpu(check, cpu);
    out
}

/// The CPU time one mandatory check took.
fn check_cpu(check: Check, cpu: Duration) {
    let label = match check {
        Check::Token => "token",
        Check::Csr => "csr",
        Check::Leaf => "leaf",
    };
    ::metrics::histogram!(CHECK_CPU, "check" => label).record(cpu.as_secs_f64());
}

/// One call that was routed: the route and target names come from the config, never from
/// the request, so the label set stays bounded.
pub fn routed(route: &std::sync::Arc<str>, target: &std::sync::Arc<str>, outcome: &'static str) {
    // Shared, not copied: the names live as long as the route table that holds them.
    ::metrics::counter!(
        "istio_vault_ca_routed_requests_total",
        "route" => ::metrics::SharedString::from(route.clone()),
        "target" => ::metrics::SharedString::from(target.clone()),
        "outcome" => outcome
    )
    .increment(1);
}

/// A root that appeared on or left a target's trust after start (`target` from the config).
pub fn trust_root_change(target: &str, change: &'static str, served: bool) {
    ::metrics::counter!(
        "istio_vault_ca_trust_root_changes_total",
        "target" => target.to_owned(),
        "change" => change,
        "served" => if served { "true" } else { "false" }
    )
    .increment(1);
}

/// NotAfter of istiod's certificate as written (or found current).
pub fn istiod_certificate(not_after: i64) {
    ::metrics::gauge!("istio_vault_ca_istiod_certificate_expiry_timestamp_seconds")
        .set(not_after as f64);
}

/// One attempt to write istiod's certificate Secret.
pub fn istiod_certificate_write(ok: bool) {
    let result = if ok { "ok" } else { "error" };
    ::metrics::counter!("istio_vault_ca_istiod_certificate_writes_total", "result" => result)
        .increment(1);
}

/// One reload of targets and routes from the config file: applied or refused.
pub fn config_reload(applied: bool) {
    let result = if applied { "applied" } else { "refused" };
    ::metrics::counter!("istio_vault_ca_config_reloads_total", "result" => result).increment(1);
}

/// One call to Vault: the `[vaults.<name>]` server it went to (`None`: `[vault]`, whose series
/// carry no `vault` label), its operation, duration and, if it failed, the error's kind.
pub fn vault_call(
    server: Option<&str>,
    op: &'static str,
    took: Duration,
    error_kind: Option<&'static str>,
) {
    let Some(server) = server else {
        ::metrics::histogram!("istio_vault_ca_vault_request_duration_seconds", "op" => op)
            .record(took.as_secs_f64());
        if let Some(kind) = error_kind {
            ::metrics::counter!("istio_vault_ca_vault_errors_total", "op" => op, "kind" => kind)
                .increment(1);
        }
        return;
    };
    let server = server.to_owned();
    ::metrics::histogram!("istio_vault_ca_vault_request_duration_seconds", "op" => op, "vault" => server.clone())
        .record(took.as_secs_f64());
    if let Some(kind) = error_kind {
        ::metrics::counter!("istio_vault_ca_vault_errors_total", "op" => op, "kind" => kind, "vault" => server)
            .increment(1);
    }
}

/// A certificate handed to the ledger's queue, or dropped because it was full.
pub fn ledger_record(queued: bool) {
    let outcome = if queued { "queued" } else { "dropped" };
    ::metrics::counter!("istio_vault_ca_ledger_records_total", "outcome" => outcome).increment(1);
}

/// One batch write of the ledger; `pending` records wait after it.
pub fn ledger_flush(flush: crate::ledger::Flush, pending: usize) {
    match flush {
        crate::ledger::Flush::Written(n) => {
            ::metrics::counter!("istio_vault_ca_ledger_records_total", "outcome" => "written")
                .increment(n as u64)
        }
        crate::ledger::Flush::Failed => {
            ::metrics::counter!("istio_vault_ca_ledger_failures_total", "op" => "write")
                .increment(1)
        }
    }
    ::metrics::gauge!("istio_vault_ca_ledger_pending").set(pending as f64);
}

/// One read of the deny list: entries in force, or a failure.
pub fn deny_list(entries: Option<usize>) {
    match entries {
        Some(n) => ::metrics::gauge!("istio_vault_ca_deny_list_entries").set(n as f64),
        None => ::metrics::counter!("istio_vault_ca_ledger_failures_total", "op" => "deny_list")
            .increment(1),
    }
}

/// Records a shutdown could not write.
pub fn ledger_lost(n: usize) {
    ::metrics::counter!("istio_vault_ca_ledger_records_total", "outcome" => "lost")
        .increment(n as u64);
}

/// One pruning round: batches deleted, or a failure.
pub fn ledger_pruned(deleted: Option<usize>) {
    match deleted {
        Some(n) => {
            ::metrics::counter!("istio_vault_ca_ledger_pruned_batches_total").increment(n as u64)
        }
        None => ::metrics::counter!("istio_vault_ca_ledger_failures_total", "op" => "prune")
            .increment(1),
    }
}

pub fn vault_warning() {
    ::metrics::counter!("istio_vault_ca_vault_warnings_total").increment(1);
}

/// `by` is `policy` (the signer's `ttl.max`) or `vault` (role/mount/issuer limits).
pub fn ttl_clamped(by: &'static str) {
    ::metrics::counter!("istio_vault_ca_ttl_clamped_total", "by" => by).increment(1);
}

pub fn connection_accepted() {
    ::metrics::counter!("istio_vault_ca_connections_total").increment(1);
}

/// A connection refused, or closed to make room for a new one: `connection-limit`,
/// `peer-connection-limit`, `evicted-unproven`, `evicted-proven` (closed gracefully: its
/// address held the most connections), `handshake-rate` (its address's next
/// handshake turn was further away than half of `server.handshake_timeout`; held until the
/// handshake timed out), `handshake-timeout` or `handshake-failed`.
pub fn connection_refused(reason: &'static str) {
    ::metrics::counter!("istio_vault_ca_connections_refused_total", "reason" => reason)
        .increment(1);
}

/// A TLS handshake that waited for its address's turn (`max_handshakes_per_second_per_peer`).
pub fn handshake_waited() {
    ::metrics::counter!("istio_vault_ca_handshake_waits_total").increment(1);
}

/// A refusal beyond its connection's budget, which paused the connection (`server::pace`).
pub fn refusal_paced() {
    ::metrics::counter!("istio_vault_ca_paced_refusals_total").increment(1);
}

/// `frames` PING or SETTINGS frames beyond their connection's budget (the connection is paused).
pub fn control_frames_paced(frames: u64) {
    ::metrics::counter!("istio_vault_ca_paced_control_frames_total").increment(frames);
}

/// How busy each serving thread was over its last measurement (`crate::worker`), 1-based.
pub fn serving_thread_busy(busy: impl Iterator<Item = f64>) {
    for (i, share) in busy.enumerate() {
        ::metrics::gauge!("istio_vault_ca_serving_thread_busy_ratio", "thread" => (i + 1).to_string())
            .set(share);
    }
}

/// A call run on another serving thread than its connection's, which was busy
/// (`crate::worker`).
pub fn call_overflowed() {
    ::metrics::counter!("istio_vault_ca_calls_overflowed_total").increment(1);
}

/// Connections open on the gRPC port (handshakes in progress included).
pub fn connections_open(n: usize) {
    ::metrics::gauge!("istio_vault_ca_connections_open").set(n as f64);
}

/// A call refused with `ResourceExhausted` (`reason`: overloaded, peer-overloaded,
/// queue-full, message-too-large).
pub fn shed(reason: &'static str) {
    ::metrics::counter!("istio_vault_ca_shed_total", "reason" => reason).increment(1);
}

/// A call starts waiting for a slot.
pub fn queue_entered() {
    ::metrics::gauge!("istio_vault_ca_queued_requests").increment(1.0);
}

/// A call stopped waiting for a slot (granted, refused or cancelled) after `waited`.
pub fn queue_left(waited: Duration) {
    ::metrics::gauge!("istio_vault_ca_queued_requests").decrement(1.0);
    ::metrics::histogram!("istio_vault_ca_queue_wait_seconds").record(waited.as_secs_f64());
}

/// A call handed its admission slot on while it waits for its turn at Vault.
pub fn slot_handed_on() {
    ::metrics::counter!("istio_vault_ca_slots_handed_on_total").increment(1);
}

pub fn deduplicated() {
    ::metrics::counter!("istio_vault_ca_deduplicated_total").increment(1);
}

/// A caller authentication answered from (`hit`) or missing (`miss`) the result cache.
pub fn authn_cache(hit: bool) {
    let result = if hit { "hit" } else { "miss" };
    ::metrics::counter!("istio_vault_ca_authn_cache_total", "result" => result).increment(1);
}

/// One TokenReview against `cluster`'s API server (cache misses only). `result` is
/// `authenticated`, `rejected` (the API server or the service-account checks said no) or
/// `unavailable` (the call failed).
pub fn token_review(cluster: &str, took: Duration, result: &'static str) {
    ::metrics::histogram!(
        "istio_vault_ca_token_review_duration_seconds",
        "cluster" => cluster.to_owned(),
        "result" => result
    )
    .record(took.as_secs_f64());
}

/// Where trust distribution of `configmap` stands in `cluster`: namespaces selected, holding
/// the current value, and waiting to retry a failed apply.
pub fn trust_distributed(
    cluster: &str,
    configmap: &str,
    selected: usize,
    current: usize,
    failed: usize,
) {
    for (state, n) in [
        ("selected", selected),
        ("current", current),
        ("failed", failed),
    ] {
        ::metrics::gauge!(
            "istio_vault_ca_trust_distribution_namespaces",
            "cluster" => cluster.to_owned(),
            "configmap" => configmap.to_owned(),
            "state" => state
        )
        .set(n as f64);
    }
}

/// One apply of `configmap` by trust distribution in `cluster`.
pub fn trust_distribution_apply(cluster: &str, configmap: &str, ok: bool) {
    let result = if ok { "ok" } else { "error" };
    ::metrics::counter!(
        "istio_vault_ca_trust_distribution_applies_total",
        "cluster" => cluster.to_owned(),
        "configmap" => configmap.to_owned(),
        "result" => result
    )
    .increment(1);
}

/// One issuer's held CRL (`[crl]`): its thisUpdate and nextUpdate (Unix seconds) and how
/// many serials it lists. Age is `time() - this_update`; the alert compares it with half the
/// CRL's lifetime.
pub fn crl_held(issuer: &str, this_update: i64, next_update: i64, revoked: usize) {
    let gauge = |name: &'static str, v: f64| {
        ::metrics::gauge!(name, "issuer" => issuer.to_owned()).set(v);
    };
    gauge("istio_vault_ca_crl_this_update_seconds", this_update as f64);
    gauge("istio_vault_ca_crl_next_update_seconds", next_update as f64);
    gauge("istio_vault_ca_crl_revoked", revoked as f64);
}

/// A CRL refresh that kept the last good CRL, by target and why.
pub fn crl_refresh_failure(target: &str, reason: &'static str) {
    ::metrics::counter!(
        "istio_vault_ca_crl_refresh_failures_total",
        "target" => target.to_owned(),
        "reason" => reason
    )
    .increment(1);
}

/// Whether the last refresh found a publishable CRL set.
pub fn crl_complete(complete: bool) {
    ::metrics::gauge!("istio_vault_ca_crl_publishable").set(if complete { 1.0 } else { 0.0 });
}

/// A refresh whose set was not published, and why.
pub fn crl_withheld(reason: &'static str) {
    ::metrics::counter!("istio_vault_ca_crl_withheld_total", "reason" => reason).increment(1);
}

pub fn jwks_fetch(ok: bool) {
    let result = if ok { "ok" } else { "error" };
    ::metrics::counter!("istio_vault_ca_jwks_fetches_total", "result" => result).increment(1);
}

pub fn issued(not_after: i64) {
    ::metrics::gauge!("istio_vault_ca_last_issued_expiry_timestamp_seconds").set(not_after as f64);
}

/// Counts a call in flight for as long as the guard lives.
pub struct InFlightGuard(());

impl InFlightGuard {
    pub fn new() -> Self {
        ::metrics::gauge!("istio_vault_ca_in_flight_requests").increment(1.0);
        Self(())
    }
}

impl Default for InFlightGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        ::metrics::gauge!("istio_vault_ca_in_flight_requests").decrement(1.0);
    }
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// The metric names that follow `before` in `text` (a quote in code, a table cell in docs).
    fn names(text: &str, before: &str) -> BTreeSet<String> {
        let prefix = format!("{before}istio_vault_ca_");
        text.match_indices(&prefix)
            .map(|(at, _)| {
                text[at + before.len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect()
            })
            .collect()
    }

    /// Every metric this module names (described or recorded) has its row in
    /// docs/metrics.md, and every row there names a metric that exists.
    #[test]
    fn every_metric_is_documented_and_every_documented_metric_exists() {
        let own = include_str!("metrics.rs");
        let source = [
            &own[..own.find("#[cfg(test)]").unwrap()],
            include_str!("metrics/describe.rs"),
            include_str!("metrics/pod_cache.rs"),
            include_str!("metrics/state.rs"),
        ]
        .concat();
        let in_code = names(&source, "\"");
        let in_docs = names(include_str!("../docs/metrics.md"), "| `");
        assert!(in_code.len() >= 19, "{in_code:?}");
        assert_eq!(
            in_code, in_docs,
            "metrics named in src/metrics.rs and metrics/ vs the rows of docs/metrics.md"
        );
    }
}
