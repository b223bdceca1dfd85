//! CSR policy: turns the PEM text of a request into a [`VerifiedCsr`] or says precisely why not.
//!
//! The policy accepts what pilot-agent (RSA-2048, subject `O=`, one URI SAN) and ztunnel
//! (P-256, empty subject, critical URI SAN) send, and nothing that could widen what Vault
//! issues: no CN, no DNS/IP/email SANs, no CA request, no unknown extension or attribute,
//! no SHA-1/MD5 signature, only allow-listed keys, and a valid self-signature.

use std::collections::HashSet;

use rustls_pki_types::pem::{PemObject, SectionKind};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::der_parser::oid::Oid;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::*;
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use crate::identity::SpiffeId;

/// Why a CSR is refused. Every variant is the caller's fault (`InvalidArgument`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("CSR is {size} bytes, larger than the {max}-byte limit")]
    TooLarge { size: usize, max: usize },
    #[error("CSR is not PEM with exactly one CERTIFICATE REQUEST block: {0}")]
    Pem(String),
    #[error("CSR is not valid DER: {0}")]
    Der(String),
    #[error(
        "CSR signature algorithm {0} is not allowed (SHA-1, MD5 and unknown algorithms are refused)"
    )]
    SignatureAlgorithm(String),
    #[error("CSR self-signature does not verify")]
    BadSignature,
    #[error("CSR key {0} is not allowed")]
    KeyNotAllowed(String),
    #[error("CSR subject must not carry a common name (CN)")]
    CommonName,
    #[error("CSR subject attribute {0} is not allowed (only O and OU)")]
    SubjectAttribute(String),
    #[error("CSR attribute {0} is not allowed (only extensionRequest)")]
    Attribute(String),
    #[error("CSR extension {0} is not allowed")]
    UnknownExtension(String),
    #[error("CSR extension {0} appears twice")]
    DuplicateExtension(String),
    #[error("CSR extension {0} is malformed")]
    MalformedExtension(String),
    #[error("CSR requests a CA certificate (basicConstraints CA:true)")]
    CaRequested,
    #[error("CSR has no subjectAltName extension")]
    NoSan,
    #[error("CSR SAN of type {0} is not allowed (only one spiffe:// URI)")]
    SanType(&'static str),
    #[error("CSR must carry exactly one URI SAN, found {0}")]
    UriCount(usize),
    #[error("CSR URI SAN {uri:?} is not a workload SPIFFE ID: {reason}")]
    BadUri { uri: String, reason: String },
}

/// A CSR that passed every policy check. Its SPIFFE ID still needs authorizing.
#[derive(Debug, Clone)]
pub struct VerifiedCsr {
    pem: String,
    digest: [u8; 32],
    spki_der: Vec<u8>,
    key: KeyAlgorithm,
    requested: SpiffeId,
}

impl VerifiedCsr {
    /// The CSR re-encoded from the verified DER, as sent to Vault.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// SHA-256 of the CSR's DER: identifies identical requests.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// The DER SubjectPublicKeyInfo; the issued leaf must carry exactly this key.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    pub fn key(&self) -> KeyAlgorithm {
        self.key
    }

    /// The identity the CSR asks for (its single URI SAN).
    pub fn requested(&self) -> &SpiffeId {
        &self.requested
    }
}

/// A public-key type a CSR may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyAlgorithm {
    EcdsaP256,
    EcdsaP384,
    Rsa2048,
    Rsa3072,
    Rsa4096,
    Ed25519,
}

/// Checks incoming CSRs against `[csr]` (built by `CsrConfig::policy`).
#[derive(Debug, Clone)]
pub struct CsrPolicy {
    max_bytes: usize,
    allowed_keys: HashSet<KeyAlgorithm>,
}

impl CsrPolicy {
    pub fn new(max_bytes: usize, allowed_keys: &[KeyAlgorithm]) -> Self {
        Self {
            max_bytes,
            allowed_keys: allowed_keys.iter().copied().collect(),
        }
    }

