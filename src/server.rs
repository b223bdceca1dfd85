//! The gRPC side: the port ([`listener`]: connections, TLS, HTTP/2 limits), the [`gate`] every
//! call passes before its message is read, the CreateCertificate handler, the one place where
//! errors become `tonic::Status` ([`to_status`]) and the one place outcomes are reported
//! ([`outcome`]).
//!
//! Each call produces one log line (target `istio_vault_ca::request`) with the identity,
//! outcome, gRPC code, serial, NotAfter and duration, and never a token, key or CSR.

pub mod connections;
pub mod cork;
pub mod gate;
pub mod listener;
pub mod outcome;
pub mod quickack;

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::authn::{AuthnError, Credentials};
use crate::pb::istio_certificate_service_server::IstioCertificateService;
use crate::pb::{IstioCertificateRequest, IstioCertificateResponse};
use crate::routing::RouteError;
use crate::signer::{AuthzError, CertificateRequest, IssueError, Issued, Refusal, Signer};
use crate::vault::VaultError;
use gate::Arrival;
use outcome::{Call, Refused};

/// Metadata key ztunnel uses to ask for another workload's identity.
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

/// Metadata key pilot-agent uses for `ISTIO_META_CERT_SIGNER`: the CA the workload asks for.
pub const CERT_SIGNER: &str = "CertSigner";

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
        // Set by the gate; a service mounted without it (benchmarks) starts its own.
        let arrival = request
            .extensions()
            .get::<Arrival>()
            .cloned()
            .unwrap_or_else(Arrival::now);
        arrival.mark_reported();
        // Set by the listener; a connection whose call authenticates keeps its place.
        let proof = request.extensions().get::<connections::ConnectionProof>();
        let peer = request.remote_addr();
        let peer_certs = request.peer_certs();
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
        let cluster = crate::echo::truncated(cluster_ids.first().copied().unwrap_or(""));
        let call = Call {
            span: &arrival.span,
            start: arrival.start,
            peer,
            cluster: &cluster,
        };
        let body = request.get_ref();
        let metadata = metadata_string(body, IMPERSONATED_IDENTITY)
            .and_then(|i| Ok((i, metadata_string(body, CERT_SIGNER)?)));
        let (impersonated, cert_signer) = match metadata {
            Ok(v) => v,
            Err(status) => {
                outcome::refused(
                    &call,
                    Refused {
                        status: &status,
                        request_id: outcome::RequestId::next(),
                        reason: "malformed-request",
                        error: &status.message(),
                        caller: None,
                        requested: None,
                        routed: None,
                    },
                );
                return Err(status);
            }
        };
        let req = CertificateRequest {
            credentials: Credentials {
                bearer,
                cluster_ids: &cluster_ids,
                peer_chain: peer_certs.as_deref().map_or(&[], Vec::as_slice),
                peer: call.peer.map(|p| p.ip()),
            },
            csr_pem: &body.csr,
            validity_seconds: body.validity_duration,
            impersonated_identity: impersonated,
            cert_signer,
        };
        let result = self
            .signer
            .issue(req, self.request_timeout)
            .instrument(arrival.span.clone())
            .await;
        let authenticated = match &result {
            Ok(_) => true,
            Err(refusal) => refusal.caller.is_some(),
        };
        if let Some(proof) = proof.filter(|_| authenticated) {
            proof.prove();
        }
        match result {
            Ok(Issued { caller, certified }) => {
                outcome::issued(&call, &caller, &certified);
                Ok(Response::new(IstioCertificateResponse {
                    cert_chain: certified.chain.elements,
                }))
            }
            Err(Refusal {
                caller,
                routed,
                error,
            }) => {
                let request_id = outcome::RequestId::next();
                let status = to_status(&error, request_id);
                outcome::refused(
                    &call,
                    Refused {
                        status: &status,
                        request_id,
                        reason: error.reason(),
                        error: &error,
                        caller: caller.as_ref(),
                        requested: error.requested(),
                        routed: routed.as_ref(),
                    },
                );
                Err(status)
            }
        }
    }
}

/// A string value of the request's `metadata` Struct (`ImpersonatedIdentity`, `CertSigner`);
/// absent or null is `None`, any other kind is refused.
fn metadata_string<'a>(
    req: &'a IstioCertificateRequest,
    key: &str,
) -> Result<Option<&'a str>, Status> {
    use prost_types::value::Kind;
    let Some(value) = req.metadata.as_ref().and_then(|m| m.fields.get(key)) else {
        return Ok(None);
    };
    match &value.kind {
        Some(Kind::StringValue(s)) => Ok(Some(s.as_str())),
        Some(Kind::NullValue(_)) | None => Ok(None),
        Some(_) => Err(Status::invalid_argument(format!(
            "metadata {key} must be a string"
        ))),
    }
}

