//! Workload identities: the SPIFFE ID `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`.
//!
//! This is the only place an identity is formatted or parsed. Everything downstream of
//! authentication holds a [`SpiffeId`], never a raw string.

use std::fmt;
use std::str::FromStr;

/// Why a string is not a workload SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("not a spiffe:// URI")]
    NotSpiffe,
    #[error("expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>")]
    BadShape,
    #[error("invalid trust domain {0:?}")]
    BadTrustDomain(String),
    #[error("invalid namespace {0:?}")]
    BadNamespace(String),
    #[error("invalid service account name {0:?}")]
    BadServiceAccount(String),
}

/// A SPIFFE trust domain, e.g. `cluster.local`: lower-case letters, digits, `.`, `-`, `_`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    pub fn new(td: &str) -> Result<Self, IdentityError> {
        let ok = !td.is_empty()
            && td.len() <= 255
            && td
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
        if ok {
            Ok(Self(td.to_owned()))
        } else {
            Err(IdentityError::BadTrustDomain(
                crate::echo::truncated(td).into_owned(),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A Kubernetes workload identity in one trust domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: TrustDomain,
    namespace: String,
    service_account: String,
}

impl SpiffeId {
    /// Builds an identity from a namespace and service-account name, checking both are valid
    /// Kubernetes names (a namespace is a DNS-1123 label, a service account a DNS-1123 subdomain).
    pub fn new(
        trust_domain: TrustDomain,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdentityError> {
        if !is_dns1123_label(namespace) {
            return Err(IdentityError::BadNamespace(
                crate::echo::truncated(namespace).into_owned(),
            ));
        }
        if !is_dns1123_subdomain(service_account) {
            return Err(IdentityError::BadServiceAccount(
                crate::echo::truncated(service_account).into_owned(),
            ));
        }
        Ok(Self {
            trust_domain,
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        })
    }

    /// Parses `system:serviceaccount:<ns>:<sa>`, the Kubernetes username of a service account.
    pub fn from_k8s_username(trust_domain: TrustDomain, username: &str) -> Option<Self> {
        let rest = username.strip_prefix("system:serviceaccount:")?;
        let (ns, sa) = rest.split_once(':')?;
        Self::new(trust_domain, ns, sa).ok()
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }
}

/// A service account named `namespace/name`, as the config lists node proxies
/// (`auth.impersonation.trusted_node_accounts`); both parts valid Kubernetes names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct ServiceAccountRef {
    namespace: String,
    name: String,
}

impl ServiceAccountRef {
    /// Whether `identity` is this service account's (in any trust domain).
    pub fn is(&self, namespace: &str, service_account: &str) -> bool {
        self.namespace == namespace && self.name == service_account
    }
}

impl FromStr for ServiceAccountRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (namespace, name) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not namespace/serviceaccount"))?;
        if !is_dns1123_label(namespace) || !is_dns1123_subdomain(name) {
            return Err(format!(
                "{s:?} is not namespace/serviceaccount (two Kubernetes names)"
            ));
        }
        Ok(Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }
}

impl TryFrom<String> for ServiceAccountRef {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl fmt::Display for ServiceAccountRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for SpiffeId {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or(IdentityError::NotSpiffe)?;
        let mut parts = rest.split('/');
        let (Some(td), Some("ns"), Some(ns), Some("sa"), Some(sa), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(IdentityError::BadShape);
        };
        Self::new(TrustDomain::new(td)?, ns, sa)
    }
}

fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_account_refs() {
        let a: ServiceAccountRef = "istio-system/ztunnel".parse().unwrap();
        assert!(a.is("istio-system", "ztunnel") && !a.is("istio-system", "istiod"));
        assert_eq!(a.to_string(), "istio-system/ztunnel");
        for bad in [
            "ztunnel",
            "/ztunnel",
            "istio-system/",
            "Istio/ztunnel",
            "a/b/c",
        ] {
            assert!(bad.parse::<ServiceAccountRef>().is_err(), "{bad}");
        }
    }

    fn td() -> TrustDomain {
        TrustDomain::new("cluster.local").unwrap()
    }

    #[test]
    fn round_trips() {
        let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
            .parse()
            .unwrap();
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "bookinfo-productpage");
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
        );
    }

    #[test]
    fn rejects_bad_shapes() {
        for s in [
            "http://cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/a/sa/b/c",
            "spiffe://cluster.local/ns/a/b/sa/c",
            "spiffe://cluster.local/sa/a/ns/b",
            "spiffe://cluster.local/ns//sa/b",
            "spiffe://Cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/A/sa/b",
            "spiffe://cluster.local/ns/a/sa/b?x",
            "spiffe:///ns/a/sa/b",
        ] {
            assert!(s.parse::<SpiffeId>().is_err(), "{s} should not parse");
        }
    }

    #[test]
    fn parses_k8s_usernames() {
        let id = SpiffeId::from_k8s_username(td(), "system:serviceaccount:istio-system:ztunnel")
            .unwrap();
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/istio-system/sa/ztunnel"
        );
        assert!(SpiffeId::from_k8s_username(td(), "system:serviceaccount:a:b:c").is_none());
        assert!(SpiffeId::from_k8s_username(td(), "system:serviceaccount:a").is_none());
        assert!(SpiffeId::from_k8s_username(td(), "system:node:a:b").is_none());
    }
}