    /// Parses and checks a PEM CSR.
    pub fn verify(&self, pem: &str) -> Result<VerifiedCsr, CsrError> {
        if pem.len() > self.max_bytes {
            return Err(CsrError::TooLarge {
                size: pem.len(),
                max: self.max_bytes,
            });
        }
        let der = single_csr_block(pem.as_bytes())?;
        check_envelope(&der)?;
        let (rest, csr) =
            X509CertificationRequest::from_der(&der).map_err(|e| CsrError::Der(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CsrError::Der("trailing bytes after the request".into()));
        }
        check_signature_algorithm(&csr)?;
        let info = &csr.certification_request_info;
        let key = key_algorithm(&info.subject_pki)?;
        if !self.allowed_keys.contains(&key) {
            return Err(CsrError::KeyNotAllowed(key_name(key).into()));
        }
        csr.verify_signature().map_err(|_| CsrError::BadSignature)?;
        check_subject(&csr)?;
        let requested = check_extensions(&csr)?;

        Ok(VerifiedCsr {
            pem: crate::pem_text::encode("CERTIFICATE REQUEST", &der),
            digest: crate::sha256(&[&der]),
            spki_der: info.subject_pki.raw.to_vec(),
            key,
            requested,
        })
    }
}

fn single_csr_block(pem: &[u8]) -> Result<Vec<u8>, CsrError> {
    let mut found = None;
    for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem) {
        // Never echo PEM errors' content: the input might hold key material.
        let (kind, der) = item.map_err(|_| CsrError::Pem("malformed PEM".into()))?;
        match kind {
            SectionKind::Csr if found.is_none() => found = Some(der),
            SectionKind::Csr => return Err(CsrError::Pem("more than one block".into())),
            SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey => {
                return Err(CsrError::Pem("it contains a private key".into()));
            }
            _ => {
                return Err(CsrError::Pem(
                    "it contains a block that is not a CSR".into(),
                ));
            }
        }
    }
    found.ok_or_else(|| CsrError::Pem("no CERTIFICATE REQUEST block".into()))
}

/// One DER TLV of `input`: tag, contents and what follows. Only low tag numbers and definite,
/// minimally encoded lengths (DER) are accepted.
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        // 0x80 is BER's indefinite length; a leading zero or a long form for a short length
        // is not minimal.
        if n == 0 || n > 4 || rest.len() < n || rest[0] == 0 {
            return None;
        }
        let (bytes, rest) = rest.split_at(n);
        let len = bytes.iter().fold(0usize, |l, b| (l << 8) | usize::from(*b));
        if len < 0x80 {
            return None;
        }
        (len, rest)
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// Checks the parts of a CSR its signature does not cover, strictly as DER: one SEQUENCE of
/// the request info, the algorithm (an OID with no, NULL or SEQUENCE parameters) and a BIT
/// STRING without unused bits. x509-parser tolerates other tags there, and such a request
/// would only fail later, at Vault.
fn check_envelope(der: &[u8]) -> Result<(), CsrError> {
    let bad = |what: &str| CsrError::Der(what.into());
    let Some((0x30, body, [])) = der_tlv(der) else {
        return Err(bad("the request is not exactly one SEQUENCE"));
    };
    let Some((0x30, _info, body)) = der_tlv(body) else {
        return Err(bad("certificationRequestInfo is not a SEQUENCE"));
    };
    let Some((0x30, algorithm, body)) = der_tlv(body) else {
        return Err(bad("signatureAlgorithm is not a SEQUENCE"));
    };
    let Some((0x03, signature, [])) = der_tlv(body) else {
        return Err(bad("the signature is not a BIT STRING ending the request"));
    };
    if signature.first() != Some(&0) {
        return Err(bad("the signature BIT STRING has unused bits"));
    }
    let Some((0x06, _oid, parameters)) = der_tlv(algorithm) else {
        return Err(bad("signatureAlgorithm does not start with an OID"));
    };
    match parameters {
        [] | [0x05, 0x00] => Ok(()),
        _ if matches!(der_tlv(parameters), Some((0x30, _, []))) => Ok(()),
        _ => Err(bad("signatureAlgorithm parameters are malformed")),
    }
}

