//! A call's deadlines: its own (`grpc-timeout`, which bounds its wait for a slot) and the
//! signer's for its message (`server.limits.body_timeout`, which bounds a trickling client).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tonic::Status;

/// A `grpc-timeout` header that does not follow the gRPC wire format.
#[derive(Debug, thiserror::Error)]
#[error("malformed grpc-timeout header (expected 1-8 digits and a unit of H, M, S, m, u or n)")]
pub struct MalformedTimeout;

/// The call's own deadline (`grpc-timeout`: 1–8 digits then `H`, `M`, `S`, `m`, `u` or `n`),
/// if it sent one.
pub(super) fn grpc_timeout(
    headers: &http::HeaderMap,
) -> Result<Option<Duration>, MalformedTimeout> {
    let Some(value) = headers.get("grpc-timeout") else {
        return Ok(None);
    };
    let value = value.as_bytes();
    let (&unit, digits) = value.split_last().ok_or(MalformedTimeout)?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(MalformedTimeout);
    }
    // At most 8 digits: no overflow below.
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    let timeout = match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return Err(MalformedTimeout),
    };
    Ok(Some(timeout))
}

/// A request body that must end by a deadline: a client that sends headers and then trickles
/// (or never finishes) its message holds its slot for at most `server.limits.body_timeout`.
pub(super) struct Deadline<B> {
    inner: B,
    sleep: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
    done: bool,
}

impl<B> Deadline<B> {
    pub(super) fn new(inner: B, deadline: Instant, timeout: Duration) -> Self {
        Self {
            inner,
            sleep: Box::pin(tokio::time::sleep_until(deadline.into())),
            timeout,
            done: false,
        }
    }
}

impl<B> Body for Deadline<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            if frame
                .as_ref()
                .is_none_or(|f| f.as_ref().is_ok_and(|f| f.is_trailers()))
            {
                this.done = true;
            }
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if !this.done && this.sleep.as_mut().poll(cx).is_ready() {
            this.done = true;
            return Poll::Ready(Some(Err(Box::new(Status::deadline_exceeded(format!(
                "request message not received within {:?}",
                this.timeout
            ))))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
