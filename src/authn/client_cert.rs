//! Client-certificate authentication: the workload identity a verified certificate names.

use super::AuthnError;
use crate::identity::{SpiffeId, TrustDomain};

/// The workload identity of a verified client certificate: exactly one URI SAN, a SPIFFE ID
/// of `trust_domain`.
pub(crate) fn identity_from_cert(
    der: &[u8],
    trust_domain: &TrustDomain,
) -> Result<SpiffeId, AuthnError> {
    use x509_parser::extensions::GeneralName;
    use x509_parser::prelude::{FromDer, X509Certificate};
    let bad = |m: &str| AuthnError::ClientCert(m.to_owned());
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| bad("unparsable"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|_| bad("malformed subjectAltName"))?
        .ok_or_else(|| bad("no subjectAltName"))?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    let [uri] = uris[..] else {
        return Err(bad("not exactly one URI SAN"));
    };
    let id: SpiffeId = uri
        .parse()
        .map_err(|_| bad("URI SAN is not a workload SPIFFE ID"))?;
    if id.trust_domain() != trust_domain {
        return Err(bad("foreign trust domain"));
    }
    Ok(id)
}
