//! Targets `csr` (CSR policy on PEM text) and `csr_der` (the same on DER).

use std::sync::OnceLock;

use crate::config::CsrConfig;
use crate::csr::CsrPolicy;
use crate::identity::SpiffeId;

/// CSR policy: whatever is accepted asks for exactly one workload identity of this trust
/// domain, and that identity survives a round trip through its text form.
pub fn csr(data: &[u8]) {
    static POLICY: OnceLock<CsrPolicy> = OnceLock::new();
    let policy = POLICY.get_or_init(|| CsrConfig::default().policy());
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(csr) = policy.verify(text) {
        let id = csr.requested();
        let again: SpiffeId = id.to_string().parse().expect("accepted identity re-parses");
        assert_eq!(&again, id);
        assert!(text.len() <= CsrConfig::default().max_bytes);
    }
}

/// CSR policy on DER: the input is the CSR's DER (wrapped in PEM here, so mutations reach the
/// ASN.1 parser instead of dying in base64). Whatever is accepted is checked independently
/// with x509-parser: its signature verifies, it asks for exactly one URI SAN and no other
/// name, and that URI is the identity the policy extracted.
pub fn csr_der(data: &[u8]) {
    use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509CertificationRequest};
    static POLICY: OnceLock<CsrPolicy> = OnceLock::new();
    let policy = POLICY.get_or_init(|| CsrConfig::default().policy());
    let pem = crate::pem_text::encode("CERTIFICATE REQUEST", data);
    let Ok(csr) = policy.verify(&pem) else {
        return;
    };
    let (rest, parsed) = X509CertificationRequest::from_der(data).expect("accepted CSR parses");
    assert!(rest.is_empty(), "accepted CSR has trailing bytes");
    parsed
        .verify_signature()
        .expect("accepted CSR's signature verifies");
    let mut names = Vec::new();
    for ext in parsed.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            names.extend(san.general_names.iter().cloned());
        }
    }
    match &names[..] {
        [GeneralName::URI(uri)] => assert_eq!(*uri, csr.requested().to_string()),
        other => panic!("accepted CSR names {other:?}"),
    }
    assert!(
        parsed
            .certification_request_info
            .subject
            .iter_common_name()
            .next()
            .is_none(),
        "accepted CSR has a CN"
    );
}
