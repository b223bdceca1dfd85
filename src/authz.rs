//! Authorization: which identity a caller may have a certificate for. Its own; with node
//! authorization (ztunnel's `ImpersonatedIdentity`), a workload running on the caller's node;
//! never one revoked until lifted (the ledger's deny list); and the CSR must name exactly that
//! identity. [`Authorizer::authorize`] is the entry point, [`csr_names`] the last rule once the
//! CSR is read. Which CA may sign for it (route permission: `CertSigner`, exclusive routes) is
//! the route table's decision (`routing`), made on the identity decided here.

use std::sync::Arc;

use crate::authn::Caller;
use crate::identity::SpiffeId;

/// Why the caller may not have the identity it asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthzError {
    #[error("caller {caller} may not request a certificate for {requested}")]
    IdentityMismatch { caller: String, requested: String },
    #[error("caller {caller} may not impersonate {requested}: impersonation is not enabled")]
    Impersonation { caller: String, requested: String },
    #[error("ImpersonatedIdentity {0:?} is not a workload SPIFFE ID")]
    BadImpersonatedIdentity(String),
    #[error("caller {caller} may not impersonate {requested}: {reason}")]
    NodeAuthorization {
        caller: String,
        requested: String,
        reason: String,
    },
    #[error("the pod cache of cluster {0:?} is not synced yet; retry later")]
    PodCacheNotSynced(String),
    #[error("{identity} may not obtain certificates: its {kind} {value:?} was revoked ({reason})")]
    Revoked {
        identity: String,
        kind: &'static str,
        value: String,
        reason: String,
    },
    #[error("the deny list of revoked identities has not been read yet; retry later")]
    DenyListNotLoaded,
}

/// What decides which identity a caller gets.
#[derive(Default)]
pub struct Authorizer {
    /// Node-authorized impersonation, when enabled.
    pub impersonation: Option<Impersonation>,
    /// Identities, namespaces and nodes revoked until lifted, when `[ledger]` is on.
    pub denied: Option<crate::ledger::SharedDenyList>,
}

/// The identity a caller may have a certificate for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorized {
    pub identity: SpiffeId,
    /// The node of the node proxy asking on behalf of one of its pods (impersonation).
    pub for_node: Option<String>,
}

impl Authorizer {
    /// The identity `caller` may have: its own, or the `ImpersonatedIdentity` it names when
    /// node authorization allows it; refused when that identity, its namespace or the
    /// caller's node was revoked.
    pub fn authorize(
        &self,
        caller: &Caller,
        impersonated: Option<&str>,
    ) -> Result<Authorized, AuthzError> {
        let (identity, for_node) = identity(caller, impersonated, self.impersonation.as_ref())?;
        if let Some(denied) = &self.denied {
            check_denied(denied, caller, &identity)?;
        }
        Ok(Authorized { identity, for_node })
    }
}

/// The CSR asks for exactly the authorized identity (its one URI SAN).
pub fn csr_names(requested: &SpiffeId, authorized: &SpiffeId) -> Result<(), AuthzError> {
    if requested != authorized {
        return Err(AuthzError::IdentityMismatch {
            caller: authorized.to_string(),
            requested: requested.to_string(),
        });
    }
    Ok(())
}

/// Refuses an identity whose certificates were revoked by identity, namespace or the node its
/// caller runs on, and everything until the deny list has been read once.
fn check_denied(
    denied: &crate::ledger::SharedDenyList,
    caller: &Caller,
    identity: &SpiffeId,
) -> Result<(), AuthzError> {
    let list = denied.load();
    let Some(list) = list.as_deref() else {
        return Err(AuthzError::DenyListNotLoaded);
    };
    if list.is_empty() {
        return Ok(());
    }
    let node = caller.pod.as_ref().and_then(|p| p.node.as_deref());
    match list.denies(&identity.to_string(), identity.namespace(), node) {
        None => Ok(()),
        Some(entry) => Err(AuthzError::Revoked {
            identity: identity.to_string(),
            kind: entry.kind.as_str(),
            value: entry.value.clone(),
            reason: entry.reason.clone(),
        }),
    }
}

/// Node-authorized impersonation: which callers are node proxies, and each cluster's pods.
pub struct Impersonation {
    /// The service accounts of trusted node proxies (a few: a list beats a hash).
    pub trusted: Vec<crate::identity::ServiceAccountRef>,
    /// Pod caches by cluster ID.
    pub pods: std::collections::HashMap<String, Arc<crate::nodes::PodIndex>>,
}

