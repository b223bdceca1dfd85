//! State gauges: what the admin port reads from the signer before each scrape.

/// The signer's state as the admin port reads it before each scrape.
#[derive(Debug, Clone)]
pub struct State {
    pub trust_bundle_roots: usize,
    pub trust_bundle_expiry: Option<i64>,
    pub serving_not_after: i64,
    /// `[vault]` first, then each `[vaults.<name>]`.
    pub vaults: Vec<VaultState>,
}

/// One Vault server's state.
#[derive(Debug, Clone)]
pub struct VaultState {
    /// `None` for `[vault]`, whose gauges carry no label; else the `vault` label.
    pub name: Option<String>,
    pub token_valid: bool,
    pub failing_fast: bool,
    /// NotAfter of the client certificate presented to it, when one is configured.
    pub client_cert_not_after: Option<i64>,
    /// Each node, when its address lists several.
    pub nodes: Vec<crate::vault::NodeStatus>,
    /// What `max_requests_per_second` did, when set.
    pub outbound: Option<crate::vault::OutboundStatus>,
}

/// State gauges, refreshed before each scrape.
pub fn state(s: State) {
    ::metrics::gauge!("istio_vault_ca_trust_bundle_roots").set(s.trust_bundle_roots as f64);
    if let Some(exp) = s.trust_bundle_expiry {
        ::metrics::gauge!("istio_vault_ca_trust_bundle_expiry_timestamp_seconds").set(exp as f64);
    }
    ::metrics::gauge!("istio_vault_ca_serving_certificate_expiry_timestamp_seconds")
        .set(s.serving_not_after as f64);
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    for v in &s.vaults {
        let labels: Vec<::metrics::Label> = v
            .name
            .iter()
            .map(|n| ::metrics::Label::new("vault", n.clone()))
            .collect();
        ::metrics::gauge!("istio_vault_ca_vault_token_valid", labels.clone())
            .set(flag(v.token_valid));
        ::metrics::gauge!("istio_vault_ca_vault_failing_fast", labels.clone())
            .set(flag(v.failing_fast));
        if let Some(o) = v.outbound {
            ::metrics::counter!("istio_vault_ca_vault_outbound_turns_total", labels.clone())
                .absolute(o.turns);
            ::metrics::counter!(
                "istio_vault_ca_vault_outbound_delayed_total",
                labels.clone()
            )
            .absolute(o.delayed);
            ::metrics::counter!(
                "istio_vault_ca_vault_outbound_wait_milliseconds_total",
                labels.clone()
            )
            .absolute(u64::try_from(o.waited.as_millis()).unwrap_or(u64::MAX));
            for (urgency, n) in [
                (crate::vault::Urgency::Unserved, o.waiting_unserved),
                (crate::vault::Urgency::Renewal, o.waiting_renewal),
            ] {
                let mut labels = labels.clone();
                labels.push(::metrics::Label::new("urgency", urgency.as_str()));
                ::metrics::gauge!("istio_vault_ca_vault_outbound_waiting", labels).set(n as f64);
            }
        }
        if let Some(exp) = v.client_cert_not_after {
            ::metrics::gauge!(
                "istio_vault_ca_vault_client_certificate_expiry_timestamp_seconds",
                labels
            )
            .set(exp as f64);
        }
        for n in &v.nodes {
            for state in crate::vault::NodeState::ALL {
                ::metrics::gauge!("istio_vault_ca_vault_node_state", "node" => n.node.clone(), "state" => state.as_str())
                    .set(flag(n.state == state));
            }
            ::metrics::counter!("istio_vault_ca_vault_node_calls_total", "node" => n.node.clone())
                .absolute(n.calls);
            ::metrics::counter!("istio_vault_ca_vault_node_failures_total", "node" => n.node.clone())
                .absolute(n.failures);
        }
    }
}
