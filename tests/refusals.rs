//! The refusal matrix: every request the caller is not entitled to gets its exact gRPC status,
//! and OpenBao's audit log proves Vault was never asked to sign it.
//!
//! Real OpenBao, real TLS, tonic clients shaped like pilot-agent and ztunnel.

use istio_vault_ca::client::{self, CallOptions, Shape, uri_san_extension};
use istio_vault_ca::dev::{DevIssuer, TokenSpec};
use rcgen::{CertificateParams, CustomExtension, DistinguishedName, DnType, KeyPair, SanType};
use support::{Env, id, now_unix};
use tonic::Code;

/// One request that must be refused.
struct Case {
    name: &'static str,
    shape: Shape,
    csr: String,
    opts: CallOptions,
    code: Code,
    message: &'static str,
}

fn csr_with(params: CertificateParams, key: &KeyPair) -> String {
    params.serialize_request(key).unwrap().pem().unwrap()
}

fn p256() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
}

fn empty_dn() -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p
}

/// Flips one bit near the end of the DER (inside the signature) and re-encodes as PEM.
fn forge_signature(pem: &str) -> String {
    use rustls_pki_types::pem::PemObject;
    let csr =
        rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(pem.as_bytes()).unwrap();
    let mut der = csr.as_ref().to_vec();
    let n = der.len();
    der[n - 5] ^= 0x01;
    istio_vault_ca::pem_text::encode("CERTIFICATE REQUEST", &der)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusal_matrix_never_reaches_vault() {
    let env = Env::start().await;
    let demo = id("default", "demo");
    let good = || client::generate_csr(Shape::Ztunnel, &demo).unwrap().csr_pem;
    let opts = env.opts("default", "demo");
    let with_token = |t: Option<String>| CallOptions {
        token: t,
        ..opts.clone()
    };

    // Tokens that must fail authentication.
    let valid = env.token("default", "demo");
    let mut parts: Vec<String> = valid.split('.').map(str::to_owned).collect();
    let sig = parts[2].clone().into_bytes();
    let mut flipped = sig.clone();
    flipped[5] = if sig[5] == b'A' { b'B' } else { b'A' };
    parts[2] = String::from_utf8(flipped).unwrap();
    let bad_signature = parts.join(".");
    let other_issuer = DevIssuer::from_key_pem(
        "https://evil.example",
        jsonwebtoken::Algorithm::ES256,
        env.issuer.key_pem(),
    )
    .unwrap()
    .token(&TokenSpec::new("default", "demo"))
    .unwrap();
    let mut spec = TokenSpec::new("default", "demo");
    spec.audiences = vec!["kubernetes".into()];
    let wrong_audience = env.issuer.token(&spec).unwrap();
    let mut claims = env.issuer.claims(&TokenSpec::new("default", "demo"));
    claims["exp"] = (now_unix() - 3600).into();
    claims["iat"] = (now_unix() - 7200).into();
    claims["nbf"] = (now_unix() - 7200).into();
    let expired = env.issuer.sign(&claims).unwrap();
    let unknown_key = DevIssuer::generate(env.issuer.issuer())
        .unwrap()
        .token(&TokenSpec::new("default", "demo"))
        .unwrap();

    // CSRs that must fail policy or authorization.
    let mut two_uris = empty_dn();
    two_uris.subject_alt_names = vec![
        SanType::URI(demo.to_string().try_into().unwrap()),
        SanType::URI(
            "spiffe://cluster.local/ns/kube-system/sa/admin"
                .try_into()
                .unwrap(),
        ),
    ];
    let mut dns = empty_dn();
    dns.subject_alt_names = vec![
        SanType::URI(demo.to_string().try_into().unwrap()),
        SanType::DnsName("demo.default.svc".try_into().unwrap()),
    ];
    let mut cn = empty_dn();
    cn.distinguished_name.push(DnType::CommonName, "demo");
    cn.custom_extensions
        .push(uri_san_extension(&demo.to_string(), false));
    let mut ca = empty_dn();
    ca.subject_alt_names = vec![SanType::URI(demo.to_string().try_into().unwrap())];
    // basicConstraints { cA TRUE }
    let mut bc =
        CustomExtension::from_oid_content(&[2, 5, 29, 19], vec![0x30, 0x03, 0x01, 0x01, 0xff]);
    bc.set_criticality(true);
    ca.custom_extensions.push(bc);
    let mut unknown_ext = empty_dn();
    unknown_ext.subject_alt_names = vec![SanType::URI(demo.to_string().try_into().unwrap())];
    unknown_ext
        .custom_extensions
        .push(CustomExtension::from_oid_content(
            &[1, 3, 6, 1, 4, 1, 99999, 1],
            vec![0x05, 0x00],
        ));
    let mut no_san = empty_dn();
    no_san.distinguished_name.push(DnType::OrganizationName, "");
    let legacy_opts = env.opts("default", "legacy");
    let oversized = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        "QUFB".repeat(5000)
    );
    let with_key = format!("{}{}", good(), p256().serialize_pem());

    use Code::*;
    let z = Shape::Ztunnel;
    let cases = vec![
        Case {
            name: "no token",
            shape: z,
            csr: good(),
            opts: with_token(None),
            code: Unauthenticated,
            message: "no bearer token",
        },
        Case {
            name: "whitespace token",
            shape: z,
            csr: good(),
            opts: with_token(Some("  ".into())),
            code: Unauthenticated,
            message: "no bearer token",
        },
        Case {
            name: "malformed token",
            shape: z,
            csr: good(),
            opts: with_token(Some("not.a.jwt".into())),
            code: Unauthenticated,
            message: "malformed",
        },
        Case {
            name: "bad signature",
            shape: z,
            csr: good(),
            opts: with_token(Some(bad_signature)),
            code: Unauthenticated,
            message: "signature is invalid",
        },
        Case {
            name: "unknown signing key",
            shape: z,
            csr: good(),
            opts: with_token(Some(unknown_key)),
            code: Unauthenticated,
            message: "unknown key",
        },
        Case {
            name: "wrong issuer",
            shape: z,
            csr: good(),
            opts: with_token(Some(other_issuer)),
            code: Unauthenticated,
            message: "issuer",
        },
        Case {
            name: "wrong audience",
            shape: z,
            csr: good(),
            opts: with_token(Some(wrong_audience)),
            code: Unauthenticated,
            message: "audience",
        },
        Case {
            name: "expired token",
            shape: z,
            csr: good(),
            opts: with_token(Some(expired)),
            code: Unauthenticated,
            message: "expired",
        },
        Case {
            name: "unknown clusterid",
            shape: z,
            csr: good(),
            opts: CallOptions {
                cluster_id: Some("cluster-b".into()),
                ..opts.clone()
            },
            code: Unauthenticated,
            message: "cluster \"cluster-b\"",
        },
        Case {
            name: "garbage CSR",
            shape: z,
            csr: "hello".into(),
            opts: opts.clone(),
            code: InvalidArgument,
            message: "no CERTIFICATE REQUEST block",
        },
        Case {
            name: "CSR with a forged signature",
            shape: z,
            csr: forge_signature(&good()),
            opts: opts.clone(),
            code: InvalidArgument,
            message: "self-signature does not verify",
        },
        Case {
            name: "CSR PEM carrying a private key",
            shape: z,
            csr: with_key,
            opts: opts.clone(),
            code: InvalidArgument,
            message: "private key",
        },
        Case {
            name: "SAN for another identity",
            shape: z,
            csr: client::generate_csr(z, &id("default", "other"))
                .unwrap()
                .csr_pem,
            opts: CallOptions {
                impersonate: Some(demo.to_string()),
                cert_signer: None,
                ..opts.clone()
            },
            code: PermissionDenied,
            message: "may not request a certificate for spiffe://cluster.local/ns/default/sa/other",
        },
        Case {
            name: "SAN in another trust domain",
            shape: z,
            csr: client::generate_csr(
                z,
                &"spiffe://evil.local/ns/default/sa/demo".parse().unwrap(),
            )
            .unwrap()
            .csr_pem,
            opts: CallOptions {
                impersonate: Some(demo.to_string()),
                cert_signer: None,
                ..opts.clone()
            },
            code: PermissionDenied,
            message: "spiffe://evil.local",
        },
        Case {
            name: "two URI SANs",
            shape: z,
            csr: csr_with(two_uris, &p256()),
            opts: opts.clone(),
            code: InvalidArgument,
            message: "exactly one URI SAN, found 2",
        },
        Case {
            name: "DNS SAN",
            shape: z,
            csr: csr_with(dns, &p256()),
            opts: opts.clone(),
            code: InvalidArgument,
            message: "SAN of type DNS",
        },
        Case {
            name: "no SAN",
            shape: z,
            csr: csr_with(no_san, &p256()),
            opts: opts.clone(),
            code: InvalidArgument,
            message: "no subjectAltName",
        },
        Case {
            name: "common name",
            shape: z,
            csr: csr_with(cn, &p256()),
            opts: opts.clone(),
            code: InvalidArgument,
            message: "common name",
        },
        Case {
            name: "CA:true",
            shape: z,
            csr: csr_with(ca, &p256()),
            opts: opts.clone(),
            code: InvalidArgument,
            message: "CA certificate",
        },
        Case {
            name: "unknown extension",
            shape: z,
            csr: csr_with(unknown_ext, &p256()),
            opts: opts.clone(),
            code: InvalidArgument,
            message: "extension 1.3.6.1.4.1.99999.1 is not allowed",
        },
        Case {
            name: "RSA-1024 key",
            shape: Shape::PilotAgent,
            csr: include_str!("fixtures/rsa1024.csr").into(),
            opts: legacy_opts.clone(),
            code: InvalidArgument,
            message: "RSA-1024 is not allowed",
        },
        Case {
            name: "SHA-1 signature",
            shape: Shape::PilotAgent,
            csr: include_str!("fixtures/sha1.csr").into(),
            opts: legacy_opts.clone(),
            code: InvalidArgument,
            message: "signature algorithm sha1WithRSAEncryption",
        },
        Case {
            name: "oversized CSR",
            shape: z,
            csr: oversized,
            opts: opts.clone(),
            code: InvalidArgument,
            message: "larger than the 16384-byte limit",
        },
        Case {
            name: "impersonating another identity",
            shape: z,
            csr: client::generate_csr(z, &id("default", "other"))
                .unwrap()
                .csr_pem,
            opts: CallOptions {
                impersonate: Some(id("default", "other").to_string()),
                cert_signer: None,
                ..opts.clone()
            },
            code: PermissionDenied,
            message: "may not impersonate spiffe://cluster.local/ns/default/sa/other",
        },
        Case {
            name: "impersonated identity that is not a SPIFFE ID",
            shape: z,
            csr: good(),
            opts: CallOptions {
                impersonate: Some("default/other".into()),
                cert_signer: None,
                ..opts.clone()
            },
            code: PermissionDenied,
            message: "not a workload SPIFFE ID",
        },
    ];

    let mut grpc = env.client().await;
    for case in &cases {
        let before = env.bao.sign_calls();
        let req = client::build_request(case.shape, &case.csr, &demo, &case.opts).unwrap();
        let status = grpc
            .create_certificate(req)
            .await
            .expect_err(&format!("{}: must be refused", case.name));
        assert_eq!(
            status.code(),
            case.code,
            "{}: {}",
            case.name,
            status.message()
        );
        assert!(
            status.message().contains(case.message),
            "{}: message {:?} lacks {:?}",
            case.name,
            status.message(),
            case.message
        );
        assert_eq!(
            env.bao.sign_calls(),
            before,
            "{}: Vault was called",
            case.name
        );
    }

    // The audit counter really counts: one legitimate request shows up as one sign call.
    assert_eq!(env.bao.sign_calls(), 0);
    env.request(Shape::Ztunnel, &demo, &opts)
        .await
        .expect("valid request is issued");
    assert_eq!(env.bao.sign_calls(), 1);
}

