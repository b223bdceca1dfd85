//! TokenReview authentication end to end: real OpenBao, real TLS, and the `kube` client
//! talking to a small loopback HTTP server that speaks the real `authentication.k8s.io/v1`
//! TokenReview JSON (no Kubernetes API server can be installed here), reached through a
//! kubeconfig exactly as in production.

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

/// A service-account-shaped JWT named `name` (the fake API server judges it by its text; the
/// signer only checks its shape before asking).
fn jwt(name: &str) -> String {
    jwt_with(
        json!({"alg": "RS256", "kid": "k1"}),
        json!({"iss": "https://kubernetes.default.svc.cluster.local", "sub": name, "exp": 4102444800u64}),
    )
}

fn jwt_with(header: Value, claims: Value) -> String {
    use base64::Engine;
    let b64 = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    };
    format!("{}.{}.c2lnbmF0dXJl", b64(&header), b64(&claims))
}

/// What the fake API server answers for each token, and how many reviews it served.
#[derive(Clone, Default)]
struct FakeApi {
    users: Arc<Mutex<HashMap<String, Value>>>,
    /// Tokens the API server says are valid for other audiences only.
    foreign: Arc<Mutex<Vec<String>>>,
    reviews: Arc<AtomicUsize>,
}

impl FakeApi {
    /// The token `jwt(name)` authenticates as `username` in `groups`, bound to a pod.
    fn allow(&self, name: &str, username: &str, groups: &[&str]) {
        self.users.lock().unwrap().insert(
            jwt(name),
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
                    let foreign = api.foreign.lock().unwrap().iter().any(|t| t == token);
                    let status = match api.users.lock().unwrap().get(token) {
                        Some(user) if foreign => json!({"authenticated": true, "user": user, "audiences": ["other"]}),
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
    env_with_review(api, |r| r.cache_max_age = max_age).await
}

async fn env_with_review(
    api: &FakeApi,
    customize: impl FnOnce(&mut istio_vault_ca::config::TokenReviewConfig),
) -> Env {
    let server = api.start().await;
    let dir = tempfile::tempdir().unwrap();
    let kc = support::kubeconfig(dir.path(), "kubeconfig", &server);
    let env = Env::start_with(|c| {
        let mut review = istio_vault_ca::config::TokenReviewConfig {
            kubeconfig: Some(kc.clone()),
            audiences: vec!["istio-ca".into()],
            ..Default::default()
        };
        customize(&mut review);
        c.auth.token_review = Some(review);
    })
    .await;
    std::mem::forget(dir); // the kubeconfig is read at start-up only
    env
}

/// Call options carrying `jwt(name)`.
fn with_token(env: &Env, name: &str) -> CallOptions {
    with_raw_token(env, &jwt(name))
}

fn with_raw_token(env: &Env, token: &str) -> CallOptions {
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

/// Garbage never reaches the API server: tokens that are not plausible service-account JWTs
/// are refused before any review, a refused token is not asked about again for a while, and
/// reviews are rate-limited. The API server must confirm our audience.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_tokens_do_not_reach_the_api_server() {
    let api = FakeApi::default();
    api.allow(
        "foreign-audience",
        "system:serviceaccount:default:demo",
        &["system:serviceaccounts"],
    );
    api.foreign.lock().unwrap().push(jwt("foreign-audience"));
    let env = env_with_review(&api, |r| {
        r.issuers = vec!["https://kubernetes.default.svc.cluster.local".into()];
        r.max_reviews_per_second = 1;
    })
    .await;
    let demo = id("default", "demo");
    let iss = "https://kubernetes.default.svc.cluster.local";
    let garbage = [
        ("opaque", "not-a-jwt".to_owned()),
        ("huge", jwt(&"x".repeat(5000))),
        (
            "alg none",
            jwt_with(json!({"alg": "none"}), json!({"iss": iss})),
        ),
        (
            "HMAC",
            jwt_with(json!({"alg": "HS256"}), json!({"iss": iss})),
        ),
        (
            "expired",
            jwt_with(
                json!({"alg": "RS256"}),
                json!({"iss": iss, "exp": 1_000_000}),
            ),
        ),
        (
            "foreign issuer",
            jwt_with(
                json!({"alg": "RS256"}),
                json!({"iss": "https://evil.example"}),
            ),
        ),
        (
            "no issuer",
            jwt_with(json!({"alg": "RS256"}), json!({"sub": "x"})),
        ),
        (
            "no exp",
            jwt_with(json!({"alg": "RS256"}), json!({"iss": iss, "sub": "x"})),
        ),
    ];
    for (what, token) in &garbage {
        let err = env
            .request(Shape::PilotAgent, &demo, &with_raw_token(&env, token))
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Code::Unauthenticated,
            "{what}: {}",
            err.message()
        );
    }
    assert_eq!(
        api.reviews.load(Ordering::SeqCst),
        0,
        "garbage was reviewed"
    );

    // Valid for another audience only: refused.
    let err = env
        .request(
            Shape::PilotAgent,
            &demo,
            &with_token(&env, "foreign-audience"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{}", err.message());
    assert!(err.message().contains("audience"), "{}", err.message());
    assert_eq!(api.reviews.load(Ordering::SeqCst), 1);

    // A refused token is not reviewed again while it is remembered.
    for _ in 0..3 {
        let err = env
            .request(Shape::PilotAgent, &demo, &with_token(&env, "unknown"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{}", err.message());
    }
    assert_eq!(api.reviews.load(Ordering::SeqCst), 2);

    // Distinct unknown tokens beyond the rate (1/s, burst 2, two already spent): Unavailable
    // without an API call.
    let mut throttled = 0;
    for i in 0..6 {
        let err = env
            .request(
                Shape::PilotAgent,
                &demo,
                &with_token(&env, &format!("new-{i}")),
            )
            .await
            .unwrap_err();
        if err.code() == Code::Unavailable {
            assert!(err.message().contains("retry later"), "{}", err.message());
            throttled += 1;
        }
    }
    assert!(throttled >= 3, "only {throttled} throttled");
    assert!(api.reviews.load(Ordering::SeqCst) <= 2 + 3);
    assert_eq!(env.bao.sign_calls(), 0);
}

/// TokenReview budgets are per source: 16 concurrent streams of unique, well-formed but false
/// tokens from 127.0.0.2 (each reviewed and refused by the API server, so neither the
/// pre-filter nor the refusal cache stops them) spend that address's budget only, while a
/// workload on 127.0.0.1 presenting a fresh real token every 100 ms (plus its call) is issued 60 of 60.
/// Without the per-source budget the flood (hundreds of calls a second) spends the cluster's
/// 100/s and the real tokens get `Unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn false_tokens_from_one_address_do_not_starve_real_ones() {
    use std::sync::atomic::AtomicBool;
    const REAL: usize = 60;
    let api = FakeApi::default();
    for i in 0..REAL {
        api.allow(
            &format!("real-{i}"),
            "system:serviceaccount:default:demo",
            &["system:serviceaccounts"],
        );
    }
    let env = env_with(&api, Duration::from_secs(30)).await;
    let demo = id("default", "demo");

    let attacker = tonic::transport::Endpoint::from_shared(format!("https://{}", env.addr))
        .unwrap()
        .local_address(Some("127.0.0.2".parse().unwrap()))
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&env.ca_pem))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
    let kc = istio_vault_ca::client::generate_csr(Shape::PilotAgent, &demo).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, throttled) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut flood = Vec::new();
    for stream in 0..16 {
        let mut client =
            istio_vault_ca::pb::istio_certificate_service_client::IstioCertificateServiceClient::new(
                attacker.clone(),
            );
        let (stop, sent, throttled) = (stop.clone(), sent.clone(), throttled.clone());
        let csr = kc.csr_pem.clone();
        let demo = demo.clone();
        let env_opts = env.opts("default", "demo");
        flood.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let opts = CallOptions {
                    token: Some(jwt(&format!("false-{stream}-{n}"))),
                    ..env_opts.clone()
                };
                let req =
                    istio_vault_ca::client::build_request(Shape::PilotAgent, &csr, &demo, &opts)
                        .unwrap();
                let status = client.create_certificate(req).await.unwrap_err();
                sent.fetch_add(1, Ordering::Relaxed);
                if status.code() == Code::Unavailable {
                    throttled.fetch_add(1, Ordering::Relaxed);
                } else {
                    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = std::time::Instant::now();
    let mut issued = 0;
    let mut refusals = Vec::new();
    for i in 0..REAL {
        match env
            .request(
                Shape::PilotAgent,
                &demo,
                &with_token(&env, &format!("real-{i}")),
            )
            .await
        {
            Ok(_) => issued += 1,
            Err(s) => refusals.push(format!("{:?}: {}", s.code(), s.message())),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = started.elapsed().as_secs_f64() + 1.0;
    stop.store(true, Ordering::Relaxed);
    for task in flood {
        task.await.unwrap();
    }
    let (sent, throttled) = (
        sent.load(Ordering::Relaxed),
        throttled.load(Ordering::Relaxed),
    );
    let reviews = api.reviews.load(Ordering::SeqCst);
    eprintln!(
        "flood: {sent} calls in {took:.1} s, {throttled} throttled; {reviews} reviews; real: {issued}/{REAL}"
    );
    assert_eq!(
        issued,
        REAL,
        "real tokens refused, first: {:?}",
        refusals.first()
    );
    assert!(
        sent as f64 > 5.0 * 100.0 / 5.0,
        "the flood ran ({sent} calls)"
    );
    // The attacker's reviews: its burst (10) plus 5/s, the real ones one each.
    let bound = 10.0 + 5.0 * took + REAL as f64 + 5.0;
    assert!(
        (reviews as f64) <= bound,
        "{reviews} reviews > {bound:.0}: the flood spent more than its source's budget"
    );
}
