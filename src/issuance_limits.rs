//! Issuance limits (`[rate_limits]`): certificates per SPIFFE identity, per workload (one pod
//! and the identity it asks for: every pod of a service account shares the identity, so one
//! pod in a loop must not spend its siblings' share) and, for node proxies asking on behalf of
//! their pods, per node. Checked after the caller is authenticated and authorized and before
//! Vault is asked, so one crash-looping or misbehaving workload (or node) spends its own
//! budget, not the fleet's.

use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::config::{IssuanceRate, RateLimitsConfig};
use crate::identity::SpiffeId;
use crate::rate::{KeyedLimiter, Verdict};
use crate::workload::Workload;

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
        "{workload} has obtained its {} certificates per minute for {identity} (burst {}); retry in {}s",
        .limit.per_minute, .limit.burst, seconds(*.retry_after)
    )]
    Workload {
        workload: String,
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

/// The three limiters.
pub struct IssuanceLimits {
    config: RateLimitsConfig,
    per_identity: KeyedLimiter<SpiffeId>,
    /// Keyed by a keyed hash of the workload ([`Workload::hash_into`]).
    per_workload: KeyedLimiter<u64>,
    workload_keys: RandomState,
    /// Keyed by (cluster ID, node name).
    per_node: KeyedLimiter<(String, String)>,
}

impl IssuanceLimits {
    pub fn new(config: RateLimitsConfig) -> Self {
        Self {
            config,
            per_identity: KeyedLimiter::new(config.per_identity.rate()),
            per_workload: KeyedLimiter::new(config.per_workload.rate()),
            workload_keys: RandomState::new(),
            per_node: KeyedLimiter::new(config.per_node.rate()),
        }
    }

    /// Counts one certificate for `workload`'s identity, for the workload itself and, when a
    /// node proxy on `node` asks for it on behalf of a pod, for that node. Checked in that
    /// order from the narrowest: a call refused by the node's or the workload's limit spends
    /// nothing of the identity's, which the workload's siblings share.
    pub fn check(&self, workload: &Workload<'_>, node: Option<&str>) -> Result<(), RateLimited> {
        let cluster = &workload.caller.cluster;
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
        let mut key = self.workload_keys.build_hasher();
        workload.hash_into(&mut key);
        if let Some(retry_after) = limited(self.per_workload.check(&key.finish())) {
            return Err(RateLimited::Workload {
                workload: workload.to_string(),
                identity: workload.identity.to_string(),
                limit: self.config.per_workload,
                retry_after,
            });
        }
        if let Some(retry_after) = limited(self.per_identity.check(workload.identity)) {
            return Err(RateLimited::Identity {
                identity: workload.identity.to_string(),
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
                    "issuance limits track too many identities, workloads or nodes at once; new ones are not limited until some refill"
                );
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::{AuthMethod, Caller, PodRef};
    use std::num::NonZeroU32;

    fn rate(per_minute: u32, burst: u32) -> IssuanceRate {
        IssuanceRate {
            per_minute: NonZeroU32::new(per_minute).unwrap(),
            burst: NonZeroU32::new(burst).unwrap(),
        }
    }

    fn caller(cluster: &str, pod: Option<&str>) -> Caller {
        Caller {
            identity: "spiffe://cluster.local/ns/x/sa/x".parse().unwrap(),
            method: AuthMethod::Jwt,
            pod: pod.map(|name| PodRef {
                name: name.into(),
                uid: format!("uid-{name}"),
                node: None,
            }),
            expires: None,
            cluster: cluster.into(),
        }
    }

    #[test]
    fn each_identity_and_node_has_its_own_budget() {
        let limits = IssuanceLimits::new(RateLimitsConfig {
            per_identity: rate(1, 2),
            per_workload: rate(1, 10),
            per_node: rate(1, 3),
        });
        let (c1, c2) = (caller("c1", None), caller("c2", None));
        let a: SpiffeId = "spiffe://cluster.local/ns/a/sa/a".parse().unwrap();
        let b: SpiffeId = "spiffe://cluster.local/ns/b/sa/b".parse().unwrap();
        let c: SpiffeId = "spiffe://cluster.local/ns/c/sa/c".parse().unwrap();
        let check = |caller, id, node| limits.check(&Workload::new(caller, id, None), node);
        assert!(check(&c1, &a, None).is_ok());
        assert!(check(&c1, &a, None).is_ok());
        let refused = check(&c1, &a, None).unwrap_err();
        assert!(matches!(refused, RateLimited::Identity { .. }));
        assert!(refused.to_string().contains("retry in 60s"), "{refused}");
        // Another identity is unaffected; a node's budget is its own.
        assert!(check(&c1, &b, Some("n1")).is_ok());
        assert!(check(&c1, &b, Some("n1")).is_ok());
        // The node still has room; the identity b does not.
        assert!(matches!(
            check(&c1, &b, Some("n1")),
            Err(RateLimited::Identity { .. })
        ));
        // Now n1 spent its three: refused by the node before the identity is counted.
        assert!(matches!(
            check(&c1, &c, Some("n1")),
            Err(RateLimited::Node { .. })
        ));
        assert!(check(&c1, &c, None).is_ok(), "c's budget untouched");
        assert!(check(&c2, &c, Some("n1")).is_ok(), "n1 of another cluster");
    }

    /// Pods sharing an identity each have a budget of their own within the identity's, and a
    /// pod refused by its own does not spend its siblings'.
    #[test]
    fn a_workload_is_refused_before_it_spends_its_siblings_share() {
        let limits = IssuanceLimits::new(RateLimitsConfig {
            per_identity: rate(1, 4),
            per_workload: rate(1, 2),
            per_node: rate(1, 10),
        });
        let id: SpiffeId = "spiffe://cluster.local/ns/shop/sa/cart".parse().unwrap();
        let (p1, p2, p3) = (
            caller("c1", Some("cart-1")),
            caller("c1", Some("cart-2")),
            caller("c1", Some("cart-3")),
        );
        let check = |caller| limits.check(&Workload::new(caller, &id, None), None);
        assert!(check(&p1).is_ok() && check(&p1).is_ok());
        for _ in 0..5 {
            let refused = check(&p1).unwrap_err();
            assert!(matches!(refused, RateLimited::Workload { .. }));
            assert!(
                refused.to_string().starts_with("pod cart-1 has obtained its 1 certificates per minute for spiffe://cluster.local/ns/shop/sa/cart"),
                "{refused}"
            );
        }
        assert!(
            check(&p2).is_ok() && check(&p2).is_ok(),
            "the identity had room"
        );
        assert!(matches!(check(&p3), Err(RateLimited::Identity { .. })));
        // Without a pod, the address tells workloads apart.
        let other: SpiffeId = "spiffe://cluster.local/ns/shop/sa/other".parse().unwrap();
        let legacy = caller("c1", None);
        let from = |last: u8| Workload::new(&legacy, &other, Some([10, 0, 0, last].into()));
        assert!(limits.check(&from(1), None).is_ok() && limits.check(&from(1), None).is_ok());
        assert!(matches!(
            limits.check(&from(1), None),
            Err(RateLimited::Workload { .. })
        ));
        assert!(limits.check(&from(2), None).is_ok(), "another address");
        assert_eq!(
            from(1).to_string(),
            "the caller at 10.0.0.1",
            "how a refusal names it"
        );
    }
}
