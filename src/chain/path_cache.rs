//! The cache of verified issuing paths behind [`super::verify_and_assemble`].

use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::bundle::TrustBundle;

/// Issuing paths (issuing CA up to a root of one bundle) that were fully verified, so each
/// request only verifies the leaf against its issuer. An entry is used only with the bundle
/// it was verified against and until the first certificate on its path expires. Paths whose
/// upper certificates carry name constraints are never cached: those constraints apply to
/// the leaf and are only checked by a full path verification.
#[derive(Default)]
pub struct PathCache {
    pub(super) entries: std::sync::RwLock<Vec<Arc<CachedPath>>>,
}

/// Mesh CAs rotate rarely; a few entries cover old and new issuers during a rotation.
const MAX_CACHED_PATHS: usize = 8;

pub(super) struct CachedPath {
    issuer: CertificateDer<'static>,
    /// Vault's `ca_chain` text when the path was verified.
    raw_chain: Vec<String>,
    pub(super) anchor: rustls_pki_types::TrustAnchor<'static>,
    pub(super) elements: Arc<[String]>,
    bundle: Arc<TrustBundle>,
    valid_until: i64,
}

impl PathCache {
    pub(super) fn lookup(
        &self,
        issuer: Option<&CertificateDer<'static>>,
        bundle: &Arc<TrustBundle>,
        now: i64,
    ) -> Option<Arc<CachedPath>> {
        let issuer = issuer?;
        self.find(|e| e.issuer == *issuer, bundle, now)
    }

    /// The path verified with exactly this `ca_chain` text.
    pub(super) fn lookup_raw(
        &self,
        raw_chain: &[String],
        bundle: &Arc<TrustBundle>,
        now: i64,
    ) -> Option<Arc<CachedPath>> {
        self.find(|e| e.raw_chain == raw_chain, bundle, now)
    }

    fn find(
        &self,
        matches: impl Fn(&CachedPath) -> bool,
        bundle: &Arc<TrustBundle>,
        now: i64,
    ) -> Option<Arc<CachedPath>> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries
            .iter()
            .find(|e| Arc::ptr_eq(&e.bundle, bundle) && now < e.valid_until && matches(e))
            .cloned()
    }

    /// Caches a verified path (issuing CA first), unless it must not be cached.
    pub(super) fn insert(
        &self,
        path: &[CertificateDer<'static>],
        elements: Arc<[String]>,
        bundle: &Arc<TrustBundle>,
        raw_chain: &[String],
    ) {
        let Some(issuer) = path.first() else {
            return; // issued directly by a root: nothing to cache
        };
        let Ok(anchor) = webpki::anchor_from_trusted_cert(issuer) else {
            return;
        };
        let mut valid_until = i64::MAX;
        for (i, der) in path.iter().enumerate() {
            let Ok((_, cert)) = X509Certificate::from_der(der) else {
                return;
            };
            if i > 0 && !matches!(cert.name_constraints(), Ok(None)) {
                return;
            }
            valid_until = valid_until.min(cert.validity().not_after.timestamp());
        }
        // The root above the path must not constrain names either.
        let last = path.last().expect("non-empty");
        let Ok((_, top)) = X509Certificate::from_der(last) else {
            return;
        };
        for root in bundle.roots() {
            let Ok((_, r)) = X509Certificate::from_der(root) else {
                return;
            };
            if r.subject() == top.issuer() {
                if !matches!(r.name_constraints(), Ok(None)) {
                    return;
                }
                valid_until = valid_until.min(r.validity().not_after.timestamp());
            }
        }
        let entry = Arc::new(CachedPath {
            issuer: issuer.clone(),
            raw_chain: raw_chain.to_vec(),
            anchor: anchor.to_owned(),
            elements,
            bundle: bundle.clone(),
            valid_until,
        });
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        entries.retain(|e| Arc::ptr_eq(&e.bundle, bundle) && e.issuer != entry.issuer);
        if entries.len() >= MAX_CACHED_PATHS {
            entries.remove(0);
        }
        entries.push(entry);
    }
}
