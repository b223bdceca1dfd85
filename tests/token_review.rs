//! TokenReview authentication end to end: real OpenBao, real TLS, and the `kube` client
//! talking to a small loopback HTTP server that speaks the real `authentication.k8s.io/v1`
//! TokenReview JSON (no Kubernetes API server can be installed here), reached through a
//! kubeconfig exactly as in production.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::routing::post;
use istio_vault_ca::client::{CallOptions, Shape};
use serde_json::{Value, json};
use support::{Env, id, sample};
use tonic::Code;

/// What the fake API server answers for each token, and how many reviews it served.
#[derive(Clone, Default)]
struct FakeApi {
    users: Arc<Mutex<HashMap<String, Value>>>,
    reviews: Arc<AtomicUsize>,
}

impl FakeApi {
    /// `token` authenticates as `username` in `groups`, bound to a pod.
    fn allow(&self, token: &str, username: &str, groups: &[&str]) {
        self.users.lock().unwrap().insert(
            token.to_owned(),
            json!({
                "username": username,
                "uid": "0000-1111",
                "groups": groups,
                "extra": {
                    "authentication.kubernetes.io/pod-name": ["app-7d9f"],
                    "authentication.kubernetes.io/pod-uid": ["pod-uid-1"],
                    "authentication.kubernetes.io/node-name": ["node-a"]
                }
            }),
        );
    }

    async fn start(&self) -> String {
        let api = self.clone();
        let app = axum::Router::new().route(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            post(move |Json(review): Json<Value>| {
                let api = api.clone();
                async move {
                    api.reviews.fetch_add(1, Ordering::SeqCst);
                    let token = review["spec"]["token"].as_str().unwrap_or_default();
                    let audiences_ok = review["spec"]["audiences"] == json!(["istio-ca"]);
                    let status = match api.users.lock().unwrap().get(token) {
                        Some(user) if audiences_ok => json!({"authenticated": true, "user": user, "audiences": ["istio-ca"]}),
                        _ => json!({"authenticated": false, "error": "[invalid bearer token, token lookup failed]"}),
                    };
                    Json(json!({
                        "kind": "TokenReview",
                        "apiVersion": "authentication.k8s.io/v1",
                        "metadata": {"creationTimestamp": null},
                        "spec": review["spec"],
                        "status": status
                    }))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}")
    }
}

async fn env_with(api: &FakeApi, max_age: Duration) -> Env {
    let server = api.start().await;
    let dir = tempfile::tempdir().unwrap();
    let kc = support::kubeconfig(dir.path(), "kubeconfig", &server);
    let env = Env::start_with(|c| {
        c.auth.token_review = Some(istio_vault_ca::config::TokenReviewConfig {
            kubeconfig: Some(kc.clone()),
            audiences: vec!["istio-ca".into()],
            cache_max_age: max_age,
        });
    })
    .await;
    std::mem::forget(dir); // the kubeconfig is read at start-up only
    env
}

fn with_token(env: &Env, token: &str) -> CallOptions {
    CallOptions {
        token: Some(token.into()),
        ..env.opts("default", "demo")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviewed_tokens_are_cached_briefly() {
    let api = FakeApi::default();
    api.allow(
        "opaque-token-1",
        "system:serviceaccount:default:demo",
        &[
            "system:serviceaccounts",
            "system:serviceaccounts:default",
            "system:authenticated",
        ],
    );
    let env = env_with(&api, Duration::from_millis(500)).await;
    let demo = id("default", "demo");

    env.request(
        Shape::PilotAgent,
        &demo,
        &with_token(&env, "opaque-token-1"),
    )
    .await
    .expect("issued");
    env.request(Shape::Ztunnel, &demo, &with_token(&env, "opaque-token-1"))
        .await
        .expect("issued");
    assert_eq!(
        api.reviews.load(Ordering::SeqCst),
        1,
        "a repeated token triggers no second TokenReview"
    );

    // After the (short) cache age the token is reviewed again: a revocation takes effect.
    tokio::time::sleep(Duration::from_millis(600)).await;
    api.users.lock().unwrap().clear();
    let err = env
        .request(Shape::Ztunnel, &demo, &with_token(&env, "opaque-token-1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{}", err.message());
    assert!(
        err.message().contains("token lookup failed"),
        "{}",
        err.message()
    );
    assert_eq!(api.reviews.load(Ordering::SeqCst), 2);
    assert_eq!(env.bao.sign_calls(), 2);

    // Both reviews were timed, by cluster and result (other tests of this binary share the
    // process-wide recorder, hence lower bounds).
    let text = env.metrics().await;
    for result in ["authenticated", "rejected"] {
        let series = format!(
            "istio_vault_ca_token_review_duration_seconds_count{{cluster=\"Kubernetes\",result=\"{result}\"}}"
        );
        let count = sample(&text, &series).unwrap_or_else(|| panic!("no {series} in:\n{text}"));
        assert!(count >= 1.0, "{series} = {count}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_refusals() {
    let api = FakeApi::default();
    api.allow("user-token", "alice", &["system:authenticated"]);
    api.allow(
        "other-sa",
        "system:serviceaccount:default:other",
        &["system:serviceaccounts"],
    );
    let env = env_with(&api, Duration::from_secs(30)).await;
    let demo = id("default", "demo");
    for (token, code, message) in [
        (
            "unknown-token",
            Code::Unauthenticated,
            "did not authenticate",
        ),
        ("user-token", Code::Unauthenticated, "not a service account"),
        (
            "other-sa",
            Code::PermissionDenied,
            "may not request a certificate for spiffe://cluster.local/ns/default/sa/demo",
        ),
    ] {
        let err = env
            .request(Shape::PilotAgent, &demo, &with_token(&env, token))
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{token}: {}", err.message());
        assert!(
            err.message().contains(message),
            "{token}: {}",
            err.message()
        );
    }
    assert_eq!(env.bao.sign_calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_down_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens there.
    let port = support::free_port_pair();
    let kc = support::kubeconfig(
        dir.path(),
        "kubeconfig",
        &format!("http://127.0.0.1:{port}"),
    );
    let env = Env::start_with(|c| {
        c.auth.token_review = Some(istio_vault_ca::config::TokenReviewConfig {
            kubeconfig: Some(kc.clone()),
            ..Default::default()
        });
    })
    .await;
    let err = env
        .request(
            Shape::PilotAgent,
            &id("default", "demo"),
            &with_token(&env, "t"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
    assert_eq!(env.bao.sign_calls(), 0);
    let text = env.metrics().await;
    let series = "istio_vault_ca_token_review_duration_seconds_count{cluster=\"Kubernetes\",result=\"unavailable\"}";
    assert!(
        sample(&text, series).is_some_and(|n| n >= 1.0),
        "no {series} in:\n{text}"
    );
}