fn check_signature_algorithm(csr: &X509CertificationRequest<'_>) -> Result<(), CsrError> {
    let alg = &csr.signature_algorithm.algorithm;
    let allowed = [
        OID_PKCS1_SHA256WITHRSA,
        OID_PKCS1_SHA384WITHRSA,
        OID_PKCS1_SHA512WITHRSA,
        OID_PKCS1_RSASSAPSS, // x509-parser only verifies PSS with SHA-256/384/512
        OID_SIG_ECDSA_WITH_SHA256,
        OID_SIG_ECDSA_WITH_SHA384,
        OID_SIG_ED25519,
    ];
    if allowed.contains(alg) {
        Ok(())
    } else {
        Err(CsrError::SignatureAlgorithm(oid_name(alg)))
    }
}

fn key_algorithm(
    spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>,
) -> Result<KeyAlgorithm, CsrError> {
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_PKCS1_RSAENCRYPTION {
        let Ok(PublicKey::RSA(rsa)) = spki.parsed() else {
            return Err(CsrError::KeyNotAllowed("malformed RSA key".into()));
        };
        return match rsa.key_size() {
            2048 => Ok(KeyAlgorithm::Rsa2048),
            3072 => Ok(KeyAlgorithm::Rsa3072),
            4096 => Ok(KeyAlgorithm::Rsa4096),
            bits => Err(CsrError::KeyNotAllowed(format!("RSA-{bits}"))),
        };
    }
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        return match curve {
            Some(c) if c == OID_EC_P256 => Ok(KeyAlgorithm::EcdsaP256),
            Some(c) if c == OID_NIST_EC_P384 => Ok(KeyAlgorithm::EcdsaP384),
            Some(c) => Err(CsrError::KeyNotAllowed(format!(
                "EC curve {}",
                oid_name(&c)
            ))),
            None => Err(CsrError::KeyNotAllowed(
                "EC key without a named curve".into(),
            )),
        };
    }
    if *alg == OID_SIG_ED25519 {
        return Ok(KeyAlgorithm::Ed25519);
    }
    Err(CsrError::KeyNotAllowed(oid_name(alg)))
}

/// The name a key type has in `csr.allowed_keys`.
pub fn key_name(key: KeyAlgorithm) -> &'static str {
    match key {
        KeyAlgorithm::EcdsaP256 => "ecdsa-p256",
        KeyAlgorithm::EcdsaP384 => "ecdsa-p384",
        KeyAlgorithm::Rsa2048 => "rsa-2048",
        KeyAlgorithm::Rsa3072 => "rsa-3072",
        KeyAlgorithm::Rsa4096 => "rsa-4096",
        KeyAlgorithm::Ed25519 => "ed25519",
    }
}

fn check_subject(csr: &X509CertificationRequest<'_>) -> Result<(), CsrError> {
    for attr in csr.certification_request_info.subject.iter_attributes() {
        let t = attr.attr_type();
        if *t == OID_X509_COMMON_NAME {
            return Err(CsrError::CommonName);
        }
        if *t != OID_X509_ORGANIZATION_NAME && *t != OID_X509_ORGANIZATIONAL_UNIT {
            return Err(CsrError::SubjectAttribute(oid_name(t)));
        }
    }
    Ok(())
}

