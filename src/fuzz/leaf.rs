//! Target `leaf`: Vault's sign answer through leaf verification and chain layout.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use crate::bundle::TrustBundle;
use crate::chain::{self, Expectation, PathCache};
use crate::config::CsrConfig;
use crate::csr::VerifiedCsr;
use crate::identity::SpiffeId;

struct LeafFixture {
    id: SpiffeId,
    csr: VerifiedCsr,
    key_spki: Vec<u8>,
    bundle: Arc<TrustBundle>,
    /// A genuine sign answer for `csr`, the seed the fuzzer mutates.
    answer: String,
}

/// A root → intermediate PKI and Vault's answer for one CSR, made once per process.
fn leaf_fixture() -> &'static LeafFixture {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName,
        ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
    };
    static FIXTURE: OnceLock<LeafFixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/demo"
            .parse()
            .expect("id");
        let kc = crate::client::generate_csr(crate::client::Shape::Ztunnel, &id).expect("csr");
        let csr = CsrConfig::default()
            .policy()
            .verify(&kc.csr_pem)
            .expect("valid csr");
        let ca = |name: &str| {
            let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
            p.distinguished_name.push(rcgen::DnType::CommonName, name);
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p
        };
        let root = CertifiedIssuer::self_signed(ca("root"), KeyPair::generate().expect("key"))
            .expect("root");
        let inter =
            CertifiedIssuer::signed_by(ca("inter"), KeyPair::generate().expect("key"), &root)
                .expect("intermediate");
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.subject_alt_names = vec![SanType::URI(id.to_string().try_into().expect("uri san"))];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.not_after = rcgen::date_time_ymd(2100, 1, 1);
        let leaf = p.signed_by(&kc.key, &inter).expect("leaf");
        let answer = serde_json::json!({
            "data": {
                "certificate": leaf.pem(),
                "issuing_ca": inter.pem(),
                "ca_chain": [inter.pem(), root.pem()],
                "serial_number": "01:02"
            },
            "warnings": null
        })
        .to_string();
        LeafFixture {
            id,
            key_spki: pem::parse(kc.key.public_key_pem())
                .expect("public key PEM")
                .into_contents(),
            csr,
            bundle: Arc::new(TrustBundle::from_pem(root.pem().as_bytes()).expect("bundle")),
            answer,
        }
    })
}

/// Vault's sign answer, mutated. The PKI is made per process, so the input is an edit of the
/// genuine answer: three bytes an edit (offset high, offset low, new byte), an empty input
/// being the answer itself; an input starting with `{` is taken as a whole answer instead.
/// Whatever is accepted has, checked independently with x509-parser, the CSR's key and
/// exactly the expected URI SAN as its leaf, and every element of the chain is PEM that parses.
pub fn leaf(data: &[u8]) {
    leaf_accepted(data);
}

/// [`leaf`], saying whether the answer was accepted.
pub fn leaf_accepted(data: &[u8]) -> bool {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let f = leaf_fixture();
    let answer = if data.first() == Some(&b'{') {
        data.to_vec()
    } else {
        let mut answer = f.answer.clone().into_bytes();
        for edit in data.chunks_exact(3) {
            let at = usize::from(u16::from_be_bytes([edit[0], edit[1]])) % answer.len();
            answer[at] = edit[2];
        }
        answer
    };
    let Ok(signed) = crate::vault::parse_sign_response(&answer) else {
        return false;
    };
    let now = SystemTime::now();
    let expect = Expectation {
        csr: &f.csr,
        identity: &f.id,
        max_not_after: now + Duration::from_secs(200 * 365 * 86400),
    };
    let trust = chain::TargetTrust {
        anchors: f.bundle.clone(),
        issuer_pem: None,
    };
    let Ok(chain) = chain::verify_and_assemble(
        &signed,
        expect,
        &trust,
        &f.bundle,
        &PathCache::default(),
        now,
    ) else {
        return false;
    };
    let (leaf_pem, rest) = chain.elements.split_first().expect("non-empty chain");
    let der = pem::parse(leaf_pem).expect("leaf PEM").into_contents();
    let (_, cert) = X509Certificate::from_der(&der).expect("leaf parses");
    assert_eq!(
        cert.public_key().raw,
        &f.key_spki[..],
        "leaf key is not the CSR's"
    );
    let san = cert
        .subject_alternative_name()
        .expect("SAN parses")
        .expect("SAN present");
    let expected = f.id.to_string();
    assert!(
        matches!(
            &san.value.general_names[..],
            [x509_parser::extensions::GeneralName::URI(uri)] if *uri == expected
        ),
        "leaf names {:?}",
        san.value.general_names
    );
    for element in rest {
        for p in pem::parse_many(element).expect("chain PEM") {
            X509Certificate::from_der(p.contents()).expect("chain certificate parses");
        }
    }
    true
}
