//! The rules every outbound HTTP client of the crate follows (Vault, JWKS and OIDC discovery),
//! decided here once:
//!
//! - **Scheme**: `http://` only to a loopback host, unless the operator opted in for that
//!   server ([`check_scheme`]). Keys, tokens and CSRs never cross a network in cleartext by
//!   accident.
//! - **Redirects** ([`redirect_policy`]): followed only to the same origin (scheme, host, port)
//!   as the request, at most [`MAX_REDIRECTS`] times. reqwest drops only `Authorization` and
//!   `Cookie` on a cross-origin redirect; `X-Vault-Token`, the CSR and any other header would
//!   follow, so a redirect elsewhere (or to `http://`) is never followed: the 3xx answer is the
//!   answer.
//! - **Body size** ([`read_capped`]): an answer larger than its limit is refused from its
//!   `Content-Length`, or as soon as the bytes read pass the limit, never buffered whole.
//!
//! The Kubernetes client (`kube`) follows no redirect at all and its list pages are bounded
//! by the page size the watches ask for (`kube_watch`).

use reqwest::Url;

/// Most redirects followed for one request (to the same origin).
pub const MAX_REDIRECTS: usize = 3;

/// Largest answer read from Vault when `vault.max_response_bytes` is not set: a sign answer is
/// a few KiB (leaf, chain); an issuer list of hundreds of issuers stays well below.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 1 << 20;

/// Largest JWKS or OIDC discovery document read (a JWKS holds a handful of keys).
pub const MAX_KEYS_RESPONSE_BYTES: usize = 256 << 10;

/// Why an answer was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("answer larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("reading the answer: {}", error_chain(.0))]
    Transport(reqwest::Error),
}

/// True for hosts that name this machine: `localhost`, 127.0.0.0/8, `::1`.
pub fn is_loopback(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `https://` always; `http://` only to loopback, or with `allow_insecure_http`.
pub fn check_scheme(url: &Url, allow_insecure_http: bool) -> Result<(), String> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(url) || allow_insecure_http => Ok(()),
        "http" => Err(format!(
            "{}: plain http:// only to a loopback address (set allow_insecure_http = true to send tokens in cleartext anyway)",
            url.origin().ascii_serialization()
        )),
        other => Err(format!("{other}:// is not http(s)")),
    }
}

/// Follows a redirect only to the origin the request was sent to, at most [`MAX_REDIRECTS`]
/// times; any other redirect is not followed and its 3xx answer is returned as it is.
pub fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let same_origin = attempt
            .previous()
            .first()
            .is_some_and(|first| first.origin() == attempt.url().origin());
        if same_origin && attempt.previous().len() <= MAX_REDIRECTS {
            attempt.follow()
        } else {
            attempt.stop()
        }
    })
}

/// Reads `resp`'s body, refusing one longer than `limit` bytes before it is held whole.
pub async fn read_capped(
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<bytes::Bytes, BodyError> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge { limit });
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(BodyError::Transport)? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// An error and its sources, `: `-separated (reqwest's own message omits the cause).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn plain_http_only_to_loopback_unless_allowed() {
        for ok in [
            "https://vault.example:8200",
            "http://127.0.0.1:8200",
            "http://127.3.4.5:8200",
            "http://localhost:8200",
            "http://[::1]:8200",
        ] {
            assert!(check_scheme(&url(ok), false).is_ok(), "{ok}");
        }
        for bad in [
            "http://vault.vault.svc:8200",
            "http://10.0.0.1:8200",
            "http://[::2]:8200",
            "http://localhost.example:8200",
        ] {
            let e = check_scheme(&url(bad), false).unwrap_err();
            assert!(e.contains("allow_insecure_http"), "{bad}: {e}");
            assert!(check_scheme(&url(bad), true).is_ok(), "{bad}");
        }
        assert!(check_scheme(&url("ftp://127.0.0.1/"), true).is_err());
    }
}
