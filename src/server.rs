//! The gRPC side: the port ([`listener`]: connections, TLS, HTTP/2 limits), the [`gate`] every
//! call passes before its message is read, the CreateCertificate handler, the one place where
//! refusals become `tonic::Status` ([`status`]: the handler's errors and the gate's and
//! tonic's before it) and the one place outcomes are reported ([`outcome`]).
//!
//! Each call produces one log line (target `istio_vault_ca::request`) with the identity,
//! outcome, gRPC code, serial, NotAfter and duration, and never a token, key or CSR.

/// Implements `AsyncWrite` for a stream wrapper that only watches what is read: every write,
/// flush and shutdown goes to its `inner` stream unchanged. `writes_pass_through!(Type)`, or
/// `writes_pass_through!(Type<T>, T)` for a wrapper generic over its stream.
macro_rules! writes_pass_through {
    ($ty:ty $(, $param:ident)?) => {
        impl<$($param: tokio::io::AsyncWrite + Unpin)?> tokio::io::AsyncWrite for $ty {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.inner.is_write_vectored()
            }

            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
            }
        }
    };
}

pub mod connections;
pub mod control_frames;
pub mod cork;
pub mod executor;
pub mod gate;
pub mod handshake;
pub mod listener;
pub mod log_limit;
pub mod outcome;
pub mod pace;
pub mod quickack;
pub mod shed;
pub mod status;

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::authn::Credentials;
use crate::pb::istio_certificate_service_server::IstioCertificateService;
use crate::pb::{IstioCertificateRequest, IstioCertificateResponse};
use crate::signer::{CertificateRequest, Issued, Refusal, Signer};
use gate::Arrival;
use outcome::{Call, Refused};
pub use status::{Rejection, to_status};

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
        // Set by the gate: handed on while the call waits for its turn at Vault.
        let slot = request.extensions().get::<gate::Slot>().cloned();
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
            Err(rejection) => {
                let status = rejection.status();
                outcome::refused(
                    &call,
                    Refused {
                        status: &status,
                        request_id: outcome::RequestId::next(),
                        reason: rejection.reason(),
                        error: &status.message(),
                        caller: None,
                        requested: None,
                        routed: None,
                        urgency: None,
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
        let on_queue = slot.map(|s| Box::new(move || s.release()) as crate::signer::OnQueue);
        let result = self
            .signer
            .issue(req, self.request_timeout, on_queue)
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
            Ok(Issued {
                caller,
                certified,
                urgency,
            }) => {
                outcome::issued(&call, &caller, &certified, urgency);
                Ok(Response::new(IstioCertificateResponse {
                    cert_chain: certified.chain.elements,
                }))
            }
            Err(Refusal {
                caller,
                routed,
                urgency,
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
                        urgency,
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
) -> Result<Option<&'a str>, Rejection> {
    use prost_types::value::Kind;
    let Some(value) = req.metadata.as_ref().and_then(|m| m.fields.get(key)) else {
        return Ok(None);
    };
    match &value.kind {
        Some(Kind::StringValue(s)) => Ok(Some(s.as_str())),
        Some(Kind::NullValue(_)) | None => Ok(None),
        Some(_) => Err(Rejection::MalformedField(format!(
            "metadata {key} must be a string"
        ))),
    }
}
