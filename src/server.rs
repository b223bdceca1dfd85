//! The gRPC handler for `istio.v1.auth.IstioCertificateService/CreateCertificate`, and the one
//! place where errors become `tonic::Status`.
//!
//! Each call produces one log line (target `istio_vault_ca::request`) with the identity,
//! outcome, gRPC code, serial, NotAfter and duration, and never a token, key or CSR.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::{Code, Request, Response, Status};
use tracing::Instrument;
use tracing::field::Empty;

use crate::authn::{AuthnError, Caller, Credentials};
use crate::pb::istio_certificate_service_server::IstioCertificateService;
use crate::pb::{IstioCertificateRequest, IstioCertificateResponse};
use crate::signer::{
    AuthzError, CertificateRequest, Certified, IssueError, Issued, Refusal, Signer,
};
use crate::telemetry::{AUDIT_TARGET, SPAN_TARGET};
use crate::vault::VaultError;

/// Metadata key ztunnel uses to ask for another workload's identity.
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

/// The CreateCertificate service.
pub struct CaService {
    signer: Arc<Signer>,
    request_timeout: Duration,
}

impl CaService {
    pub fn new(signer: Arc<Signer>, request_timeout: Duration) -> Self {
        Self {
            signer,
            request_timeout,
        }
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let start = Instant::now();
        // Disabled (a cached no-op) unless OTLP export is on.
        let span = tracing::info_span!(
            target: SPAN_TARGET,
            "CreateCertificate",
            otel.name = "istio.v1.auth.IstioCertificateService/CreateCertificate",
            otel.kind = "server",
            otel.status_code = Empty,
            otel.status_description = Empty,
            rpc.system = "grpc",
            rpc.service = "istio.v1.auth.IstioCertificateService",
            rpc.method = "CreateCertificate",
            rpc.grpc.status_code = Empty,
            caller = Empty,
            authn = Empty,
            cluster = Empty,
            identity = Empty,
            outcome = Empty,
            reason = Empty,
            serial = Empty,
        );
        crate::telemetry::set_remote_parent(&span, request.metadata());
        let peer = request.remote_addr();
        let peer_certs = request.peer_certs();
        let peer_cert = peer_certs
            .as_ref()
            .and_then(|c| c.first())
            .map(|c| c.as_ref());
        let md = request.metadata();
        let bearer = md
            .get_all("authorization")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| v.strip_prefix("Bearer "));
        let cluster_ids: Vec<&str> = md
            .get_all("clusterid")
            .iter()
            .map(|v| v.to_str().unwrap_or("<non-ascii>"))
            .collect();
        let body = request.get_ref();
        let impersonated = match impersonated_identity(body) {
            Ok(v) => v,
            Err(status) => return Err(status),
        };
        let req = CertificateRequest {
            credentials: Credentials {
                bearer,
                cluster_ids: &cluster_ids,
                peer_cert,
            },
            csr_pem: &body.csr,
            validity_seconds: body.validity_duration,
            impersonated_identity: impersonated,
        };
        let issue = self.signer.issue(req).instrument(span.clone());
        let result = match tokio::time::timeout(self.request_timeout, issue).await {
            Ok(r) => r,
            Err(_) => Err(Refusal {
                caller: None,
                error: IssueError::Vault(VaultError::Timeout(self.request_timeout)),
            }),
        };
        let elapsed_ms = start.elapsed().as_secs_f64() * 1000.0;
        let cluster = cluster_ids.first().copied().unwrap_or("");
        span.record("cluster", cluster);
        match result {
            Ok(Issued {
                caller,
                certified:
                    Certified {
                        identity,
                        chain,
                        clamped,
                    },
            }) => {
                span.record("otel.status_code", "ok")
                    .record("rpc.grpc.status_code", Code::Ok as i32)
                    .record("outcome", "issued")
                    .record("caller", tracing::field::display(&caller.identity))
                    .record("authn", caller.method.as_str())
                    .record("identity", tracing::field::display(&identity))
                    .record("serial", tracing::field::display(&chain.serial));
                crate::metrics::request("issued", Code::Ok, None, start.elapsed());
                crate::metrics::issued(chain.not_after);
                tracing::info!(
                    target: "istio_vault_ca::request",
                    identity = %identity,
                    caller = %caller.identity,
                    authn = caller.method.as_str(),
                    cluster,
                    outcome = "issued",
                    code = ?Code::Ok,
                    serial = %chain.serial,
                    not_after = chain.not_after,
                    clamped,
                    duration_ms = elapsed_ms,
                    peer = ?peer,
                    "CreateCertificate"
                );
                tracing::info!(
                    target: AUDIT_TARGET,
                    outcome = "issued",
                    code = "OK",
                    caller = %caller.identity,
                    authn = caller.method.as_str(),
                    caller_pod = caller_pod(&caller).map(tracing::field::display),
                    caller_node = caller_node(&caller),
                    cluster,
                    requested = %identity,
                    issued = %identity,
                    serial = %chain.serial,
                    not_after = chain.not_after,
                    clamped,
                    peer = peer.map(|p| p.to_string()).unwrap_or_default(),
                    "certificate issued"
                );
                Ok(Response::new(IstioCertificateResponse {
                    cert_chain: chain.elements,
                }))
            }
            Err(Refusal { caller, error: err }) => {
                let status = to_status(&err);
                crate::metrics::request(
                    "refused",
                    status.code(),
                    Some(err.reason()),
                    start.elapsed(),
                );
                let authn = caller.as_ref().map(|c| c.method.as_str());
                let caller_id = caller.as_ref().map(|c| c.identity.to_string());
                span.record("otel.status_code", "error")
                    .record("otel.status_description", status.message())
                    .record("rpc.grpc.status_code", status.code() as i32)
                    .record("outcome", "refused")
                    .record("reason", err.reason())
                    .record("caller", caller_id.as_deref().unwrap_or("-"));
                tracing::info!(
                    target: "istio_vault_ca::request",
                    caller = caller_id.as_deref().unwrap_or("-"),
                    cluster,
                    outcome = "refused",
                    code = ?status.code(),
                    reason = err.reason(),
                    error = %err,
                    duration_ms = elapsed_ms,
                    peer = ?peer,
                    "CreateCertificate"
                );
                tracing::info!(
                    target: AUDIT_TARGET,
                    outcome = "refused",
                    code = ?status.code(),
                    caller = caller_id.as_deref().unwrap_or("-"),
                    authn,
                    caller_pod = caller.as_ref().and_then(caller_pod).map(tracing::field::display),
                    caller_node = caller.as_ref().and_then(caller_node),
                    cluster,
                    requested = err.requested().unwrap_or("-"),
                    reason = err.reason(),
                    error = %err,
                    peer = peer.map(|p| p.to_string()).unwrap_or_default(),
                    "certificate refused"
                );
                Err(status)
            }
        }
    }
}

