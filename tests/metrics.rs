//! `/metrics` after a mixed run against a real OpenBao: counters, histograms and state gauges
//! moved as expected. One test in its own binary, since the metrics recorder is process-wide.

use istio_vault_ca::client::{self, CallOptions, Shape};
use support::{Env, id, now_unix, sample};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_a_mixed_run() {
    let env = Env::start().await;
    let demo = id("default", "demo");
    let opts = env.opts("default", "demo");
    env.request(Shape::PilotAgent, &demo, &opts).await.unwrap();
    env.request(Shape::Ztunnel, &demo, &opts).await.unwrap();
    // Above ttl.max (48h): clamped by policy.
    env.request(
        Shape::Ztunnel,
        &demo,
        &CallOptions {
            ttl_seconds: 100 * 3600,
            ..opts.clone()
        },
    )
    .await
    .unwrap();
    env.request(
        Shape::Ztunnel,
        &demo,
        &CallOptions {
            token: None,
            ..opts.clone()
        },
    )
    .await
    .unwrap_err();
    let req = client::build_request(Shape::Ztunnel, "garbage", &demo, &opts).unwrap();
    env.client()
        .await
        .create_certificate(req)
        .await
        .unwrap_err();

    let text = env.metrics().await;
    let get =
        |series: &str| sample(&text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"));

    assert_eq!(
        get("istio_vault_ca_requests_total{outcome=\"issued\",code=\"OK\"}"),
        3.0
    );
    assert_eq!(
        get("istio_vault_ca_requests_total{outcome=\"refused\",code=\"UNAUTHENTICATED\"}"),
        1.0
    );
    assert_eq!(
        get("istio_vault_ca_requests_total{outcome=\"refused\",code=\"INVALID_ARGUMENT\"}"),
        1.0
    );
    assert_eq!(get("istio_vault_ca_refusals_total{reason=\"authn\"}"), 1.0);
    assert_eq!(
        get("istio_vault_ca_refusals_total{reason=\"csr-policy\"}"),
        1.0
    );
    assert_eq!(get("istio_vault_ca_request_duration_seconds_count"), 5.0);
    assert!(get("istio_vault_ca_request_duration_seconds_sum") > 0.0);
    assert_eq!(
        get("istio_vault_ca_vault_request_duration_seconds_count{op=\"sign\"}"),
        3.0
    );
    assert!(get("istio_vault_ca_vault_request_duration_seconds_count{op=\"lookup\"}") >= 1.0);
    assert_eq!(get("istio_vault_ca_ttl_clamped_total{by=\"policy\"}"), 1.0);
    assert!(get("istio_vault_ca_jwks_fetches_total{result=\"ok\"}") >= 1.0);
    assert_eq!(get("istio_vault_ca_in_flight_requests"), 0.0);
    assert_eq!(get("istio_vault_ca_trust_bundle_roots"), 1.0);
    assert_eq!(get("istio_vault_ca_vault_token_valid"), 1.0);
    assert_eq!(get("istio_vault_ca_vault_failing_fast"), 0.0);
    let now = now_unix() as f64;
    assert!(get("istio_vault_ca_serving_certificate_expiry_timestamp_seconds") > now);
    assert!(get("istio_vault_ca_trust_bundle_expiry_timestamp_seconds") > now + 86400.0 * 365.0);
    let last = get("istio_vault_ca_last_issued_expiry_timestamp_seconds");
    assert!(
        (last - (now + 48.0 * 3600.0)).abs() < 300.0,
        "the clamped 48h leaf was the last one"
    );
    // Each mandatory check's CPU time: every CSR that was read (the call without a token never
    // got there), every leaf Vault signed, every token verified rather than found in the
    // result cache.
    assert_eq!(
        get("istio_vault_ca_check_cpu_seconds_count{check=\"csr\"}"),
        4.0
    );
    assert_eq!(
        get("istio_vault_ca_check_cpu_seconds_count{check=\"leaf\"}"),
        3.0
    );
    assert_eq!(
        get("istio_vault_ca_check_cpu_seconds_count{check=\"token\"}"),
        get("istio_vault_ca_authn_cache_total{result=\"miss\"}")
    );
    for check in ["token", "csr", "leaf"] {
        let cpu = get(&format!(
            "istio_vault_ca_check_cpu_seconds_sum{{check=\"{check}\"}}"
        ));
        assert!(cpu > 0.0 && cpu < 1.0, "{check} checks took {cpu} s of CPU");
    }
    assert!(
        text.contains("istio_vault_ca_check_cpu_seconds_bucket{check=\"leaf\",le=\"0.00001\"}")
    );
    assert!(text.contains("# HELP istio_vault_ca_requests_total"));
    assert!(text.contains("istio_vault_ca_request_duration_seconds_bucket{le=\"0.005\"}"));
}
