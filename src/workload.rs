//! The workload a certificate is for: the credential's subject together with the identity it
//! asks for. That is the pod (its UID, from a pod-bound token or a TokenReview) asking for its
//! own identity, or ztunnel's pod asking for a workload's identity (`ImpersonatedIdentity`);
//! without a pod, the caller's address. Every pod of a service account shares its SPIFFE ID,
//! so this, not the identity, is what tells one pod's calls from its siblings': what it holds
//! (the holders table) and what it may still obtain (the per-workload issuance limit).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;

use crate::authn::Caller;
use crate::identity::SpiffeId;

/// The workload that a caller asks an identity for.
pub struct Workload<'a> {
    pub(crate) caller: &'a Caller,
    pub(crate) identity: &'a SpiffeId,
    peer: Option<IpAddr>,
}

impl<'a> Workload<'a> {
    /// The workload that `caller` (connected from `peer`) asks `identity` for.
    pub fn new(caller: &'a Caller, identity: &'a SpiffeId, peer: Option<IpAddr>) -> Self {
        Self {
            caller,
            identity,
            peer,
        }
    }

    /// Feeds what tells this workload from every other into `h`: the cluster, the pod (else
    /// the address) and the identity.
    pub fn hash_into(&self, h: &mut impl Hasher) {
        self.caller.cluster.hash(h);
        match &self.caller.pod {
            Some(pod) => pod.uid.hash(h),
            None => self.peer.hash(h),
        }
        self.identity.hash(h);
    }
}

/// How a refusal names it: `pod <namespace-less name>` or `address <ip>`.
impl fmt::Display for Workload<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.caller.pod, self.peer) {
            (Some(pod), _) => write!(f, "pod {}", pod.name),
            (None, Some(ip)) => write!(f, "the caller at {ip}"),
            (None, None) => f.write_str("the caller"),
        }
    }
}
