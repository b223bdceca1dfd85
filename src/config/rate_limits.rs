//! `[rate_limits]`: how many certificates one SPIFFE identity, and one node's ztunnel on behalf
//! of its pods, may obtain, so that one crash-looping or misbehaving workload cannot spend the
//! fleet's share of Vault (docs/scaling.md derives the defaults).

use std::num::NonZeroU32;
use std::time::Duration;

use serde::Deserialize;

use crate::rate::Rate;

/// `rate_limits.per_identity`: every pod of a service account shares its SPIFFE ID, so the
/// burst covers a rollout of the largest Deployment at once (500 replicas), and the sustained
/// rate a second rollout within five minutes. A steady identity uses far less: R pods renewing
/// at half of a 24 h lifetime make R / 720 calls per minute.
pub const DEFAULT_PER_IDENTITY: IssuanceRate = IssuanceRate {
    per_minute: NonZeroU32::new(100).unwrap(),
    burst: NonZeroU32::new(500).unwrap(),
};

/// `rate_limits.per_workload`: one pod asking for its own identity (or one ztunnel pod for one
/// identity on its node; without a pod, one address) needs one certificate per half lifetime,
/// and a few more when its proxy restarts or its calls fail: pilot-agent makes six attempts in
/// ~3 s, then backs off from 1 s. The burst covers three such rounds; the rate, attempts every
/// six seconds. A tenth of `per_identity`'s rate, so that one pod in a loop (compromised, or
/// broken) leaves its siblings, which share the identity, nine tenths of it.
pub const DEFAULT_PER_WORKLOAD: IssuanceRate = IssuanceRate {
    per_minute: NonZeroU32::new(10).unwrap(),
    burst: NonZeroU32::new(20).unwrap(),
};

/// `rate_limits.per_node`: certificates a ztunnel obtains for the pods of its node. A node
/// runs at most 110 pods by default (kubelet `maxPods`, 250 at most); a drained or restarted
/// node's pods come back at once, and each needs one certificate per identity.
pub const DEFAULT_PER_NODE: IssuanceRate = IssuanceRate {
    per_minute: NonZeroU32::new(250).unwrap(),
    burst: NonZeroU32::new(250).unwrap(),
};

/// Issuance limits, checked after authentication and authorization, before Vault is asked.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitsConfig {
    /// Certificates per SPIFFE identity, whoever asks for it.
    pub per_identity: IssuanceRate,
    /// Certificates per workload: one pod (else one address) and the identity it asks for.
    pub per_workload: IssuanceRate,
    /// Certificates a node proxy (ztunnel) obtains for other identities (impersonation), per
    /// node.
    pub per_node: IssuanceRate,
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        Self {
            per_identity: DEFAULT_PER_IDENTITY,
            per_workload: DEFAULT_PER_WORKLOAD,
            per_node: DEFAULT_PER_NODE,
        }
    }
}

/// A sustained number of certificates per minute and the burst allowed at once (both > 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuanceRate {
    pub per_minute: NonZeroU32,
    pub burst: NonZeroU32,
}

impl IssuanceRate {
    pub fn rate(self) -> Rate {
        Rate::new(self.per_minute, Duration::from_secs(60), self.burst)
    }
}
