//! How the signer's Vault client treats what a Vault address answers beyond Vault's API: a
//! redirect to another origin (or to cleartext) and an answer too large to hold.
//!
//! Real: the signer's `VaultClient` (reqwest, the crate's HTTP rules) and real HTTP over
//! loopback. Fake: the "Vault" is a loopback HTTP server (axum), since OpenBao cannot be made
//! to redirect a sign call elsewhere or to answer one with 100 MiB; the "elsewhere" is a second
//! server on another loopback address that records what reaches it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use istio_vault_ca::config::{VaultAddrs, VaultConfig};
use istio_vault_ca::identity::SpiffeId;
use istio_vault_ca::vault::{Credentials, VaultClient, VaultError};

const TOKEN: &str = "s.signer-token-never-elsewhere";

/// Requests one server received: (method, path, carried the Vault token, body).
type Seen = Arc<std::sync::Mutex<Vec<(String, String, bool, String)>>>;

/// Serves `answer` for every request on `host:0`; returns its base URL and what it saw.
async fn serve(
    host: &str,
    answer: impl Fn(&Uri) -> Response + Clone + Send + Sync + 'static,
) -> (String, Seen) {
    let listener = tokio::net::TcpListener::bind((host, 0)).await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let app = axum::Router::new().fallback(
        move |method: axum::http::Method, uri: Uri, headers: HeaderMap, body: String| {
            let answer = answer.clone();
            let log = log.clone();
            async move {
                log.lock().unwrap().push((
                    method.to_string(),
                    uri.path().to_owned(),
                    headers.get("x-vault-token").is_some(),
                    body,
                ));
                answer(&uri)
            }
        },
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, seen)
}

fn redirect(to: String) -> Response {
    Response::builder()
        .status(StatusCode::TEMPORARY_REDIRECT)
        .header("location", to)
        .body(Body::empty())
        .unwrap()
}

/// A client for the fake Vault at `addr`, holding [`TOKEN`], with retries off.
fn client(addr: &str) -> VaultClient {
    let config = VaultConfig {
        addr: VaultAddrs::parse(addr).unwrap(),
        mount: "pki".into(),
        role: "workload".into(),
        retries: 0,
        timeout: Duration::from_secs(5),
        ..VaultConfig::default()
    };
    let vault = VaultClient::new(&config).unwrap();
    let creds =
        Credentials::from_config(&config, |k| (k == "VAULT_TOKEN").then(|| TOKEN.into())).unwrap();
    vault.use_unverified(&creds);
    vault
}

async fn sign(vault: &VaultClient) -> Result<(), VaultError> {
    let target = vault.target("pki", "workload", None).unwrap();
    let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/demo".parse().unwrap();
    vault
        .sign(
            &target,
            "-----BEGIN CERTIFICATE REQUEST-----",
            &id,
            Duration::from_secs(3600),
        )
        .await
        .map(drop)
}

/// A sign call redirected to another origin, in cleartext: not followed, so neither the
/// token nor the CSR leave for it; the caller gets a transient `Unavailable` (307). A
/// redirect within the same origin is followed, with the token, at most three times.
#[tokio::test]
async fn redirects_leave_the_origin_never() {
    let (elsewhere, seen_elsewhere) = serve("127.0.0.2", |_| Response::new(Body::from("{}"))).await;
    let target = elsewhere.clone();
    let (vault_addr, seen_vault) = serve("127.0.0.1", move |uri| {
        redirect(format!("{target}{}", uri.path()))
    })
    .await;
    let err = sign(&client(&vault_addr)).await.unwrap_err();
    assert!(
        matches!(err, VaultError::Unavailable { status: 307, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("redirected to"), "{err}");
    assert_eq!(
        seen_vault.lock().unwrap().len(),
        1,
        "one attempt (retries off)"
    );
    assert!(
        seen_elsewhere.lock().unwrap().is_empty(),
        "another origin received {:?}",
        seen_elsewhere.lock().unwrap()
    );

    // Same origin: followed with the token, but not forever.
    let (looping, seen_loop) = serve("127.0.0.1", |uri| redirect(format!("{}x", uri.path()))).await;
    let err = sign(&client(&looping)).await.unwrap_err();
    assert!(
        matches!(err, VaultError::Unavailable { status: 307, .. }),
        "{err}"
    );
    let seen = seen_loop.lock().unwrap().clone();
    assert_eq!(seen.len(), 4, "the request and three redirects: {seen:?}");
    assert!(seen.iter().all(|(_, _, token, _)| *token), "{seen:?}");
}

/// A same-origin redirect with a relative `Location` (a standby pointing at the active node
/// behind one address): followed once, repeating the method, the token and the CSR, and the
/// answer at the new path is the sign's answer.
#[tokio::test]
async fn a_same_origin_redirect_is_followed_with_method_token_and_body() {
    let (base, calls) = serve("127.0.0.1", |uri| {
        let path = uri.path();
        if !path.starts_with("/active") {
            return redirect(format!("/active{path}"));
        }
        Response::builder()
            .header("content-type", "application/json")
            .body(Body::from(
                r#"{"data":{"certificate":"leaf","serial_number":"01"}}"#,
            ))
            .unwrap()
    })
    .await;
    sign(&client(&base)).await.unwrap();
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2, "{calls:?}");
    let (method, path, token, body) = &calls[1];
    assert_eq!(method, "POST");
    assert_eq!(path, "/active/v1/pki/sign/workload");
    assert!(*token, "the token follows within the origin");
    assert!(body.contains("BEGIN CERTIFICATE REQUEST"), "{body}");
    assert_eq!(body, &calls[0].3, "the same body");
}

/// A 100 MiB answer to a sign call, announced (`Content-Length`) or streamed (chunked):
/// refused once past `vault.max_response_bytes` (1 MiB), never held whole, as a permanent
/// `Malformed` error naming the limit.
#[tokio::test]
async fn huge_answers_are_refused_before_they_are_held() {
    const TOTAL: usize = 100 << 20;
    const CHUNK: usize = 64 << 10;
    for announced in [true, false] {
        let produced = Arc::new(AtomicUsize::new(0));
        let counter = produced.clone();
        let (addr, _) = serve("127.0.0.1", move |_| {
            let counter = counter.clone();
            let chunks = futures_util::stream::iter((0..TOTAL / CHUNK).map(move |_| {
                counter.fetch_add(CHUNK, Ordering::Relaxed);
                Ok::<_, std::convert::Infallible>(bytes::Bytes::from(vec![b' '; CHUNK]))
            }));
            let mut resp = Response::builder().header("content-type", "application/json");
            if announced {
                resp = resp.header("content-length", TOTAL);
            }
            resp.body(Body::from_stream(chunks)).unwrap()
        })
        .await;
        let err = sign(&client(&addr)).await.unwrap_err();
        let VaultError::Malformed(message) = &err else {
            panic!("announced={announced}: {err}");
        };
        assert_eq!(message, "answer larger than 1048576 bytes");
        // Whatever the sockets buffered, the client stopped reading long before the end.
        let sent = produced.load(Ordering::Relaxed);
        assert!(
            sent < TOTAL / 4,
            "announced={announced}: {sent} bytes produced"
        );
    }
}
