//! Deadline-aware admission: a call that finds every slot taken waits as long as its own
//! deadline allows (or `server.queue_timeout`, 30 s, without one) and is served when a slot
//! frees; a call whose deadline cannot be met is refused with `ResourceExhausted` before its
//! deadline passes.
//!
//! Real parts: OpenBao (dev server, configured by `deploy/vault/setup.py`), the signer
//! in-process over real TLS, pilot-agent- and ztunnel-shaped tonic clients (one with a
//! `grpc-timeout`, as tonic sends it), and a real HTTP/2 client (`h2`) that takes the only slot
//! by sending a call's headers and never its message (held until `body_timeout`, 5 s here).

use std::time::{Duration, Instant};

use istio_vault_ca::client::{self, Shape};
use support::{Env, id, raw_h2};
use tonic::Code;

/// One slot, taken for 5 s by a call whose message never comes.
async fn env_with_one_slot() -> Env {
    Env::start_with(|c| {
        c.server.max_in_flight = 1;
        c.server.limits.body_timeout = Duration::from_secs(5);
    })
    .await
}

/// Takes the signer's only slot with a call that sends headers and part of its message, and
/// returns when the signer answers it (`DeadlineExceeded` once `body_timeout` passed).
async fn hold_the_slot(env: &Env) -> tokio::task::JoinHandle<(Instant, Option<String>)> {
    let mut send = raw_h2::connect(env.addr.parse().unwrap(), &env.ca_pem).await;
    send = send.ready().await.unwrap();
    let (response, mut body) = send.send_request(raw_h2::request(&[]), false).unwrap();
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 1, 0]), false)
        .unwrap();
    tokio::spawn(async move {
        let response = response.await.expect("the signer answers the held call");
        let freed = Instant::now();
        let status = response
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().to_owned());
        drop(body);
        (freed, status)
    })
}

/// Waits until the signer's admin metrics show `n` calls waiting for a slot.
async fn wait_for_queued(env: &Env, n: usize) {
    let want = format!("istio_vault_ca_queued_requests {n}");
    for _ in 0..200 {
        let (_, metrics) = env.admin("/metrics").await;
        if metrics.lines().any(|l| l == want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never saw {want}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_wait_for_a_slot_as_long_as_their_deadline_allows() {
    let env = env_with_one_slot().await;
    let holder = hold_the_slot(&env).await;
    let started = Instant::now();

    let demo = id("default", "demo");
    let opts = env.opts("default", "demo");
    let call = |shape, timeout: Option<Duration>| {
        let (env, demo, opts) = (&env, &demo, &opts);
        async move {
            let kc = client::generate_csr(shape, demo).unwrap();
            let mut req = client::build_request(shape, &kc.csr_pem, demo, opts).unwrap();
            if let Some(t) = timeout {
                req.set_timeout(t);
            }
            let sent = Instant::now();
            let result = env.client().await.create_certificate(req).await;
            (result.map(|r| r.into_inner().cert_chain), sent.elapsed())
        }
    };
    // A call with 20 s (tonic sends `grpc-timeout`) and one without a deadline (pilot-agent
    // sends none) queue behind the held slot; a third with 1 s comes once they wait.
    let with_deadline = call(Shape::Ztunnel, Some(Duration::from_secs(20)));
    let without_deadline = call(Shape::PilotAgent, None);
    let hopeless = async {
        wait_for_queued(&env, 2).await;
        call(Shape::PilotAgent, Some(Duration::from_secs(1))).await
    };
    let ((ok20, took20), (ok_none, took_none), (short, took_short)) =
        tokio::join!(with_deadline, without_deadline, hopeless);

    let (freed, held_status) = holder.await.unwrap();
    assert_eq!(
        held_status.as_deref(),
        Some("4"),
        "the held call ends with DeadlineExceeded"
    );
    let held_for = freed - started;
    assert!(held_for >= Duration::from_secs(4), "held {held_for:?}");

    let chain = ok20.expect("the call with a 20 s deadline waits and is served");
    assert!(chain.len() >= 2);
    assert!(
        took20 >= Duration::from_secs(4),
        "it waited for the slot ({took20:?})"
    );
    let chain =
        ok_none.expect("a call without a deadline waits (queue_timeout 30 s) and is served");
    assert!(chain.len() >= 2);
    assert!(took_none >= Duration::from_secs(4), "{took_none:?}");

    let refused = short.expect_err("a 1 s deadline cannot be met behind a 5 s hold");
    assert_eq!(
        refused.code(),
        Code::ResourceExhausted,
        "{}",
        refused.message()
    );
    assert!(
        refused.message().contains("overloaded"),
        "{}",
        refused.message()
    );
    assert!(
        took_short <= Duration::from_secs(1),
        "refused within its deadline ({took_short:?})"
    );
    assert_eq!(
        env.bao.sign_calls(),
        2,
        "the two patient calls reached Vault, the refused one did not"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_grpc_timeout_is_invalid_argument() {
    let env = Env::start().await;
    let mut send = raw_h2::connect(env.addr.parse().unwrap(), &env.ca_pem).await;
    for bad in ["1.5S", "123456789S", "10", "-1m"] {
        send = send.ready().await.unwrap();
        let (response, _body) = send
            .send_request(raw_h2::request(&[("grpc-timeout", bad)]), true)
            .unwrap();
        let response = response.await.unwrap();
        let status = response
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap());
        assert_eq!(status, Some("3"), "{bad}: InvalidArgument");
        let message = response
            .headers()
            .get("grpc-message")
            .unwrap()
            .to_str()
            .unwrap();
        assert!(message.contains("grpc-timeout"), "{message}");
    }
    let (_, metrics) = env.admin("/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("istio_vault_ca_refusals_total{reason=\"malformed-request\"} 4")),
        "each counted once as a malformed request"
    );
}