impl Impersonation {
    /// istiod's rule: the caller is a trusted node account; its token names its own running
    /// pod (name and UID); a pod of the requested service account runs on that pod's node.
    /// Returns that node.
    fn check(&self, caller: &Caller, requested: &SpiffeId) -> Result<String, AuthzError> {
        let deny = |reason: String| AuthzError::NodeAuthorization {
            caller: caller.identity.to_string(),
            requested: requested.to_string(),
            reason,
        };
        let (ns, sa) = (
            caller.identity.namespace(),
            caller.identity.service_account(),
        );
        if !self.trusted.iter().any(|a| a.is(ns, sa)) {
            return Err(deny("the caller is not a trusted node account".into()));
        }
        if requested.trust_domain() != caller.identity.trust_domain() {
            return Err(deny(
                "the requested identity is in another trust domain".into(),
            ));
        }
        let pods = self
            .pods
            .get(&caller.cluster)
            .ok_or_else(|| deny(format!("no pod cache for cluster {:?}", caller.cluster)))?;
        if !pods.synced() {
            return Err(AuthzError::PodCacheNotSynced(caller.cluster.clone()));
        }
        let claimed = caller
            .pod
            .as_ref()
            .ok_or_else(|| deny("the caller's credential is not bound to a pod".into()))?;
        let pod = pods.pod(ns, &claimed.name).ok_or_else(|| {
            deny(format!(
                "the caller's pod {ns}/{} is not running",
                claimed.name
            ))
        })?;
        if pod.uid != claimed.uid || pod.service_account != sa {
            return Err(deny(format!(
                "pod {ns}/{} is not the caller's",
                claimed.name
            )));
        }
        let node = pod
            .node
            .ok_or_else(|| deny("the caller's pod is not scheduled on a node".into()))?;
        if claimed.node.as_ref().is_some_and(|n| *n != node) {
            return Err(deny("the token's node does not match the pod's".into()));
        }
        if !pods.runs_on(requested.namespace(), requested.service_account(), &node) {
            return Err(deny(format!(
                "no pod of {}/{} runs on node {node}",
                requested.namespace(),
                requested.service_account()
            )));
        }
        Ok(node)
    }
}

/// Decides which identity the caller gets: its own, or (node proxies only) the
/// `ImpersonatedIdentity` it names, with the node it was authorized on. That value equal to
/// the caller's own identity is always accepted (shared-mode ztunnel sends it for itself).
fn identity(
    caller: &Caller,
    impersonated: Option<&str>,
    impersonation: Option<&Impersonation>,
) -> Result<(SpiffeId, Option<String>), AuthzError> {
    let Some(requested) = impersonated.filter(|s| !s.is_empty()) else {
        return Ok((caller.identity.clone(), None));
    };
    let requested: SpiffeId = requested.parse().map_err(|_| {
        AuthzError::BadImpersonatedIdentity(crate::echo::truncated(requested).into_owned())
    })?;
    if requested == caller.identity {
        return Ok((requested, None));
    }
    match impersonation {
        Some(imp) => imp
            .check(caller, &requested)
            .map(|node| (requested, Some(node))),
        None => Err(AuthzError::Impersonation {
            caller: caller.identity.to_string(),
            requested: requested.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::AuthMethod;
    use crate::identity::TrustDomain;

    fn caller(ns: &str, sa: &str) -> Caller {
        Caller {
            identity: SpiffeId::new(TrustDomain::new("cluster.local").unwrap(), ns, sa).unwrap(),
            method: AuthMethod::Jwt,
            pod: None,
            expires: None,
            cluster: "Kubernetes".into(),
        }
    }

    #[test]
    fn the_csr_names_the_authorized_identity() {
        let app = caller("default", "app").identity;
        let other = caller("default", "other").identity;
        assert_eq!(csr_names(&app, &app), Ok(()));
        assert!(matches!(
            csr_names(&other, &app),
            Err(AuthzError::IdentityMismatch { .. })
        ));
    }

    #[test]
    fn revoked_identities_are_refused_and_nothing_before_the_list_is_read() {
        let app = caller("default", "app");
        let unread = Authorizer {
            denied: Some(Default::default()),
            ..Default::default()
        };
        assert_eq!(
            unread.authorize(&app, None),
            Err(AuthzError::DenyListNotLoaded)
        );
        let open = Authorizer::default();
        assert_eq!(
            open.authorize(&app, None).unwrap(),
            Authorized {
                identity: app.identity.clone(),
                for_node: None
            }
        );
    }

    #[test]
    fn impersonation_of_self_only() {
        let zt = caller("istio-system", "ztunnel");
        assert_eq!(identity(&zt, None, None).unwrap().0, zt.identity);
        assert_eq!(identity(&zt, Some(""), None).unwrap().0, zt.identity);
        assert_eq!(
            identity(
                &zt,
                Some("spiffe://cluster.local/ns/istio-system/sa/ztunnel"),
                None
            )
            .unwrap(),
            (zt.identity.clone(), None),
            "its own identity is not impersonation: no node budget spent"
        );
        assert!(matches!(
            identity(&zt, Some("spiffe://cluster.local/ns/default/sa/app"), None),
            Err(AuthzError::Impersonation { .. })
        ));
        assert!(matches!(
            identity(&zt, Some("not-an-id"), None),
            Err(AuthzError::BadImpersonatedIdentity(_))
        ));
    }
}
