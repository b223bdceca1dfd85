//! Target `identity`: SPIFFE IDs and client-certificate identities.

use super::td;
use crate::identity::SpiffeId;

/// SPIFFE IDs and client-certificate identities. The input is tried as a SPIFFE ID (an
/// accepted one is canonical: its text form parses to itself) and as a certificate's DER
/// (an identity taken from it is one of this trust domain's, and re-parses).
pub fn identity(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(id) = text.parse::<SpiffeId>()
    {
        let again: SpiffeId = id.to_string().parse().expect("display re-parses");
        assert_eq!(again, id);
        assert_eq!(again.to_string(), id.to_string());
    }
    if let Ok(id) = crate::authn::identity_from_cert(data, &td()) {
        assert_eq!(id.trust_domain(), &td());
        let again: SpiffeId = id.to_string().parse().expect("display re-parses");
        assert_eq!(again, id);
    }
}