/// A token whose identity differs between `sub` and the `kubernetes.io` claims is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_token_claims_are_refused() {
    let env = Env::start().await;
    let mut claims = env.issuer.claims(&TokenSpec::new("default", "demo"));
    claims["sub"] = "system:serviceaccount:kube-system:admin".into();
    let token = env.issuer.sign(&claims).unwrap();
    let demo = id("default", "demo");
    let err = env
        .request(
            Shape::PilotAgent,
            &demo,
            &CallOptions {
                token: Some(token),
                ..env.opts("default", "demo")
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.message().contains("different service accounts"),
        "{}",
        err.message()
    );
    assert_eq!(env.bao.sign_calls(), 0);
}

/// Values a caller sends that come back in the status (clusterid, ImpersonatedIdentity) are
/// truncated, and refusals decided before the handler ran are counted by reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoed_values_are_truncated_and_early_refusals_counted() {
    let env = Env::start().await;
    let demo = id("default", "demo");
    let huge = "x".repeat(5000);
    let mut grpc = env.client().await;

    let kc = client::generate_csr(Shape::PilotAgent, &demo).unwrap();
    let opts = CallOptions {
        cluster_id: Some(huge.clone()),
        ..env.opts("default", "demo")
    };
    let req = client::build_request(Shape::PilotAgent, &kc.csr_pem, &demo, &opts).unwrap();
    let err = grpc.create_certificate(req).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.message().len() < 400 && err.message().contains('…'),
        "{}",
        err.message()
    );

    let z = client::generate_csr(Shape::Ztunnel, &demo).unwrap();
    let opts = CallOptions {
        impersonate: Some(format!("spiffe://{huge}")),
        cert_signer: None,
        ..env.opts("default", "demo")
    };
    let req = client::build_request(Shape::Ztunnel, &z.csr_pem, &demo, &opts).unwrap();
    let err = grpc.create_certificate(req).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().len() < 400 && err.message().contains('…'),
        "{}",
        err.message()
    );

    // Over the message limit (csr.max_bytes + 4 KiB): ResourceExhausted before decoding.
    let opts = env.opts("default", "demo");
    let req =
        client::build_request(Shape::PilotAgent, &"A".repeat(64 * 1024), &demo, &opts).unwrap();
    let err = grpc.create_certificate(req).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{}", err.message());
    assert!(
        err.message().contains("larger than 20480 bytes"),
        "{}",
        err.message()
    );

    let text = env.metrics().await;
    for (reason, code) in [
        ("authn", "UNAUTHENTICATED"),
        ("impersonation", "PERMISSION_DENIED"),
        ("message-too-large", "RESOURCE_EXHAUSTED"),
    ] {
        assert!(
            support::sample(
                &text,
                &format!("istio_vault_ca_refusals_total{{reason=\"{reason}\"}}")
            )
            .is_some_and(|n| n >= 1.0),
            "{reason} not counted\n{text}"
        );
        assert!(
            text.contains(&format!("code=\"{code}\"")),
            "{code} not counted\n{text}"
        );
    }
    assert_eq!(env.bao.sign_calls(), 0);
}
