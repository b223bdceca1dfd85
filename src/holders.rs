//! Which workloads hold a valid certificate that this signer issued: what tells a renewal,
//! which can wait, from a workload that holds none (a new pod, a restarted ztunnel, a
//! certificate that expired), whose call goes first among those waiting for Vault
//! ([`Urgency`]).
//!
//! A workload is the credential's subject together with the identity it asked for
//! ([`Workload`]). A caller that authenticated with a client certificate proved in the
//! handshake that it holds a valid one: it renews.
//!
//! A call renews when its workload's last certificate is still valid and at least
//! [`EARLIEST_RENEWAL_PERCENT`] of its lifetime has gone: agents renew at about half of it
//! (pilot-agent, ztunnel). A workload asking sooner has lost what it was issued (its proxy
//! container restarted in the same pod, with the same token) and holds nothing.
//!
//! The signer keeps this in memory only. A renewal that reaches another replica, or this one
//! after a restart, counts as unserved: that mistake serves a workload early. The one mistake
//! the other way: a proxy that restarts in the same pod after 30 % of its certificate's
//! lifetime is taken for a renewal and waits as one would (as every call did before this
//! order existed). Only issued certificates are entered, so an unauthenticated caller adds
//! nothing, and the entries are bounded ([`MAX_HOLDERS`]).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::Mutex;

use crate::authn::AuthMethod;
pub use crate::vault::Urgency;
use crate::workload::Workload;

/// Share of a certificate's lifetime (percent) that must have gone before its workload's next
/// call counts as a renewal: agents renew at about 50 %, pilot-agent and ztunnel with a little
/// jitter, the fleet simulator at 50 ± 10 %.
pub const EARLIEST_RENEWAL_PERCENT: i64 = 30;

/// Workloads tracked at most (~48 bytes each). Beyond it, after forgetting expired
/// certificates, a new holder is not entered: its next renewal counts as unserved.
pub const MAX_HOLDERS: usize = 1 << 18;

/// Who holds a valid certificate, by workload.
#[derive(Default)]
pub struct Holders {
    /// Workload (a keyed hash of its parts) to when its latest certificate was issued and its
    /// NotAfter (unix seconds).
    held: Mutex<HashMap<u64, Held>>,
    keys: RandomState,
}

#[derive(Clone, Copy)]
struct Held {
    issued: i64,
    not_after: i64,
}

impl Held {
    fn renews_at(self, now: i64) -> bool {
        let lifetime = self.not_after - self.issued;
        now < self.not_after && now >= self.issued + lifetime * EARLIEST_RENEWAL_PERCENT / 100
    }
}