/// Maps a failure to the gRPC code clients act on: pilot-agent retries only `Unavailable`,
/// `ResourceExhausted`, `DeadlineExceeded`, `Aborted`, `Internal` and `Canceled`, so
/// permanent refusals never use those.
///
/// Messages say what went wrong without what only the signer's operators should see: no
/// file paths, URLs, API-server (RBAC) or Vault error text, which stay in the signer's log.
/// Values the caller sent are echoed truncated ([`crate::echo`]).
///
/// `request_id` names the call where the status leaves Vault's own reason to the log.
pub fn to_status(err: &IssueError, request_id: outcome::RequestId) -> Status {
    match err {
        IssueError::Authn(e) => match e.transient_reason() {
            Some(reason) => Status::unavailable(reason),
            None if matches!(
                e,
                AuthnError::UnknownCluster(_) | AuthnError::AmbiguousCluster
            ) =>
            {
                Status::unauthenticated(err.to_string())
            }
            None => Status::unauthenticated(format!("authentication failed: {e}")),
        },
        IssueError::Authz(AuthzError::PodCacheNotSynced(_) | AuthzError::DenyListNotLoaded) => {
            Status::unavailable(err.to_string())
        }
        IssueError::Authz(e) => Status::permission_denied(e.to_string()),
        IssueError::Csr(e) => Status::invalid_argument(e.to_string()),
        IssueError::Ttl(e) => Status::invalid_argument(e.to_string()),
        IssueError::Route(e @ RouteError::UnknownSigner(_)) => {
            Status::invalid_argument(e.to_string())
        }
        IssueError::Route(e @ RouteError::SignerNotAllowed { .. }) => {
            Status::permission_denied(e.to_string())
        }
        IssueError::Route(
            e @ (RouteError::NamespacesNotSynced | RouteError::NamespaceUnknown(_)),
        ) => Status::unavailable(e.to_string()),
        IssueError::Route(e @ RouteError::Exclusive { .. }) => {
            Status::permission_denied(e.to_string())
        }
        IssueError::Vault(VaultError::Delegation(_)) => {
            Status::permission_denied("Vault refused the caller's credentials (delegated signing)")
        }
        // Vault's text names its mount, role and policy: the signer's log has it.
        IssueError::Vault(VaultError::Rejected(_)) => Status::invalid_argument(format!(
            "Vault refused to sign this request (HTTP 400); the signer's log has its reason (request {request_id})"
        )),
        IssueError::Vault(e) => Status::unavailable(format!(
            "certificate authority unavailable: {}",
            vault_public(e)
        )),
        IssueError::Deadline { .. } => Status::unavailable(err.to_string()),
        IssueError::Leaf(crate::chain::LeafError::Untrusted(_)) => Status::unavailable(
            "issued certificate does not chain to the current trust bundle; retry later",
        ),
        // Retried by pilot-agent (backoff) and ztunnel (per-identity backoff); the message
        // says when.
        IssueError::RateLimited(e) => Status::resource_exhausted(e.to_string()),
        IssueError::Leaf(_) => Status::failed_precondition(
            "the certificate authority issued a certificate that failed verification; it was withheld (see signer logs)",
        ),
    }
}

/// What a caller is told of a Vault failure: its kind, not Vault's address or message.
fn vault_public(e: &VaultError) -> String {
    match e {
        VaultError::Unreachable(_) => "cannot reach Vault".into(),
        VaultError::Unavailable { status, .. } => format!("Vault is unavailable (HTTP {status})"),
        VaultError::Forbidden(_) => "Vault denied the signer's token (HTTP 403)".into(),
        VaultError::Unexpected { status, .. } => format!("Vault answered HTTP {status}"),
        VaultError::Malformed(_) => "Vault response is malformed".into(),
        VaultError::Token(_) => "the signer has no Vault token".into(),
        VaultError::TlsFiles(_) => "the signer's TLS files for Vault are unusable".into(),
        VaultError::NodeDown(_) => "Vault stopped answering (its health check failed)".into(),
        VaultError::Throttled(_) => {
            "the signer's limit of calls to Vault is reached (vault.max_requests_per_second)".into()
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What unauthenticated (or any) callers are told never carries the signer's own
    /// configuration: URLs, file paths, API-server RBAC text, Vault's messages.
    #[test]
    fn statuses_do_not_reveal_operator_details() {
        let secrets = [
            "https://kubernetes.default.svc/openid/v1/jwks",
            "/var/run/secrets/kubernetes.io/serviceaccount/token",
            "tokenreviews.authentication.k8s.io is forbidden: User \"system:serviceaccount:istio-system:istio-vault-ca\"",
            "http://vault.vault.svc:8200/v1/pki-istio/sign/istio-workload",
        ];
        for secret in secrets {
            let errors = [
                IssueError::Authn(AuthnError::KeysUnavailable(secret.into())),
                IssueError::Authn(AuthnError::ReviewUnavailable(secret.into())),
                IssueError::Vault(VaultError::Unreachable(secret.into())),
                IssueError::Vault(VaultError::Unavailable {
                    status: 503,
                    message: secret.into(),
                }),
                IssueError::Vault(VaultError::Forbidden(secret.into())),
                IssueError::Vault(VaultError::Unexpected {
                    status: 418,
                    message: secret.into(),
                }),
                IssueError::Vault(VaultError::Malformed(secret.into())),
                IssueError::Vault(VaultError::Token(secret.into())),
                IssueError::Vault(VaultError::Delegation(secret.into())),
                IssueError::Vault(VaultError::Rejected(secret.into())),
            ];
            for e in errors {
                let status = to_status(&e, outcome::RequestId::next());
                assert!(
                    !status.message().contains(secret),
                    "{e:?} -> {}",
                    status.message()
                );
                assert_ne!(status.code(), tonic::Code::Internal);
            }
        }
    }
}
