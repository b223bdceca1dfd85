//! Issuance limits (`[rate_limits]`): certificates per SPIFFE identity and, for node proxies
//! asking on behalf of their pods, per node. Checked after the caller is authenticated and
//! authorized and before Vault is asked, so one crash-looping or misbehaving workload (or
//! node) spends its own budget, not the fleet's.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::config::{IssuanceRate, RateLimitsConfig};
use crate::identity::SpiffeId;
use crate::rate::{KeyedLimiter, Verdict};

/// A call over one of the limits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateLimited {
    #[error(
        "{identity} has obtained its {} certificates per minute (burst {}); retry in {}s",
        .limit.per_minute, .limit.burst, seconds(*.retry_after)
    )]
    Identity {
        identity: String,
        limit: IssuanceRate,
        retry_after: Duration,
    },
    #[error(
        "the node proxy of node {node} has obtained its {} certificates per minute for the pods of its node (burst {}); retry in {}s",
        .limit.per_minute, .limit.burst, seconds(*.retry_after)
    )]
    Node {
        node: String,
        limit: IssuanceRate,
        retry_after: Duration,
    },
}

fn seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The two limiters.
pub struct IssuanceLimits {
    config: RateLimitsConfig,
    per_identity: KeyedLimiter<SpiffeId>,
    /// Keyed by (cluster ID, node name).
    per_node: KeyedLimiter<(String, String)>,
}

impl IssuanceLimits {
    pub fn new(config: RateLimitsConfig) -> Self {
        Self {
            config,
            per_identity: KeyedLimiter::new(config.per_identity.rate()),
            per_node: KeyedLimiter::new(config.per_node.rate()),
        }
    }

    /// Counts one certificate for `identity` and, when a node proxy on `node` of `cluster`
    /// asks for it on behalf of a pod, for that node. A call refused by the node's limit
    /// spends nothing of the identity's.
    pub fn check(
        &self,
        cluster: &str,
        identity: &SpiffeId,
        node: Option<&str>,
    ) -> Result<(), RateLimited> {
        if let Some(node) = node {
            let key = (cluster.to_owned(), node.to_owned());
            if let Some(retry_after) = limited(self.per_node.check(&key)) {
                return Err(RateLimited::Node {
                    node: node.to_owned(),
                    limit: self.config.per_node,
                    retry_after,
                });
            }
        }
        if let Some(retry_after) = limited(self.per_identity.check(identity)) {
            return Err(RateLimited::Identity {
                identity: identity.to_string(),
                limit: self.config.per_identity,
                retry_after,
            });
        }
        Ok(())
    }
}

fn limited(verdict: Verdict) -> Option<Duration> {
    match verdict {
        Verdict::Allowed => None,
        Verdict::Limited(retry_after) => Some(retry_after),
        Verdict::Untracked => {
            static WARNED: AtomicBool = AtomicBool::new(false);
            if !WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    keys = crate::rate::MAX_TRACKED_KEYS,
                    "issuance limits track too many identities or nodes at once; new ones are not limited until some refill"
                );
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    fn rate(per_minute: u32, burst: u32) -> IssuanceRate {
        IssuanceRate {
            per_minute: NonZeroU32::new(per_minute).unwrap(),
            burst: NonZeroU32::new(burst).unwrap(),
        }
    }

    #[test]
    fn each_identity_and_node_has_its_own_budget() {
        let limits = IssuanceLimits::new(RateLimitsConfig {
            per_identity: rate(1, 2),
            per_node: rate(1, 3),
        });
        let a: SpiffeId = "spiffe://cluster.local/ns/a/sa/a".parse().unwrap();
        let b: SpiffeId = "spiffe://cluster.local/ns/b/sa/b".parse().unwrap();
        assert!(limits.check("c1", &a, None).is_ok());
        assert!(limits.check("c1", &a, None).is_ok());
        let refused = limits.check("c1", &a, None).unwrap_err();
        assert!(matches!(refused, RateLimited::Identity { .. }));
        assert!(refused.to_string().contains("retry in 60s"), "{refused}");
        // Another identity is unaffected; a node's budget is its own.
        assert!(limits.check("c1", &b, Some("n1")).is_ok());
        assert!(limits.check("c1", &b, Some("n1")).is_ok());
        // The node still has room; the identity b does not.
        assert!(matches!(
            limits.check("c1", &b, Some("n1")),
            Err(RateLimited::Identity { .. })
        ));
        // Now n1 spent its three: refused by the node before the identity is counted.
        let c: SpiffeId = "spiffe://cluster.local/ns/c/sa/c".parse().unwrap();
        assert!(matches!(
            limits.check("c1", &c, Some("n1")),
            Err(RateLimited::Node { .. })
        ));
        assert!(limits.check("c1", &c, None).is_ok(), "c's budget untouched");
        assert!(
            limits.check("c2", &c, Some("n1")).is_ok(),
            "n1 of another cluster"
        );
    }
}
