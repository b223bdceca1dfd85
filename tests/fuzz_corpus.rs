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
    let targets: [(&str, Target); 5] = [
        ("csr", fuzz::csr),
        ("jwt", fuzz::jwt),
        ("identity", fuzz::identity),
        ("leaf", fuzz::leaf),
        ("pods", fuzz::pods),
    ];
    for (name, run) in targets {
        let mut n = 0;
        for entry in std::fs::read_dir(corpus(name)).unwrap() {
            let path = entry.unwrap().path();
            run(&std::fs::read(&path).unwrap());
            n += 1;
        }
        assert!(n >= 2, "{name}: only {n} corpus inputs");
    }
    // The positive paths run too: the genuine sign answer and signed seed claims are
    // accepted (their oracles then compare identities and keys).
    assert!(fuzz::leaf_accepted(&[]));
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
    for seq in 0..3 {
        let bytes = fuzz::pseudo_random(&mut x, 120);
        write("pods", &format!("events-{seq}"), &bytes);
    }
}
