//! Readiness: `/readyz` and the gRPC health service say SERVING only while the signer can
//! sign (valid Vault token, trust bundle, serving certificate). A signer started while
//! OpenBao is down is alive but not ready, and becomes ready by itself when OpenBao returns.

use std::time::Duration;

use support::{Env, OpenBao, eventually};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn readyz(env: &Env) -> (u16, String) {
    env.admin("/readyz").await
}

async fn grpc_health(env: &Env) -> ServingStatus {
    let channel = istio_vault_ca::client::channel(&env.addr, &env.ca_pem, Some("localhost"))
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let resp = health
        .check(HealthCheckRequest {
            service: "istio.v1.auth.IstioCertificateService".into(),
        })
        .await
        .unwrap();
    ServingStatus::try_from(resp.into_inner().status).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_only_while_vault_can_be_used() {
    let mut bao = OpenBao::start_persistent().await;
    let setup = bao.setup(&[]);
    bao.stop();
    let mut env = Env::with_bao(bao, setup.clone(), |c| {
        c.bundle.file = Some(setup.join("tls/root-cert.pem"));
        c.vault.timeout = Duration::from_millis(500);
    })
    .await;
    let (healthz, _) = env.admin("/healthz").await;
    assert_eq!(healthz, 200, "alive even without Vault");
    let (code, body) = readyz(&env).await;
    assert_eq!(code, 503);
    assert!(body.contains("no valid Vault token"), "{body}");
    eventually("gRPC health NOT_SERVING", async || {
        grpc_health(&env).await == ServingStatus::NotServing
    })
    .await;

    env.bao.restart().await;
    eventually("ready after Vault returns", async || {
        readyz(&env).await.0 == 200
    })
    .await;
    eventually("gRPC health SERVING", async || {
        grpc_health(&env).await == ServingStatus::Serving
    })
    .await;
}
