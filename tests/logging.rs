//! Request logs: one JSON line per request with identity, outcome, code, serial and duration,
//! and never a token, a CSR or key material (real OpenBao, real TLS).

use std::io::Write;
use std::sync::{Arc, Mutex};

use istio_vault_ca::client::{self, CallOptions, Shape};
use istio_vault_ca::config::{LogConfig, LogFormat};
use istio_vault_ca::dev::TokenSpec;
use support::{Env, id};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_json_line_per_request_and_no_secrets() {
    let capture = Capture::default();
    let audit = Capture::default();
    let (sink, audit_sink) = (capture.clone(), audit.clone());
    let config = LogConfig {
        format: LogFormat::Json,
        level: "info".into(),
    };
    istio_vault_ca::telemetry::init_with_writers(
        &config,
        move || sink.clone(),
        false,
        Some(move || audit_sink.clone()),
        None,
    );
    // Without OTLP export the request spans are disabled at their call sites.
    assert!(
        tracing::info_span!(target: istio_vault_ca::telemetry::SPAN_TARGET, "probe").is_disabled()
    );

    let env = Env::start().await;
    let demo = id("default", "demo");
    // A pod-bound token, as the kubelet projects it: the audit trail names the pod and node.
    let mut spec = TokenSpec::new("default", "demo");
    spec.pod = Some(("demo-7d9f".into(), "uid-1".into(), "node-a".into()));
    let opts = CallOptions {
        token: Some(env.issuer.token(&spec).unwrap()),
        ..env.opts("default", "demo")
    };
    let token = opts.token.clone().unwrap();
    let (chain, kc) = env.request(Shape::PilotAgent, &demo, &opts).await.unwrap();
    let serial = client::inspect_chain(&chain).unwrap().serial;

    let vault_token = std::fs::read_to_string(env.setup_dir.join("vault-token")).unwrap();
    let mut secrets = vec![token.clone(), kc.key_pem(), kc.csr_pem.clone(), vault_token];
    let bad = format!("{}x", &token[..token.len() - 1]);
    secrets.push(bad.clone());
    env.request(
        Shape::PilotAgent,
        &demo,
        &CallOptions {
            token: Some(bad),
            ..opts.clone()
        },
    )
    .await
    .unwrap_err();
    let other = client::generate_csr(Shape::Ztunnel, &id("default", "other")).unwrap();
    secrets.push(other.csr_pem.clone());
    let req = client::build_request(Shape::Ztunnel, &other.csr_pem, &demo, &opts).unwrap();
    env.client()
        .await
        .create_certificate(req)
        .await
        .unwrap_err();
    // Refused before the handler runs: a message over the size limit, and a malformed one.
    for (csr, impersonated, code) in [
        ("A".repeat(40_000), None, tonic::Code::ResourceExhausted),
        (
            other.csr_pem.clone(),
            Some(prost_types::value::Kind::NumberValue(1.0)),
            tonic::Code::InvalidArgument,
        ),
    ] {
        let mut req = client::build_request(Shape::Ztunnel, &csr, &demo, &opts).unwrap();
        if let Some(kind) = impersonated {
            req.get_mut().metadata.as_mut().unwrap().fields.insert(
                "ImpersonatedIdentity".into(),
                prost_types::Value { kind: Some(kind) },
            );
        }
        let err = env
            .client()
            .await
            .create_certificate(req)
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{}", err.message());
    }

    // Vault's 400 (its role, rewritten last, no longer allows the mesh's URIs): the caller
    // reads a stable message naming the request; Vault's text stays in the log line carrying
    // the same request id.
    env.bao
        .api(
            "POST",
            &format!("{}/roles/{}", support::MOUNT, support::ROLE),
            serde_json::json!({"allowed_uri_sans": "spiffe://elsewhere.example/*",
                               "allow_any_name": false, "use_csr_sans": false}),
        )
        .await;
    let rejected = env
        .request(
            Shape::PilotAgent,
            &id("broken", "app"),
            &env.opts("broken", "app"),
        )
        .await
        .unwrap_err();
    assert_eq!(
        rejected.code(),
        tonic::Code::InvalidArgument,
        "{rejected:?}"
    );
    assert!(!rejected.message().contains("elsewhere"), "{rejected:?}");
    let request_id = rejected
        .message()
        .split("(request ")
        .nth(1)
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("no request id in {:?}", rejected.message()))
        .to_owned();

    let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    // A field named like a key the JSON formatter writes itself would make duplicate keys.
    for line in text.lines() {
        assert_eq!(
            line.matches("\"target\":").count(),
            1,
            "duplicate key: {line}"
        );
    }
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let requests: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["target"] == "istio_vault_ca::request")
        .collect();
    assert_eq!(
        requests.len(),
        6,
        "one line per call, wherever refused: {text}"
    );
    assert_eq!(
        requests[5]["request_id"].as_str(),
        Some(request_id.as_str())
    );
    assert!(
        requests[5]["error"].as_str().unwrap().contains("HTTP 400"),
        "Vault's reason in the log: {}",
        requests[5]
    );
    let issued = requests[0];
    assert_eq!(issued["outcome"], "issued");
    assert_eq!(issued["code"], "Ok");
    assert_eq!(issued["identity"], demo.to_string());
    assert_eq!(issued["serial"], serial);
    assert!(issued["duration_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(issued["route"], "default");
    assert_eq!(issued["sign_target"], "default");
    // Its place in Vault's queue: the pod held no certificate. Named once the call got that
    // far (Vault refused the last one), absent for a call refused before (authentication).
    assert_eq!(issued["urgency"], "unserved");
    assert!(requests[5]["urgency"].is_string(), "{}", requests[5]);
    assert!(requests[1].get("urgency").is_none(), "{}", requests[1]);
    // For people and log pipelines: the peer as an address, durations to the microsecond.
    let peer = issued["peer"].as_str().unwrap();
    assert!(
        peer.parse::<std::net::SocketAddr>().is_ok(),
        "peer {peer:?}"
    );
    let ms = issued["duration_ms"].as_f64().unwrap();
    assert_eq!(
        ms,
        (ms * 1000.0).round() / 1000.0,
        "duration_ms {ms} not rounded to µs"
    );
    assert_eq!(
        (
            requests[1]["outcome"].as_str(),
            requests[1]["code"].as_str(),
            requests[1]["reason"].as_str()
        ),
        (Some("refused"), Some("Unauthenticated"), Some("authn"))
    );
    assert_eq!(
        (requests[2]["code"].as_str(), requests[2]["reason"].as_str()),
        (Some("PermissionDenied"), Some("authz"))
    );
    assert_eq!(
        (requests[3]["code"].as_str(), requests[3]["reason"].as_str()),
        (Some("ResourceExhausted"), Some("message-too-large"))
    );
    assert_eq!(
        (requests[4]["code"].as_str(), requests[4]["reason"].as_str()),
        (Some("InvalidArgument"), Some("malformed-request"))
    );

    for secret in &secrets {
        // Any 32-character window of a secret's body would betray it.
        let body: String = secret.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(
            body.len() >= 16 && !text.contains(body.trim()),
            "log contains a secret"
        );
        for start in (0..body.len().saturating_sub(32)).step_by(16) {
            assert!(
                !text.contains(&body[start..start + 32]),
                "log contains secret material"
            );
        }
    }
    assert!(!text.contains("PRIVATE KEY"));
    assert!(
        !text.contains("istio_vault_ca::audit"),
        "audit events stay out of the operational log"
    );

    // The audit trail: one JSON line per decision, with the issued serial.
    let audit_text = String::from_utf8(audit.0.lock().unwrap().clone()).unwrap();
    for line in audit_text.lines() {
        assert_eq!(
            line.matches("\"target\":").count(),
            1,
            "duplicate key: {line}"
        );
    }
    let decisions: Vec<serde_json::Value> = audit_text
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line not JSON ({e}): {l}"))
        })
        .collect();
    assert_eq!(decisions.len(), 6, "{audit_text}");
    assert_eq!(
        decisions[5]["request_id"].as_str(),
        Some(request_id.as_str())
    );
    assert_eq!(decisions[5]["code"].as_str(), Some("InvalidArgument"));
    let issued = &decisions[0];
    assert_eq!(issued["outcome"], "issued");
    assert_eq!(issued["serial"], serial);
    assert_eq!(issued["issued"], demo.to_string());
    assert_eq!(issued["caller"], demo.to_string());
    assert_eq!(issued["authn"], "jwt");
    assert_eq!(issued["caller_pod"], "default/demo-7d9f");
    assert_eq!(issued["caller_node"], "node-a");
    assert_eq!(issued["cluster"], "Kubernetes");
    assert_eq!(issued["route"], "default");
    assert_eq!(issued["sign_target"], "default");
    assert_eq!(issued["urgency"], "unserved");
    assert!(decisions[5]["urgency"].is_string(), "{}", decisions[5]);
    assert!(decisions[1].get("urgency").is_none(), "{}", decisions[1]);
    // For people and log pipelines: the peer as an address, durations to the microsecond.
    let peer = issued["peer"].as_str().unwrap();
    assert!(
        peer.parse::<std::net::SocketAddr>().is_ok(),
        "peer {peer:?}"
    );
    assert!(issued["not_after"].as_i64().unwrap() > support::now_unix());
    assert!(issued["timestamp"].is_string());
    assert_eq!(
        (
            decisions[1]["outcome"].as_str(),
            decisions[1]["reason"].as_str()
        ),
        (Some("refused"), Some("authn"))
    );
    assert_eq!(
        decisions[2]["requested"],
        id("default", "other").to_string()
    );
    assert_eq!(decisions[2]["caller"], demo.to_string());
    assert_eq!(decisions[2]["authn"], "jwt");
    assert_eq!(decisions[2]["caller_pod"], "default/demo-7d9f");
    assert!(
        decisions[1].get("caller_pod").is_none() && decisions[1]["caller"] == "-",
        "nothing is claimed for an unauthenticated caller"
    );
    for secret in &secrets {
        let body: String = secret.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(!audit_text.contains(body.trim()), "audit contains a secret");
    }
}