impl Holders {
    fn key(&self, w: &Workload<'_>) -> u64 {
        let mut h = self.keys.build_hasher();
        w.hash_into(&mut h);
        h.finish()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Held>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `w` renews a certificate valid at `now` (unix seconds), or holds none.
    pub fn urgency(&self, w: &Workload<'_>, now: i64) -> Urgency {
        if w.caller.method == AuthMethod::ClientCert {
            return Urgency::Renewal;
        }
        let key = self.key(w);
        match self.lock().get(&key) {
            Some(held) if held.renews_at(now) => Urgency::Renewal,
            _ => Urgency::Unserved,
        }
    }

    /// Notes that `w` was issued, at `now`, a certificate valid until `not_after`.
    pub fn issued(&self, w: &Workload<'_>, not_after: i64, now: i64) {
        let key = self.key(w);
        let mut map = self.lock();
        if map.len() >= MAX_HOLDERS && !map.contains_key(&key) {
            map.retain(|_, held| held.not_after > now);
            if map.len() >= MAX_HOLDERS {
                return;
            }
        }
        map.insert(
            key,
            Held {
                issued: now,
                not_after,
            },
        );
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::{Caller, PodRef};
    use crate::identity::SpiffeId;
    use crate::identity::TrustDomain;
    use std::net::IpAddr;

    fn caller(method: AuthMethod, pod: Option<&str>) -> Caller {
        Caller {
            identity: id("sa"),
            method,
            pod: pod.map(|uid| PodRef {
                name: format!("pod-{uid}"),
                uid: uid.into(),
                node: Some("node-1".into()),
            }),
            expires: None,
            cluster: String::new(),
        }
    }

    fn id(sa: &str) -> SpiffeId {
        SpiffeId::new(TrustDomain::new("cluster.local").unwrap(), "default", sa).unwrap()
    }

    #[test]
    fn a_pod_renews_until_its_certificate_expires_and_a_new_pod_is_unserved() {
        let holders = Holders::default();
        let (a, b) = (
            caller(AuthMethod::Jwt, Some("uid-a")),
            caller(AuthMethod::Jwt, Some("uid-b")),
        );
        let sa = id("sa");
        let wa = Workload::new(&a, &sa, None);
        assert_eq!(holders.urgency(&wa, 100), Urgency::Unserved);
        holders.issued(&wa, 200, 100);
        assert_eq!(holders.urgency(&wa, 150), Urgency::Renewal);
        assert_eq!(
            holders.urgency(&wa, 130),
            Urgency::Renewal,
            "30 % of its lifetime gone"
        );
        assert_eq!(
            holders.urgency(&wa, 129),
            Urgency::Unserved,
            "asking again this soon, it lost its certificate (a restarted proxy)"
        );
        assert_eq!(
            holders.urgency(&wa, 200),
            Urgency::Unserved,
            "expired: it holds none"
        );
        // Another pod of the same service account (a restarted pod) holds nothing yet.
        assert_eq!(
            holders.urgency(&Workload::new(&b, &sa, None), 150),
            Urgency::Unserved
        );
    }

    #[test]
    fn ztunnel_holds_each_identity_apart_and_a_new_ztunnel_holds_none() {
        let holders = Holders::default();
        let (z1, z2) = (
            caller(AuthMethod::Jwt, Some("ztunnel-1")),
            caller(AuthMethod::Jwt, Some("ztunnel-2")),
        );
        let (web, db) = (id("web"), id("db"));
        holders.issued(&Workload::new(&z1, &web, None), 200, 100);
        let at_150 = |c, i| holders.urgency(&Workload::new(c, i, None), 150);
        assert_eq!(at_150(&z1, &web), Urgency::Renewal);
        assert_eq!(at_150(&z1, &db), Urgency::Unserved);
        assert_eq!(at_150(&z2, &web), Urgency::Unserved);
    }

    #[test]
    fn without_a_pod_the_address_tells_workloads_apart_and_a_client_certificate_renews() {
        let holders = Holders::default();
        let (legacy, vm) = (
            caller(AuthMethod::Jwt, None),
            caller(AuthMethod::ClientCert, None),
        );
        let sa = id("sa");
        let (p1, p2) = (
            Some(IpAddr::from([10, 0, 0, 1])),
            Some(IpAddr::from([10, 0, 0, 2])),
        );
        holders.issued(&Workload::new(&legacy, &sa, p1), 200, 100);
        let at_150 = |c, p| holders.urgency(&Workload::new(c, &sa, p), 150);
        assert_eq!(at_150(&legacy, p1), Urgency::Renewal);
        assert_eq!(at_150(&legacy, p2), Urgency::Unserved);
        assert_eq!(at_150(&vm, p2), Urgency::Renewal);
    }

    #[test]
    fn the_table_is_bounded_and_forgets_expired_certificates_first() {
        let holders = Holders::default();
        let sa = id("sa");
        let callers: Vec<Caller> = (0..MAX_HOLDERS + 1)
            .map(|i| caller(AuthMethod::Jwt, Some(&i.to_string())))
            .collect();
        for (i, c) in callers[..MAX_HOLDERS].iter().enumerate() {
            // Half of them expire at 150.
            let not_after = if i % 2 == 0 { 150 } else { 300 };
            holders.issued(&Workload::new(c, &sa, None), not_after, 100);
        }
        assert_eq!(holders.len(), MAX_HOLDERS);
        let last = Workload::new(&callers[MAX_HOLDERS], &sa, None);
        holders.issued(&last, 300, 100);
        assert_eq!(
            holders.urgency(&last, 200),
            Urgency::Unserved,
            "full of valid ones: not entered"
        );
        holders.issued(&last, 300, 200);
        assert_eq!(
            holders.len(),
            MAX_HOLDERS / 2 + 1,
            "the expired half made room"
        );
        assert_eq!(holders.urgency(&last, 250), Urgency::Renewal);
    }
}
