//! The help text and unit of every series, registered once at install (docs/metrics.md lists
//! the same).

use super::CHECK_CPU;

pub(super) fn describe() {
    use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "istio_vault_ca_authn_cache_total",
        "Token authentications answered from the result cache (hit) or verified (miss)"
    );
    describe_counter!(
        "istio_vault_ca_connections_total",
        "TLS connections accepted on the gRPC port"
    );
    describe_counter!(
        "istio_vault_ca_connections_refused_total",
        "Connections closed before carrying a call, by reason (limits, handshake rate, timeout or failure)"
    );
    describe_counter!(
        "istio_vault_ca_handshake_waits_total",
        "TLS handshakes that waited for their address's turn (server.limits.max_handshakes_per_second_per_peer)"
    );
    describe_counter!(
        "istio_vault_ca_paced_refusals_total",
        "Refusals beyond their connection's budget, each of which paused that connection"
    );
    describe_counter!(
        "istio_vault_ca_paced_control_frames_total",
        "PING and SETTINGS frames beyond their connection's budget, which paused that connection"
    );
    describe_gauge!(
        "istio_vault_ca_serving_thread_busy_ratio",
        "Share of the last 250 ms each serving thread spent on the CPU"
    );
    describe_counter!(
        "istio_vault_ca_calls_overflowed_total",
        "Calls run on another serving thread than their connection's, which was busy"
    );
    describe_gauge!(
        "istio_vault_ca_connections_open",
        "Connections open on the gRPC port, TLS handshakes in progress included"
    );
    describe_counter!(
        "istio_vault_ca_requests_total",
        "CreateCertificate calls by outcome and gRPC code"
    );
    describe_counter!("istio_vault_ca_refusals_total", "Refused calls by reason");
    describe_histogram!(
        CHECK_CPU,
        Unit::Seconds,
        "CPU time of each mandatory check on the thread that ran it: token (signature and claims), csr (parse, self-signature, policy), leaf (what Vault issued against its issuer, and the chain)"
    );
    describe_counter!(
        "istio_vault_ca_ledger_records_total",
        "Issued certificates by ledger outcome: queued, written, dropped (queue full), lost (not written at shutdown)"
    );
    describe_counter!(
        "istio_vault_ca_ledger_failures_total",
        "Failed ledger writes and pruning rounds, by operation"
    );
    describe_gauge!(
        "istio_vault_ca_ledger_pending",
        "Issued certificates queued for the ledger, not yet written"
    );
    describe_gauge!(
        "istio_vault_ca_deny_list_entries",
        "Identities, namespaces and nodes revoked until lifted, as this replica last read them"
    );
    describe_counter!(
        "istio_vault_ca_ledger_pruned_batches_total",
        "Ledger batches deleted because every certificate in them expired"
    );
    describe_counter!(
        "istio_vault_ca_trust_root_changes_total",
        "Roots that appeared on or left a target's mount after start, and whether they are served"
    );
    describe_counter!(
        "istio_vault_ca_routed_requests_total",
        "Calls that reached a routing decision, by route, target and outcome"
    );
    describe_gauge!(
        "istio_vault_ca_istiod_certificate_expiry_timestamp_seconds",
        "NotAfter of istiod's serving certificate in the istiod-tls Secret the signer keeps"
    );
    describe_counter!(
        "istio_vault_ca_istiod_certificate_writes_total",
        "Writes of istiod's serving certificate Secret, by result"
    );
    describe_counter!(
        "istio_vault_ca_config_reloads_total",
        "Reloads of targets and routes from the config file, applied or refused"
    );
    describe_histogram!(
        "istio_vault_ca_request_duration_seconds",
        Unit::Seconds,
        "End-to-end CreateCertificate latency"
    );
    describe_histogram!(
        "istio_vault_ca_queue_wait_seconds",
        Unit::Seconds,
        "How long calls that found no free slot waited for one (served or refused)"
    );
    describe_counter!(
        "istio_vault_ca_vault_outbound_turns_total",
        "Calls sent to Vault under vault.max_requests_per_second, each attempt counted as it takes its turn"
    );
    describe_counter!(
        "istio_vault_ca_vault_outbound_delayed_total",
        "Calls to Vault that waited for a turn under vault.max_requests_per_second"
    );
    describe_counter!(
        "istio_vault_ca_vault_outbound_wait_milliseconds_total",
        "Time calls to Vault spent waiting for a turn under vault.max_requests_per_second, summed"
    );
    describe_counter!(
        "istio_vault_ca_slots_handed_on_total",
        "Calls that handed their server.max_in_flight slot on while they waited for a turn at Vault"
    );
    describe_gauge!(
        "istio_vault_ca_vault_outbound_waiting",
        "Calls to Vault waiting for a turn now, by urgency (unserved: the workload holds no valid certificate; renewal)"
    );
    describe_gauge!(
        "istio_vault_ca_queued_requests",
        "CreateCertificate calls waiting for a slot"
    );
    describe_histogram!(
        "istio_vault_ca_vault_request_duration_seconds",
        Unit::Seconds,
        "Latency of calls to Vault by operation"
    );
    describe_histogram!(
        "istio_vault_ca_token_review_duration_seconds",
        Unit::Seconds,
        "Latency of Kubernetes TokenReview calls by cluster and result"
    );
    describe_gauge!(
        "istio_vault_ca_trust_distribution_namespaces",
        "Trust distribution: namespaces selected, holding the current bundle, and failing"
    );
    describe_counter!(
        "istio_vault_ca_trust_distribution_applies_total",
        "ConfigMap applies by trust distribution, by result"
    );
    describe_gauge!(
        "istio_vault_ca_crl_this_update_seconds",
        Unit::Seconds,
        "thisUpdate of each issuer's published CRL (Unix time)"
    );
    describe_gauge!(
        "istio_vault_ca_crl_next_update_seconds",
        Unit::Seconds,
        "nextUpdate of each issuer's published CRL (Unix time)"
    );
    describe_gauge!(
        "istio_vault_ca_crl_revoked",
        "Serials each issuer's CRL lists"
    );
    describe_counter!(
        "istio_vault_ca_crl_refresh_failures_total",
        "CRL refreshes that kept the last good CRL, by target and reason"
    );
    describe_gauge!(
        "istio_vault_ca_crl_publishable",
        "1 when every issuer holds a current CRL and the set is published"
    );
    describe_counter!(
        "istio_vault_ca_crl_withheld_total",
        "CRL refreshes whose set was not published, by reason"
    );
    describe_gauge!(
        "istio_vault_ca_pod_cache_synced",
        "1 once the pod cache of a cluster (impersonation) has loaded its first list"
    );
    describe_gauge!(
        "istio_vault_ca_pod_cache_pods",
        "Pods in the pod cache of a cluster (impersonation)"
    );
    describe_counter!(
        "istio_vault_ca_pod_watch_errors_total",
        "Failed pod list/watch calls by cluster (the cache keeps answering; the watch retries)"
    );
    describe_counter!(
        "istio_vault_ca_vault_errors_total",
        "Failed calls to Vault by operation and kind"
    );
    describe_counter!(
        "istio_vault_ca_vault_warnings_total",
        "Vault responses that carried warnings (e.g. a clamped TTL)"
    );
    describe_counter!(
        "istio_vault_ca_ttl_clamped_total",
        "Issued certificates shorter than requested, by who shortened them"
    );
    describe_gauge!(
        "istio_vault_ca_in_flight_requests",
        "CreateCertificate calls being processed"
    );
    describe_counter!(
        "istio_vault_ca_shed_total",
        "Calls refused with ResourceExhausted, by reason (no slot in time, queue full, per-address limit, oversized message)"
    );
    describe_counter!(
        "istio_vault_ca_deduplicated_total",
        "Calls that shared an identical in-flight Vault call"
    );
    describe_counter!(
        "istio_vault_ca_jwks_fetches_total",
        "JWKS fetches by result"
    );
    describe_gauge!(
        "istio_vault_ca_trust_bundle_roots",
        "Roots in the served trust bundle"
    );
    describe_gauge!(
        "istio_vault_ca_trust_bundle_expiry_timestamp_seconds",
        "Earliest NotAfter among the trust roots"
    );
    describe_gauge!(
        "istio_vault_ca_serving_certificate_expiry_timestamp_seconds",
        "NotAfter of the serving certificate"
    );
    describe_gauge!(
        "istio_vault_ca_vault_client_certificate_expiry_timestamp_seconds",
        "NotAfter of the client certificate presented to Vault (vault.client_cert_file)"
    );
    describe_gauge!(
        "istio_vault_ca_vault_token_valid",
        "1 while the signer holds a valid Vault token"
    );
    describe_gauge!(
        "istio_vault_ca_vault_failing_fast",
        "1 while calls to Vault fail fast (circuit breaker open)"
    );
    describe_gauge!(
        "istio_vault_ca_last_issued_expiry_timestamp_seconds",
        "NotAfter of the most recently issued certificate"
    );
}
