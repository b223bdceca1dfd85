//! The signer follows rotation of the files behind its TLS to Vault (`vault.ca_file`,
//! `vault.client_cert_file` / `client_key_file`) without a restart, and never puts a
//! half-written rotation in service.
//!
//! Real: OpenBao with a listener that requires client certificates (test PKI made with
//! rcgen), the signer in-process over real TLS, a pilot-agent-shaped gRPC client. Rotations
//! are plain file writes, as the kubelet updating a mounted Secret does.

use std::path::Path;
use std::time::Duration;

use istio_vault_ca::client::Shape;
use support::{Env, OpenBao, TestCa, eventually_some, id, now_unix, sample};
use tonic::Code;

/// One pilot-agent request: `Ok` when a certificate was issued, else the status code.
async fn issue(env: &Env) -> Result<(), Code> {
    env.request(
        Shape::PilotAgent,
        &id("default", "demo"),
        &env.opts("default", "demo"),
    )
    .await
    .map(drop)
    .map_err(|s| s.code())
}

/// Issues while several reload periods pass: what is in use stays in use.
async fn keeps_issuing(env: &Env, why: &str) {
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        issue(env)
            .await
            .unwrap_or_else(|code| panic!("{why}: {code:?}"));
    }
}

/// Waits until a request fails (a reload put the new files in service) and returns its code.
async fn first_refusal(env: &Env, what: &str) -> Code {
    eventually_some(what, async || issue(env).await.err()).await
}

fn write_pair(cert_path: &Path, key_path: &Path, (cert, key): &(String, String)) {
    std::fs::write(cert_path, cert).unwrap();
    std::fs::write(key_path, key).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_client_certificate_and_ca_bundle_are_used_without_a_restart() {
    let (bao, mtls) = OpenBao::start_mutual_tls().await;
    let setup = bao.setup(&[]);
    // The signer's own copies of the files: the listener reads `mtls.ca_file` too.
    let files = tempfile::tempdir().unwrap();
    let (ca, cert, key) = (
        files.path().join("vault-ca.pem"),
        files.path().join("tls.crt"),
        files.path().join("tls.key"),
    );
    std::fs::copy(&mtls.ca_file, &ca).unwrap();
    std::fs::copy(&mtls.client_cert, &cert).unwrap();
    std::fs::copy(&mtls.client_key, &key).unwrap();
    let env = Env::with_bao(bao, setup, |c| {
        mtls.configure(c);
        c.vault.ca_file = Some(ca.clone());
        c.vault.client_cert_file = Some(cert.clone());
        c.vault.client_key_file = Some(key.clone());
        c.vault.tls_reload_interval = Duration::from_millis(100);
        c.vault.retries = 0;
    })
    .await;
    issue(&env)
        .await
        .expect("issued with the first client certificate");

    let expiry = async || {
        let metrics = env.metrics().await;
        sample(
            &metrics,
            "istio_vault_ca_vault_client_certificate_expiry_timestamp_seconds",
        )
    };
    assert!(
        expiry().await.is_some_and(|t| t > now_unix() as f64),
        "the client certificate's NotAfter is exported"
    );

    // Half-written rotations are never put in service: a renewed certificate beside the old
    // key, then an emptied CA bundle.
    let renewed_until = now_unix() + 30 * 86_400;
    let renewed = mtls.ca.client_pair_until(renewed_until);
    std::fs::write(&cert, &renewed.0).unwrap();
    keeps_issuing(
        &env,
        "a certificate whose key is not there yet was put in service",
    )
    .await;
    std::fs::write(&cert, std::fs::read(&mtls.client_cert).unwrap()).unwrap();
    std::fs::write(&ca, "").unwrap();
    keeps_issuing(&env, "an empty CA bundle was put in service").await;
    std::fs::copy(&mtls.ca_file, &ca).unwrap();

    // A complete pair from a CA the listener does not trust: once reloaded, it is what new
    // connections present, and Vault refuses them.
    let stranger = TestCa::new();
    write_pair(&cert, &key, &stranger.client_pair());
    let code = first_refusal(&env, "the stranger's certificate is presented").await;
    assert_eq!(code, Code::Unavailable);

    // The renewed pair from the listener's CA: issuing again, no restart.
    write_pair(&cert, &key, &renewed);
    eventually_some("the renewed certificate is presented", async || {
        issue(&env).await.ok()
    })
    .await;
    assert_eq!(
        expiry().await,
        Some(renewed_until as f64),
        "the gauge follows the certificate in use"
    );

    // Vault's CA bundle replaced by one without the listener's CA: refused ...
    std::fs::write(&ca, stranger.pem()).unwrap();
    let code = first_refusal(&env, "the new CA bundle is used").await;
    assert_eq!(code, Code::Unavailable);
    // ... and a bundle holding both CAs, as while Vault's CA rotates: issuing again.
    std::fs::write(&ca, format!("{}{}", stranger.pem(), mtls.ca.pem())).unwrap();
    eventually_some("the two-CA bundle is used", async || issue(&env).await.ok()).await;
}
