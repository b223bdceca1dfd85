//! The one map from a refusal to the gRPC status its caller receives: the handler's errors
//! ([`to_status`]) and calls refused before the handler ran ([`Rejection`]). pilot-agent
//! retries only `Unavailable`, `ResourceExhausted`, `DeadlineExceeded`, `Aborted`,
//! `Internal` and `Canceled`, so a permanent refusal never uses those.

use std::time::Duration;

use tonic::{Code, Status};

use super::outcome;
use super::shed::Shed;
use crate::authn::AuthnError;
use crate::routing::RouteError;
use crate::signer::{AuthzError, IssueError};
use crate::vault::VaultError;

/// A call refused before the handler decided anything: by the admission gate, by tonic
/// reading its message, or for request fields that are not what the API defines.
#[derive(Debug)]
pub enum Rejection {
    /// A `grpc-timeout` header that is not one.
    MalformedTimeout(String),
    /// A request field of the wrong kind (e.g. `metadata.ImpersonatedIdentity` not a string).
    MalformedField(String),
    /// No slot for it: the queue is full, or its deadline leaves no time to wait.
    Shed(Shed),
    /// The message is larger than `server.limits.max_message_bytes`.
    MessageTooLarge(usize),
    /// The message did not arrive within `server.limits.body_timeout`.
    SlowRequest(Duration),
    /// tonic could not decode the message.
    MalformedMessage,
    /// The transport ended the call with `code`.
    Transport(Code),
}

impl Rejection {
    /// The status the caller receives.
    pub fn status(&self) -> Status {
        match self {
            Self::MalformedTimeout(m) | Self::MalformedField(m) => {
                Status::invalid_argument(m.clone())
            }
            Self::Shed(shed) => Status::resource_exhausted(shed.to_string()),
            Self::MessageTooLarge(max) => {
                Status::resource_exhausted(format!("request message larger than {max} bytes"))
            }
            Self::SlowRequest(within) => {
                Status::deadline_exceeded(format!("request message not received within {within:?}"))
            }
            Self::MalformedMessage => Status::invalid_argument("malformed request message"),
            Self::Transport(code) => Status::new(*code, "request refused"),
        }
    }

    /// The stable label of the refusal for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MalformedTimeout(_) | Self::MalformedField(_) | Self::MalformedMessage => {
                "malformed-request"
            }
            Self::Shed(Shed::QueueFull(_)) => "queue-full",
            Self::Shed(Shed::Overloaded(_) | Shed::NoTimeToWait(..)) => "overloaded",
            Self::Shed(Shed::PeerOverloaded(_)) => "peer-overloaded",
            Self::MessageTooLarge(_) => "message-too-large",
            Self::SlowRequest(_) => "slow-request",
            Self::Transport(_) => "transport",
        }
    }

    /// What tonic's own refusal of a message (the handler never ran) means, from its code.
    pub fn from_transport(code: Code, max_message_bytes: usize, body_timeout: Duration) -> Self {
        match code {
            Code::OutOfRange | Code::ResourceExhausted => Self::MessageTooLarge(max_message_bytes),
            Code::DeadlineExceeded => Self::SlowRequest(body_timeout),
            Code::Internal | Code::InvalidArgument | Code::Unknown => Self::MalformedMessage,
            other => Self::Transport(other),
        }
    }
}

/// The gRPC code of a trailers-only answer (a refusal: its status is in the headers), if the
/// answer is one; `None` for an answer whose status comes in the trailers.
pub fn refusal_code(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get(Status::GRPC_STATUS)?;
    let code = std::str::from_utf8(value.as_bytes())
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(Code::from_i32(code))
}

/// Maps a handler's failure to the gRPC code clients act on.
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

    /// Refusals before the handler: permanent ones never carry a code pilot-agent retries;
    /// overload does (`ResourceExhausted`), and each has its own label.
    #[test]
    fn rejections_map_to_codes_and_labels() {
        let cases = [
            (
                Rejection::MalformedTimeout("x".into()),
                Code::InvalidArgument,
                "malformed-request",
            ),
            (
                Rejection::MalformedField("x".into()),
                Code::InvalidArgument,
                "malformed-request",
            ),
            (
                Rejection::Shed(Shed::QueueFull(1)),
                Code::ResourceExhausted,
                "queue-full",
            ),
            (
                Rejection::Shed(Shed::NoTimeToWait(Duration::ZERO, Duration::ZERO)),
                Code::ResourceExhausted,
                "overloaded",
            ),
            (
                Rejection::Shed(Shed::PeerOverloaded(Duration::ZERO)),
                Code::ResourceExhausted,
                "peer-overloaded",
            ),
        ];
        for (rejection, code, reason) in cases {
            assert_eq!(
                (rejection.status().code(), rejection.reason()),
                (code, reason)
            );
        }
        let transport = |code| {
            let r = Rejection::from_transport(code, 16384, Duration::from_secs(5));
            (r.status().code(), r.reason())
        };
        assert_eq!(
            transport(Code::OutOfRange),
            (Code::ResourceExhausted, "message-too-large")
        );
        assert_eq!(
            transport(Code::DeadlineExceeded),
            (Code::DeadlineExceeded, "slow-request")
        );
        assert_eq!(
            transport(Code::Internal),
            (Code::InvalidArgument, "malformed-request")
        );
        assert_eq!(transport(Code::Cancelled), (Code::Cancelled, "transport"));
    }

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
