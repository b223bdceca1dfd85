//! Certificate revocation lists as the signer will publish them (`istio-ca-crl`, key
//! `ca-crl.pem`, which ztunnel loads): one CRL per issuer of every signing target, each
//! checked before it may be published: it parses, it is signed by its issuer's key, it names
//! that issuer, and it has not passed its `nextUpdate`. A CRL that fails is never published
//! (the last good one stays); an issuer keeps its own CRL (istio #61075: one merged CRL
//! breaks verification for every other issuer).

use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

/// One issuer's CRL that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerCrl {
    /// DER.
    pub der: Vec<u8>,
    /// Unix seconds.
    pub this_update: i64,
    pub next_update: i64,
    /// Serials it lists, lower-case colon-separated hex.
    pub revoked: Vec<String>,
}

/// Why a CRL is not published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrlError {
    #[error("the CRL does not parse: {0}")]
    Unparseable(String),
    #[error("the issuer certificate does not parse: {0}")]
    Issuer(String),
    #[error("the CRL names another issuer")]
    OtherIssuer,
    #[error("the CRL's signature does not verify with its issuer's key")]
    BadSignature,
    #[error("the CRL has no nextUpdate")]
    NoNextUpdate,
    #[error("the CRL expired at {next_update} (its nextUpdate; now {now})")]
    Expired { next_update: i64, now: i64 },
    #[error("the CRL is not valid yet (thisUpdate {this_update}, now {now})")]
    NotYetValid { this_update: i64, now: i64 },
}

/// Checks `der` as the CRL of the issuer certificate `issuer_der` at `now` (Unix seconds).
pub fn check(der: &[u8], issuer_der: &[u8], now: i64) -> Result<IssuerCrl, CrlError> {
    let (rest, crl) = CertificateRevocationList::from_der(der)
        .map_err(|e| CrlError::Unparseable(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CrlError::Unparseable("trailing bytes".into()));
    }
    let (_, issuer) =
        X509Certificate::from_der(issuer_der).map_err(|e| CrlError::Issuer(e.to_string()))?;
    if crl.issuer().as_raw() != issuer.subject().as_raw() {
        return Err(CrlError::OtherIssuer);
    }
    crl.verify_signature(issuer.public_key())
        .map_err(|_| CrlError::BadSignature)?;
    let this_update = crl.last_update().timestamp();
    let next_update = crl.next_update().ok_or(CrlError::NoNextUpdate)?.timestamp();
    // A little clock skew between Vault and the signer is not a reason to withhold a CRL.
    if this_update > now + CLOCK_SKEW {
        return Err(CrlError::NotYetValid { this_update, now });
    }
    if next_update <= now {
        return Err(CrlError::Expired { next_update, now });
    }
    let revoked = crl
        .iter_revoked_certificates()
        .map(|r| crate::serial::colon_hex(r.raw_serial()))
        .collect();
    Ok(IssuerCrl {
        der: der.to_vec(),
        this_update,
        next_update,
        revoked,
    })
}

/// Seconds a CRL's thisUpdate may lie in the future.
const CLOCK_SKEW: i64 = 300;

/// `ca-crl.pem`: every issuer's CRL, one PEM block each, in the given order.
pub fn bundle(crls: &[IssuerCrl]) -> String {
    crls.iter()
        .map(|c| crate::pem_text::encode("X509 CRL", &c.der))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer,
        IsCa, KeyIdMethod, KeyPair, RevokedCertParams, SerialNumber,
    };

    fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
    }

    fn crl(issuer: &CertifiedIssuer<'_, KeyPair>, this: i64, next: i64) -> Vec<u8> {
        let t = |s: i64| time::OffsetDateTime::from_unix_timestamp(s).unwrap();
        CertificateRevocationListParams {
            this_update: t(this),
            next_update: t(next),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: vec![RevokedCertParams {
                serial_number: SerialNumber::from_slice(&[0x0a, 0x1b]),
                revocation_time: t(this),
                reason_code: None,
                invalidity_date: None,
            }],
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(issuer)
        .unwrap()
        .der()
        .to_vec()
    }

    #[test]
    fn only_a_current_crl_signed_by_its_issuer_passes() {
        let now = 1_800_000_000;
        let (a, b) = (ca("a"), ca("b"));
        let good = check(&crl(&a, now - 60, now + 3600), a.der(), now).unwrap();
        assert_eq!(good.revoked, ["0a:1b"]);
        assert_eq!(good.next_update, now + 3600);
        assert_eq!(
            check(&crl(&a, now - 7200, now - 1), a.der(), now),
            Err(CrlError::Expired {
                next_update: now - 1,
                now
            })
        );
        assert!(matches!(
            check(&crl(&a, now + 3600, now + 7200), a.der(), now),
            Err(CrlError::NotYetValid { .. })
        ));
        assert_eq!(
            check(&crl(&b, now - 60, now + 3600), a.der(), now),
            Err(CrlError::OtherIssuer)
        );
        let mut tampered = crl(&a, now - 60, now + 3600);
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(matches!(
            check(&tampered, a.der(), now),
            Err(CrlError::BadSignature | CrlError::Unparseable(_))
        ));
        assert!(matches!(
            check(b"junk", a.der(), now),
            Err(CrlError::Unparseable(_))
        ));
        let both = bundle(&[
            good.clone(),
            check(&crl(&b, now - 60, now + 60), b.der(), now).unwrap(),
        ]);
        assert_eq!(pem::parse_many(&both).unwrap().len(), 2);
        assert!(both.starts_with("-----BEGIN X509 CRL-----"));
    }
}