/// Checks attributes and extensions and returns the single URI SAN as a SPIFFE ID.
fn check_extensions(csr: &X509CertificationRequest<'_>) -> Result<SpiffeId, CsrError> {
    let mut seen = HashSet::new();
    let mut san = None;
    for attr in csr.certification_request_info.iter_attributes() {
        if attr.oid != OID_PKCS9_EXTENSION_REQUEST {
            return Err(CsrError::Attribute(oid_name(&attr.oid)));
        }
        let x509_parser::cri_attributes::ParsedCriAttribute::ExtensionRequest(req) =
            attr.parsed_attribute()
        else {
            return Err(CsrError::MalformedExtension("extensionRequest".into()));
        };
        for ext in &req.extensions {
            let name = oid_name(&ext.oid);
            if !seen.insert(ext.oid.to_id_string()) {
                return Err(CsrError::DuplicateExtension(name));
            }
            match ext.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(s) => san = Some(s),
                ParsedExtension::BasicConstraints(bc) if bc.ca => {
                    return Err(CsrError::CaRequested);
                }
                ParsedExtension::BasicConstraints(_)
                | ParsedExtension::KeyUsage(_)
                | ParsedExtension::ExtendedKeyUsage(_)
                | ParsedExtension::SubjectKeyIdentifier(_) => {}
                ParsedExtension::ParseError { .. } => {
                    return Err(CsrError::MalformedExtension(name));
                }
                _ => return Err(CsrError::UnknownExtension(name)),
            }
        }
    }
    let san = san.ok_or(CsrError::NoSan)?;
    let mut uris = Vec::new();
    for name in &san.general_names {
        match name {
            GeneralName::URI(u) => uris.push(*u),
            GeneralName::DNSName(_) => return Err(CsrError::SanType("DNS")),
            GeneralName::IPAddress(_) => return Err(CsrError::SanType("IP")),
            GeneralName::RFC822Name(_) => return Err(CsrError::SanType("email")),
            _ => return Err(CsrError::SanType("other")),
        }
    }
    let [uri] = uris[..] else {
        return Err(CsrError::UriCount(uris.len()));
    };
    uri.parse()
        .map_err(|e: crate::identity::IdentityError| CsrError::BadUri {
            uri: crate::echo::truncated(uri).into_owned(),
            reason: e.to_string(),
        })
}

fn oid_name(oid: &Oid<'_>) -> String {
    match oid_registry().get(oid) {
        Some(entry) => entry.sn().to_owned(),
        None => oid.to_id_string(),
    }
}

fn oid_registry() -> &'static OidRegistry<'static> {
    static REGISTRY: std::sync::OnceLock<OidRegistry<'static>> = std::sync::OnceLock::new();
    REGISTRY.get_or_init(|| OidRegistry::default().with_all_crypto().with_x509())
}

#[cfg(test)]
mod tests {
    use crate::config::CsrConfig;
    use crate::pem_text::encode as pem_encode;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

    use super::*;
    use crate::client::{Shape, generate_csr, uri_san_extension};

    const ID: &str = "spiffe://cluster.local/ns/default/sa/demo";

    fn policy() -> CsrPolicy {
        CsrConfig::default().policy()
    }

    fn csr(key: &KeyPair, subject_o: bool, critical: bool) -> String {
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        if subject_o {
            p.distinguished_name.push(DnType::OrganizationName, "");
        }
        p.custom_extensions.push(uri_san_extension(ID, critical));
        p.serialize_request(key).unwrap().pem().unwrap()
    }

    #[test]
    fn both_client_shapes_pass() {
        let id: SpiffeId = ID.parse().unwrap();
        let agent = generate_csr(Shape::PilotAgent, &id).unwrap();
        let v = policy().verify(&agent.csr_pem).unwrap();
        assert_eq!(v.key(), KeyAlgorithm::Rsa2048);
        assert_eq!(v.requested(), &id);
        let zt = generate_csr(Shape::Ztunnel, &id).unwrap();
        let v = policy().verify(&zt.csr_pem).unwrap();
        assert_eq!(v.key(), KeyAlgorithm::EcdsaP256);
        assert_eq!(
            v.spki_der(),
            rcgen::PublicKeyData::subject_public_key_info(&zt.key)
        );
        // What Vault receives is the verified DER, re-encoded.
        assert!(v.pem().starts_with("-----BEGIN CERTIFICATE REQUEST-----\n"));
    }

