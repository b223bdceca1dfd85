//! istio-vault-ca: an Istio certificate authority (`istio.v1.auth.IstioCertificateService`)
//! that has a Vault or OpenBao PKI role sign every workload certificate.
//!
//! Request path: [`server`] (port limits, admission gate, gRPC, status codes, request log) → [`signer`] (the pipeline) →
//! [`authn`] (who is calling) → [`authz`] (which identity it may have) → [`csr`] (what is asked) → [`vault`] (signing) → [`chain`]
//! (verify what Vault issued, lay out the response) with roots from [`bundle`].
//! [`app`] wires it together; [`tls`] serves it; [`client`] and [`dev`] are the bundled client
//! and the development token issuer.

pub mod admin;
pub mod app;
pub mod authn;
pub mod authz;
pub mod backoff;
pub mod bundle;
pub mod cache;
pub mod cert_pair;
pub mod chain;
pub mod client;
pub mod cluster_trust_bundle;
pub mod config;
pub mod cpu_time;
pub mod crl;
pub mod crl_set;
pub mod csr;
pub mod dev;
pub mod distribute;
pub mod echo;
pub mod fingerprint;
#[doc(hidden)]
pub mod fuzz;
pub mod holders;
pub mod http_policy;
pub mod identity;
pub mod issuance_limits;
pub mod istiod_cert;
pub mod kube_watch;
pub mod kv_path;
pub mod leader;
pub mod ledger;
pub mod loadgen;
pub mod metrics;
pub mod namespaces;
pub mod nodes;
pub mod pem_text;
pub mod periodic;
pub mod rate;
pub mod revocation;
pub mod routing;
pub mod selector;
pub mod serial;
pub mod server;
pub mod signer;
pub mod telemetry;
pub mod time;
pub mod tls;
pub mod ttl;
pub mod vault;
pub mod worker;
pub mod workload;

/// Code generated from `proto/security/v1alpha1/ca.proto`.
#[allow(clippy::doc_lazy_continuation)]
pub mod pb {
    tonic::include_proto!("istio.v1.auth");
}

/// Installs aws-lc-rs as the process-wide rustls provider. Call once at start-up.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Every HTTP client (Vault, JWKS, load generator) starts here: reqwest is built without a
/// provider of its own (its `rustls` feature drags quinn and a second crypto stack into the
/// lock file), so the process provider must exist before a client is built.
pub fn http_client() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder()
}

/// Writes a file only its owner can read (mode 0600 from creation, never world-readable in
/// between): private keys written by the bundled client and the development issuer.
pub fn write_private_file(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| path.display().to_string())?;
    f.write_all(text.as_bytes())
        .with_context(|| path.display().to_string())
}

/// SHA-256 of `parts` fed in order: cache keys for credentials, CSR and bundle digests.
pub fn sha256(parts: &[&[u8]]) -> cache::Digest {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in parts {
        ctx.update(part);
    }
    ctx.finish()
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

/// A Kubernetes client from `kubeconfig`, or in-cluster / `$KUBECONFIG` configuration: for
/// TokenReview, pod caches and trust distribution.
pub async fn kube_client(kubeconfig: Option<&std::path::Path>) -> Result<kube::Client, String> {
    install_crypto_provider();
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| e.to_string())?
        }
        None => kube::Config::infer().await.map_err(|e| e.to_string())?,
    };
    kube::Client::try_from(config).map_err(|e| e.to_string())
}
