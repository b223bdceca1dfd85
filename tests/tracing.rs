//! OTLP trace export: one server span per CreateCertificate call, children for admission,
//! authentication, authorization, CSR checks, the Vault call and leaf verification; the
//! caller's W3C `traceparent` is followed, including its sampling decision.
//!
//! The signer and OpenBao are real; the collector is a loopback gRPC server implementing
//! OTLP's real `TraceService` (opentelemetry-proto's generated server), standing in for an
//! OpenTelemetry Collector.

use std::sync::{Arc, Mutex};

use istio_vault_ca::client::{self, CallOptions, Shape};
use istio_vault_ca::config::{LogConfig, TracingConfig};
use istio_vault_ca::telemetry::{self, SPAN_TARGET, Tracing};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind, status::StatusCode};
use support::{Env, id};

/// Every span the collector received.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| v.value.clone());
            assert_eq!(service, Some(Value::StringValue("istio-vault-ca".into())));
            spans.extend(rs.scope_spans.into_iter().flat_map(|s| s.spans));
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        format!("http://{addr}")
    }

    fn spans(&self) -> Vec<Span> {
        self.0.lock().unwrap().clone()
    }
}

fn attr(span: &Span, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.clone())
}

fn string(s: &str) -> Option<Value> {
    Some(Value::StringValue(s.into()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Sends one request with an optional `traceparent`.
async fn call(
    env: &Env,
    shape: Shape,
    ns: &str,
    sa: &str,
    opts: &CallOptions,
    traceparent: Option<&str>,
) -> Result<Vec<String>, tonic::Status> {
    let identity = id(ns, sa);
    let kc = client::generate_csr(shape, &identity).unwrap();
    let mut req = client::build_request(shape, &kc.csr_pem, &identity, opts).unwrap();
    if let Some(tp) = traceparent {
        req.metadata_mut()
            .insert("traceparent", tp.parse().unwrap());
    }
    let mut grpc = env.client().await;
    grpc.create_certificate(req)
        .await
        .map(|r| r.into_inner().cert_chain)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_per_request_with_children_and_caller_context() {
    let collector = Collector::default();
    let endpoint = collector.start().await;
    let tracing = Tracing::start(&TracingConfig {
        otlp_endpoint: Some(endpoint),
        ..TracingConfig::default()
    })
    .unwrap()
    .expect("tracing on");
    telemetry::init_with_writers(
        &LogConfig::default(),
        std::io::sink,
        false,
        None::<fn() -> std::io::Sink>,
        Some(&tracing),
    );
    assert!(!tracing::info_span!(target: SPAN_TARGET, "probe").is_disabled());

    let env = Env::start().await;
    // 1. Issued, as a child of the caller's sampled trace.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    let opts = env.opts("default", "demo");
    let token = opts.token.clone().unwrap();
    let chain = call(
        &env,
        Shape::PilotAgent,
        "default",
        "demo",
        &opts,
        Some(&format!("00-{trace_id}-{parent_id}-01")),
    )
    .await
    .unwrap();
    let serial = client::inspect_chain(&chain).unwrap().serial;
    // 2. Refused (bad token), new root trace.
    let bad = CallOptions {
        token: Some(format!("{token}x")),
        ..opts.clone()
    };
    let status = call(&env, Shape::Ztunnel, "default", "demo", &bad, None)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    // 3. The caller's trace is not sampled: nothing is exported for it.
    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    call(
        &env,
        Shape::PilotAgent,
        "default",
        "other",
        &env.opts("default", "other"),
        Some(&format!("00-{unsampled}-b7ad6b7169203331-00")),
    )
    .await
    .unwrap();

    let flusher = tracing.clone();
    tokio::task::spawn_blocking(move || flusher.flush())
        .await
        .unwrap();
    let spans = collector.spans();
    let rpc = "istio.v1.auth.IstioCertificateService/CreateCertificate";
    let servers: Vec<&Span> = spans.iter().filter(|s| s.name == rpc).collect();
    assert_eq!(servers.len(), 2, "two sampled calls: {servers:#?}");
    assert!(
        spans.iter().all(|s| hex(&s.trace_id) != unsampled),
        "unsampled trace exported"
    );

    // The issued call: in the caller's trace, under its span, with its children.
    let issued = servers
        .iter()
        .find(|s| hex(&s.trace_id) == trace_id)
        .expect("server span in the caller's trace");
    assert_eq!(hex(&issued.parent_span_id), parent_id);
    assert_eq!(issued.kind, SpanKind::Server as i32);
    assert_eq!(
        issued.status.as_ref().unwrap().code,
        StatusCode::Ok as i32,
        "{issued:#?}"
    );
    assert_eq!(attr(issued, "rpc.system"), string("grpc"));
    assert_eq!(
        attr(issued, "rpc.grpc.status_code"),
        Some(Value::IntValue(0))
    );
    assert_eq!(attr(issued, "outcome"), string("issued"));
    assert_eq!(
        attr(issued, "identity"),
        string("spiffe://cluster.local/ns/default/sa/demo")
    );
    assert_eq!(attr(issued, "authn"), string("jwt"));
    assert_eq!(attr(issued, "serial"), string(&serial));
    let children = |parent: &Span| -> Vec<String> {
        let mut names: Vec<String> = spans
            .iter()
            .filter(|s| s.parent_span_id == parent.span_id && s.trace_id == parent.trace_id)
            .map(|s| s.name.clone())
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        children(issued),
        [
            "admission",
            "authenticate",
            "authorize",
            "csr.verify",
            "leaf.verify",
            "vault.sign"
        ]
    );
    let vault = spans
        .iter()
        .find(|s| s.name == "vault.sign" && s.trace_id == issued.trace_id)
        .unwrap();
    assert_eq!(vault.kind, SpanKind::Client as i32);
    assert!(vault.start_time_unix_nano >= issued.start_time_unix_nano);
    assert!(vault.end_time_unix_nano <= issued.end_time_unix_nano);

    // The refused call: a new trace, error status with the gRPC code, no Vault call.
    let refused = servers
        .iter()
        .find(|s| hex(&s.trace_id) != trace_id)
        .unwrap();
    assert!(refused.parent_span_id.is_empty(), "a root span");
    let st = refused.status.as_ref().unwrap();
    assert_eq!(st.code, StatusCode::Error as i32);
    assert!(st.message.contains("authentication failed"), "{st:?}");
    assert_eq!(
        attr(refused, "rpc.grpc.status_code"),
        Some(Value::IntValue(16))
    );
    assert_eq!(attr(refused, "reason"), string("authn"));
    assert_eq!(children(refused), ["admission", "authenticate"]);

    // No credential leaks into exported attributes or events.
    let dump = format!("{spans:?}");
    assert!(!dump.contains(&token[token.len() - 20..]), "token exported");
    assert!(!dump.contains("BEGIN CERTIFICATE REQUEST"), "CSR exported");
    tracing.shutdown();
}