    #[test]
    fn critical_and_non_critical_san_with_or_without_o() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        for (o, crit) in [(true, true), (true, false), (false, true), (false, false)] {
            let v = policy().verify(&csr(&key, o, crit)).unwrap();
            assert_eq!(v.key(), KeyAlgorithm::EcdsaP384);
        }
    }

    #[test]
    fn key_allow_list_is_configurable() {
        let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        assert_eq!(
            policy().verify(&csr(&ed, false, true)).unwrap_err(),
            CsrError::KeyNotAllowed("ed25519".into())
        );
        let only_ed = CsrConfig {
            allowed_keys: vec![KeyAlgorithm::Ed25519],
            ..CsrConfig::default()
        }
        .policy();
        assert!(only_ed.verify(&csr(&ed, false, true)).is_ok());
        let p256 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        assert!(matches!(
            only_ed.verify(&csr(&p256, false, true)),
            Err(CsrError::KeyNotAllowed(_))
        ));
    }

    /// Bytes from the network never panic the parser, and no corruption of a valid CSR
    /// passes: every single-byte change and every truncation of both client shapes' DER is
    /// refused (the signature covers the request; the algorithm and signature fields are
    /// checked themselves).
    #[test]
    fn corrupted_csrs_are_refused_without_panicking() {
        let id: SpiffeId = ID.parse().unwrap();
        for shape in [Shape::Ztunnel, Shape::PilotAgent] {
            let pem = generate_csr(shape, &id).unwrap().csr_pem;
            let der = single_csr_block(pem.as_bytes()).unwrap();
            let policy = policy();
            assert!(
                policy
                    .verify(&pem_encode("CERTIFICATE REQUEST", &der))
                    .is_ok()
            );
            for at in 0..der.len() {
                for flip in [0x01u8, 0x80, 0xff] {
                    let mut bad = der.clone();
                    bad[at] ^= flip;
                    let result = policy.verify(&pem_encode("CERTIFICATE REQUEST", &bad));
                    assert!(result.is_err(), "{shape:?}: byte {at} ^ {flip:#x} passed");
                }
                let cut = policy.verify(&pem_encode("CERTIFICATE REQUEST", &der[..at]));
                assert!(cut.is_err(), "{shape:?}: truncated to {at} bytes passed");
            }
        }
    }

    #[test]
    fn pem_edge_cases() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let one = csr(&key, false, true);
        assert!(
            policy().verify(&format!("\n\n{one}\n\n")).is_ok(),
            "surrounding whitespace is fine"
        );
        assert_eq!(
            policy().verify(&format!("{one}{one}")).unwrap_err(),
            CsrError::Pem("more than one block".into())
        );
        let cert_label = one.replace("CERTIFICATE REQUEST", "CERTIFICATE");
        assert!(matches!(
            policy().verify(&cert_label),
            Err(CsrError::Pem(_))
        ));
        let new_label = one.replace("CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST");
        assert!(matches!(policy().verify(&new_label), Err(CsrError::Pem(_))));
        assert!(matches!(policy().verify(""), Err(CsrError::Pem(_))));
        let truncated = format!("{}\n-----END CERTIFICATE REQUEST-----\n", &one[..200]);
        assert!(policy().verify(&truncated).is_err());
    }

    #[test]
    fn other_subject_attributes_and_sans() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CountryName, "US");
        p.custom_extensions.push(uri_san_extension(ID, true));
        let pem = p.serialize_request(&key).unwrap().pem().unwrap();
        assert!(matches!(
            policy().verify(&pem),
            Err(CsrError::SubjectAttribute(_))
        ));

        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.subject_alt_names = vec![
            SanType::URI(ID.try_into().unwrap()),
            SanType::IpAddress("10.0.0.1".parse().unwrap()),
        ];
        let pem = p.serialize_request(&key).unwrap().pem().unwrap();
        assert_eq!(policy().verify(&pem).unwrap_err(), CsrError::SanType("IP"));

        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.subject_alt_names = vec![SanType::URI("https://example.com/x".try_into().unwrap())];
        let pem = p.serialize_request(&key).unwrap().pem().unwrap();
        assert!(matches!(
            policy().verify(&pem),
            Err(CsrError::BadUri { .. })
        ));

        // A long URI is echoed cut, like every other value the caller sent.
        let long = format!("https://example.com/{}", "x".repeat(4000));
        p.subject_alt_names = vec![SanType::URI(long.as_str().try_into().unwrap())];
        let pem = p.serialize_request(&key).unwrap().pem().unwrap();
        let Err(CsrError::BadUri { uri, .. }) = policy().verify(&pem) else {
            panic!("accepted");
        };
        assert_eq!(uri.chars().count(), crate::echo::LIMIT + 1);
    }
}