/// The caller's pod as `namespace/name`, when its credential is bound to a pod: in the audit
/// trail it says which workload, or which ztunnel, asked. Formatted only if the line is written.
fn caller_pod(caller: &Caller) -> Option<impl std::fmt::Display + '_> {
    struct PodName<'a>(&'a str, &'a str);
    impl std::fmt::Display for PodName<'_> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{}/{}", self.0, self.1)
        }
    }
    let pod = caller.pod.as_ref()?;
    Some(PodName(caller.identity.namespace(), &pod.name))
}

/// The node of the caller's pod, when its credential names one.
fn caller_node(caller: &Caller) -> Option<&str> {
    caller.pod.as_ref()?.node.as_deref()
}

fn impersonated_identity(req: &IstioCertificateRequest) -> Result<Option<&str>, Status> {
    use prost_types::value::Kind;
    let Some(value) = req
        .metadata
        .as_ref()
        .and_then(|m| m.fields.get(IMPERSONATED_IDENTITY))
    else {
        return Ok(None);
    };
    match &value.kind {
        Some(Kind::StringValue(s)) => Ok(Some(s.as_str())),
        Some(Kind::NullValue(_)) | None => Ok(None),
        Some(_) => Err(Status::invalid_argument(
            "metadata ImpersonatedIdentity must be a string",
        )),
    }
}

/// Maps a failure to the gRPC code clients act on: pilot-agent retries only `Unavailable`,
/// `ResourceExhausted`, `DeadlineExceeded`, `Aborted`, `Internal` and `Canceled`, so
/// permanent refusals never use those.
pub fn to_status(err: &IssueError) -> Status {
    match err {
        IssueError::Authn(e) if e.is_transient() => Status::unavailable(e.to_string()),
        IssueError::Authn(AuthnError::UnknownCluster(_) | AuthnError::AmbiguousCluster) => {
            Status::unauthenticated(err.to_string())
        }
        IssueError::Authn(e) => Status::unauthenticated(format!("authentication failed: {e}")),
        IssueError::Authz(AuthzError::PodCacheNotSynced(_)) => Status::unavailable(err.to_string()),
        IssueError::Authz(e) => Status::permission_denied(e.to_string()),
        IssueError::Csr(e) => Status::invalid_argument(e.to_string()),
        IssueError::Ttl(e) => Status::invalid_argument(e.to_string()),
        IssueError::Vault(VaultError::Delegation(_)) => Status::permission_denied(err.to_string()),
        IssueError::Vault(VaultError::Rejected(m)) => {
            Status::invalid_argument(format!("Vault refused to sign: {m}"))
        }
        IssueError::Vault(e) => {
            Status::unavailable(format!("certificate authority unavailable: {e}"))
        }
        IssueError::Overloaded(_) => Status::resource_exhausted(err.to_string()),
        IssueError::Leaf(crate::chain::LeafError::Untrusted(_)) => Status::unavailable(
            "issued certificate does not chain to the current trust bundle; retry later",
        ),
        IssueError::Leaf(_) => Status::failed_precondition(
            "the certificate authority issued a certificate that failed verification; it was withheld (see signer logs)",
        ),
    }
}
