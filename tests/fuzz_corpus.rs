//! Every seed (and every input a fuzzer saved) under `fuzz/corpus/<target>/` goes through its
//! target's body and oracle (`istio_vault_ca::fuzz`) in the ordinary test run, so what the
//! fuzzers found stays fixed without nightly Rust. No service is involved.
//!
//! `cargo test --test fuzz_corpus -- --ignored` rewrites the generated seeds (CSRs, tokens,
//! certificates of both client shapes) from the bundled client and development issuer.

use std::path::{Path, PathBuf};

use istio_vault_ca::client::{Shape, generate_csr};
use istio_vault_ca::dev::{DEFAULT_ISSUER, DevIssuer, TokenSpec};
use istio_vault_ca::fuzz;
use istio_vault_ca::identity::SpiffeId;

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// A fuzz target's body.
type Target = fn(&[u8]);

#[test]
fn every_corpus_input_passes_its_oracle() {
    let targets: [(&str, Target); 10] = [
        ("csr", fuzz::csr),
        ("csr_der", fuzz::csr_der),
        ("jwt", fuzz::jwt),
        ("identity", fuzz::identity),
        ("leaf", fuzz::leaf),
        ("pods", fuzz::pods),
        ("review_prefilter", fuzz::review_prefilter),
        ("routes", fuzz::routes),
        ("sign_answers", fuzz::sign_answers),
        ("watched_pod", fuzz::watched_pod),
    ];
    for (name, run) in targets {
        let mut n = 0;
        for entry in std::fs::read_dir(corpus(name)).unwrap() {
            let path = entry.unwrap().path();
            run(&std::fs::read(&path).unwrap());
            n += 1;
        }
        assert!(n >= 20, "{name}: only {n} corpus inputs");
    }
    // The positive paths run too: the genuine sign answer and signed seed claims are
    // accepted (their oracles then compare identities and keys).
    assert!(fuzz::leaf_accepted(&[]));
    // Target A takes a1's leaves at all three moments; target B takes b1's and b1sub's now
    // (b1 has expired by the later moments) and x's through its cross-signature at all three:
    // (2 x 3 + (4 + 2 x 3)) answers, each accepted twice (the second from the path cache).
    assert_eq!(fuzz::sign_answers_genuine(), 2 * (2 * 3 + 4 + 2 * 3));
    let accepted: usize = std::fs::read_dir(corpus("sign_answers"))
        .unwrap()
        .map(|e| fuzz::sign_answers_accepted(&std::fs::read(e.unwrap().path()).unwrap()))
        .sum();
    assert!(
        accepted > 0,
        "no sign_answers seed reaches an accepted chain"
    );
}

#[test]
#[ignore = "regenerates fuzz/corpus seeds"]
fn write_seed_corpora() {
    let write = |target: &str, name: &str, data: &[u8]| {
        std::fs::create_dir_all(corpus(target)).unwrap();
        std::fs::write(corpus(target).join(name), data).unwrap();
    };
    let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/demo".parse().unwrap();
    for (name, shape) in [
        ("pilot-agent", Shape::PilotAgent),
        ("ztunnel", Shape::Ztunnel),
    ] {
        write(
            "csr",
            name,
            generate_csr(shape, &id).unwrap().csr_pem.as_bytes(),
        );
    }
    // Both shapes for ten identities, as PEM (`csr`) and as DER (`csr_der`).
    for i in 0..10 {
        let other: SpiffeId = format!("spiffe://cluster.local/ns/ns-{i}/sa/sa{}", "x".repeat(i))
            .parse()
            .unwrap();
        for (name, shape) in [
            ("pilot-agent", Shape::PilotAgent),
            ("ztunnel", Shape::Ztunnel),
        ] {
            let pem = generate_csr(shape, &other).unwrap().csr_pem;
            write("csr", &format!("{name}-{i}"), pem.as_bytes());
            let der = pem::parse(&pem).unwrap().contents().to_vec();
            write("csr_der", &format!("{name}-{i}"), &der);
        }
    }
    for fixture in ["rsa1024.csr", "sha1.csr"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(fixture);
        write("csr", fixture, &std::fs::read(path).unwrap());
    }
    let issuer = DevIssuer::generate(DEFAULT_ISSUER).unwrap();
    let mut spec = TokenSpec::new("default", "demo");
    spec.pod = Some(("demo-1".into(), "uid-1".into(), "node-a".into()));
    let mut claims = issuer.claims(&spec);
    claims["exp"] = 4102444800u64.into();
    write(
        "jwt",
        "claims-pod-bound",
        &[&[1u8][..], claims.to_string().as_bytes()].concat(),
    );
    let sub_only = serde_json::json!({
        "iss": DEFAULT_ISSUER, "aud": ["istio-ca"], "exp": 4102444800u64,
        "sub": "system:serviceaccount:default:demo"
    });
    write(
        "jwt",
        "claims-sub-only",
        &[&[1u8][..], sub_only.to_string().as_bytes()].concat(),
    );
    let foreign = DevIssuer::generate(DEFAULT_ISSUER)
        .unwrap()
        .token(&spec)
        .unwrap();
    write(
        "jwt",
        "token-foreign-key",
        &[&[0u8][..], foreign.as_bytes()].concat(),
    );
    write("identity", "spiffe", id.to_string().as_bytes());
    write("identity", "spiffe-bad", b"spiffe://cluster.local/ns//sa/x");
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.subject_alt_names = vec![rcgen::SanType::URI(id.to_string().try_into().unwrap())];
    write("identity", "cert-der", p.self_signed(&key).unwrap().der());
    write("leaf", "genuine", b"");
    write("leaf", "edit-certificate", &[0, 60, b'X', 0, 200, b'A']);
    write("leaf", "edit-ca-chain", &[2, 0, b'"', 3, 0, b'-']);
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for seq in 0..20 {
        let bytes = fuzz::pseudo_random(&mut x, 120);
        write("pods", &format!("events-{seq}"), &bytes);
    }
    for i in 0..17 {
        let edit = fuzz::pseudo_random(&mut x, 3 * (1 + i % 3));
        write("leaf", &format!("edit-{i}"), &edit);
    }
    // sign_answers: sessions found by search, half with accepted calls, half without.
    let (mut with, mut without) = (0, 0);
    let mut y: u64 = 0x9E37_79B9_7F4A_7C15;
    while with < 12 || without < 12 {
        let len = 64 + (y % 448) as usize;
        let bytes = fuzz::pseudo_random(&mut y, len);
        if fuzz::sign_answers_accepted(&bytes) > 0 {
            if with < 12 {
                write("sign_answers", &format!("accepted-{with}"), &bytes);
                with += 1;
            }
        } else if without < 12 {
            write("sign_answers", &format!("refused-{without}"), &bytes);
            without += 1;
        }
    }
    for (i, (ns, sa)) in [("default", "demo"), ("kube-system", "admin"), ("a", "b")]
        .iter()
        .enumerate()
    {
        let mut spec = TokenSpec::new(ns, sa);
        if i == 0 {
            spec.audiences = vec!["other".into()];
        }
        let mut claims = issuer.claims(&spec);
        claims["exp"] = 4102444800u64.into();
        write(
            "jwt",
            &format!("claims-{ns}"),
            &[&[1u8][..], claims.to_string().as_bytes()].concat(),
        );
    }
    for (i, variant) in [
        serde_json::json!({"iss": DEFAULT_ISSUER, "aud": "istio-ca", "exp": 4102444800u64, "sub": "system:serviceaccount:x:y"}),
        serde_json::json!({"iss": DEFAULT_ISSUER, "aud": ["istio-ca"], "exp": 1, "sub": "system:serviceaccount:x:y"}),
        serde_json::json!({"iss": "https://evil", "aud": ["istio-ca"], "exp": 4102444800u64}),
        serde_json::json!({"iss": DEFAULT_ISSUER, "aud": ["istio-ca"], "exp": 4102444800u64, "nbf": 4102444000u64}),
        serde_json::json!({"iss": DEFAULT_ISSUER, "aud": ["istio-ca"], "exp": 4102444800u64, "kubernetes.io": {"namespace": "a", "serviceaccount": {"name": "b", "uid": "u"}}}),
        serde_json::json!({"iss": DEFAULT_ISSUER, "aud": ["istio-ca"], "exp": 4102444800u64, "kubernetes.io": {"namespace": "a"}}),
        serde_json::json!({"iss": DEFAULT_ISSUER, "aud": [], "exp": 4102444800u64}),
        serde_json::json!({"iss": DEFAULT_ISSUER, "aud": ["istio-ca"], "exp": "soon"}),
        serde_json::json!({"iss": DEFAULT_ISSUER, "aud": ["istio-ca"], "exp": 4102444800u64, "sub": "system:serviceaccount:a"}),
        serde_json::json!({"iss": DEFAULT_ISSUER, "aud": ["istio-ca"], "exp": 4102444800u64, "sub": "system:serviceaccount:A:b"}),
        serde_json::json!({}),
        serde_json::json!([1, 2]),
    ]
    .iter()
    .enumerate()
    {
        write("jwt", &format!("claims-variant-{i}"), &[&[1u8][..], variant.to_string().as_bytes()].concat());
    }
    write("jwt", "token-garbage", b"\0a.b.c");
    write(
        "jwt",
        "token-own-key",
        &[&[0u8][..], issuer.token(&spec).unwrap().as_bytes()].concat(),
    );
    for (i, text) in [
        "spiffe://cluster.local/ns/a/sa/b",
        "spiffe://other.domain/ns/a/sa/b",
        "spiffe://cluster.local/ns/a/sa/b/c",
        "spiffe://cluster.local/ns/a/sa/",
        "spiffe://cluster.local/sa/b/ns/a",
        "spiffe://Cluster.local/ns/a/sa/b",
        "spiffe://cluster.local/ns/a%2f/sa/b",
        "spiffe://cluster.local/ns/../sa/b",
        "spiffe://cluster.local:443/ns/a/sa/b",
        "spiffe://user@cluster.local/ns/a/sa/b",
        "SPIFFE://cluster.local/ns/a/sa/b",
        "spiffe://cluster.local/ns/a/sa/b?x=1",
        "spiffe://cluster.local/ns/a/sa/b#f",
        "spiffe:///ns/a/sa/b",
        "https://cluster.local/ns/a/sa/b",
        "spiffe://cluster.local/ns/a-very-long-namespace-name-that-goes-on/sa/b",
    ]
    .iter()
    .enumerate()
    {
        write("identity", &format!("spiffe-{i}"), text.as_bytes());
    }
    for (i, uri) in [
        "spiffe://other/ns/a/sa/b",
        "spiffe://cluster.local/ns/a/sa/b",
    ]
    .iter()
    .enumerate()
    {
        let mut p = rcgen::CertificateParams::default();
        p.subject_alt_names = vec![
            rcgen::SanType::URI((*uri).try_into().unwrap()),
            rcgen::SanType::DnsName("x.example".try_into().unwrap()),
        ];
        write(
            "identity",
            &format!("cert-der-{i}"),
            p.self_signed(&key).unwrap().der(),
        );
    }
    // TokenReview's pre-filter: tokens that pass and each way of failing.
    let b64 = |v: serde_json::Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let iss = "https://kubernetes.default.svc.cluster.local";
    let token = |header: serde_json::Value, claims: serde_json::Value, sig: &str| {
        format!("{}.{}.{sig}", b64(header), b64(claims))
    };
    let rs = serde_json::json!({"alg": "RS256", "kid": "k"});
    let review = [
        token(
            rs.clone(),
            serde_json::json!({"iss": iss, "exp": 4102444800u64}),
            "c2ln",
        ),
        token(
            rs.clone(),
            serde_json::json!({"iss": iss, "exp": 1_799_999_990u64}),
            "c2ln",
        ),
        token(
            rs.clone(),
            serde_json::json!({"iss": iss, "exp": 1_000}),
            "c2ln",
        ),
        token(rs.clone(), serde_json::json!({"iss": iss}), "c2ln"),
        token(
            rs.clone(),
            serde_json::json!({"iss": iss, "exp": "x"}),
            "c2ln",
        ),
        token(
            rs.clone(),
            serde_json::json!({"iss": "https://evil", "exp": 4102444800u64}),
            "c2ln",
        ),
        token(
            rs.clone(),
            serde_json::json!({"exp": 4102444800u64}),
            "c2ln",
        ),
        token(
            rs.clone(),
            serde_json::json!({"iss": iss, "exp": 4102444800u64}),
            "",
        ),
        token(
            serde_json::json!({"alg": "none"}),
            serde_json::json!({"iss": iss, "exp": 4102444800u64}),
            "c2ln",
        ),
        token(
            serde_json::json!({"alg": "HS256"}),
            serde_json::json!({"iss": iss, "exp": 4102444800u64}),
            "c2ln",
        ),
        token(
            serde_json::json!({"alg": "ES256"}),
            serde_json::json!({"iss": iss, "exp": 4102444800u64}),
            "c2ln",
        ),
        token(
            serde_json::json!({}),
            serde_json::json!({"iss": iss, "exp": 4102444800u64}),
            "c2ln",
        ),
        token(
            rs.clone(),
            serde_json::json!({"iss": iss, "exp": 4102444800u64, "pad": "x".repeat(4000)}),
            "c2ln",
        ),
        token(rs.clone(), serde_json::json!([iss]), "c2ln"),
        format!(
            "{}.{}",
            b64(rs.clone()),
            b64(serde_json::json!({"iss": iss}))
        ),
        format!(
            "{}.{}.c2ln.extra",
            b64(rs.clone()),
            b64(serde_json::json!({"iss": iss, "exp": 4102444800u64}))
        ),
        "not-a-jwt".into(),
        "a.b.c".into(),
        "..".into(),
        format!("{}.%%%.c2ln", b64(rs.clone())),
    ];
    for (i, t) in review.iter().enumerate() {
        write("review_prefilter", &format!("token-{i}"), t.as_bytes());
    }
    // Route choice: namespace, service account, signer and a pattern for the glob check.
    for (i, (ns, sa, signer, pattern)) in [
        ("payments", "api", "", "pay*"),
        ("payments", "api", "high-assurance", "*ments"),
        ("payments", "front", "any-ns", "p*y*s"),
        ("pay-x-eu", "api", "", "pay*-eu"),
        ("pay-eu", "front-1", "high-assurance", "pay*-eu"),
        ("default", "front", "high-assurance", "*"),
        ("default", "back", "high-assurance", "**"),
        ("default", "api", "any-ns", "d*f*t"),
        ("default", "api", "nope", ""),
        ("default", "api", "", "default"),
        ("shop", "api", "", "shop*"),
        ("shop-old", "api", "", "shop*"),
        ("shop-new", "api", "", "shop*"),
        ("shopping", "front", "", "*op*"),
        ("shop-new", "api", "any-ns", "*-new"),
        ("a", "b", "", "a*b"),
        ("aaa", "b", "", "a*a*a"),
        ("abc", "b", "", "a*c*"),
        ("Payments", "api", "", "P*"),
        ("payments", "", "", "*"),
    ]
    .iter()
    .enumerate()
    {
        write(
            "routes",
            &format!("route-{i}"),
            format!("{ns}\0{sa}\0{signer}\0{pattern}").as_bytes(),
        );
    }
    // Pods as the API server sends them, and what the slim type must agree on.
    let pod = |i: usize| -> serde_json::Value {
        let mut pod = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("pod-{i}"), "namespace": "default", "uid": format!("uid-{i}"), "resourceVersion": "1"},
            "spec": {"serviceAccountName": "sa", "nodeName": "node-a", "containers": [{"name": "app", "image": "app"}]},
            "status": {"phase": "Running"}
        });
        match i % 10 {
            1 => {
                pod["metadata"]["annotations"] =
                    serde_json::json!({"kubernetes.io/config.mirror": "x"})
            }
            2 => pod["status"]["phase"] = "Succeeded".into(),
            3 => {
                pod.as_object_mut().unwrap().remove("spec");
            }
            4 => {
                pod["spec"].as_object_mut().unwrap().remove("nodeName");
            }
            5 => pod["metadata"]["annotations"] = serde_json::json!({"other": "y"}),
            6 => {
                pod.as_object_mut().unwrap().remove("status");
            }
            7 => pod["spec"]["serviceAccountName"] = serde_json::Value::Null,
            8 => {
                pod["metadata"]["managedFields"] =
                    serde_json::json!([{"manager": "kubelet", "fieldsV1": {"f:status": {}}}])
            }
            9 => {
                pod["spec"]["containers"][0]["env"] =
                    serde_json::json!([{"name": "A", "value": "x".repeat(200)}])
            }
            _ => {}
        }
        pod
    };
    for i in 0..20 {
        write(
            "watched_pod",
            &format!("pod-{i}"),
            pod(i).to_string().as_bytes(),
        );
    }
}
