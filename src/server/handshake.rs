//! The TLS handshake of a connection on the gRPC port, and what bounds the work it costs.
//!
//! A handshake costs the signer a key exchange and a signature (~0.1–2 ms with the serving
//! key's type) and the client as little as one replayed ClientHello. So:
//! - waiting for the ClientHello costs nothing but the connection's slot;
//! - then the source address waits for its turn (`max_handshakes_per_second_per_peer` after
//!   `handshake_burst_per_peer`); a turn further away than half of `server.handshake_timeout`
//!   is not taken, and the connection is held unread until the handshake times out, so an
//!   address cannot open connections faster than its allowance of them times out;
//! - the cryptographic part holds one of `max_handshakes` permits, **until the server's first
//!   flight is written** (ServerHello to Finished in TLS 1.3: the key exchange and the
//!   signature are done by then). Waiting for the client's answer holds no permit, so clients
//!   that take the flight and never answer cannot keep everyone else's handshakes waiting.
//!   What follows the answer (TLS 1.2's client key exchange, a client certificate's chain,
//!   which webpki checks with at most 100 signatures) runs within the address's rate only.

use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Semaphore, oneshot};
use tokio::time::Instant;
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

use crate::rate::{KeyedLimiter, Rate};

/// Why a handshake did not give a TLS session.
#[derive(Debug)]
pub enum Refused {
    /// Its address's next turn was too far away; held until the handshake timed out.
    Rate,
    /// Not complete within `server.handshake_timeout`.
    Timeout,
    /// The client's bytes were not a handshake the signer completes.
    Failed(io::Error),
}

/// The port's handshakes: their configuration, permits and each address's turns.
pub struct Handshakes {
    tls_config: Arc<rustls::ServerConfig>,
    permits: Semaphore,
    turns: Option<KeyedLimiter<IpAddr>>,
    timeout: Duration,
}

impl Handshakes {
    pub fn new(
        tls_config: Arc<rustls::ServerConfig>,
        max_at_once: usize,
        per_peer: Option<Rate>,
        timeout: Duration,
    ) -> Self {
        Self {
            tls_config,
            permits: Semaphore::new(max_at_once),
            turns: per_peer.map(KeyedLimiter::new),
            timeout,
        }
    }

    /// Completes the server side of a handshake on `io`, from source address `ip`.
    pub async fn accept<IO>(&self, io: IO, ip: IpAddr) -> Result<TlsStream<Flight<IO>>, Refused>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let deadline = Instant::now() + self.timeout;
        // `timeout_at` polls the handshake first: one held over its rate until the deadline
        // ends as `Rate`, not `Timeout`.
        tokio::time::timeout_at(deadline, self.steps(io, ip, deadline))
            .await
            .unwrap_or(Err(Refused::Timeout))
    }

    async fn steps<IO>(
        &self,
        io: IO,
        ip: IpAddr,
        deadline: Instant,
    ) -> Result<TlsStream<Flight<IO>>, Refused>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let (written, flight) = oneshot::channel();
        let io = Flight {
            inner: io,
            written: Some(written),
        };
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io)
            .await
            .map_err(Refused::Failed)?;
        if let Some(turns) = &self.turns {
            let latest = deadline - self.timeout / 2;
            match turns.reserve(&ip, latest.saturating_duration_since(Instant::now())) {
                Ok(wait) if wait.is_zero() => {}
                Ok(wait) => {
                    crate::metrics::handshake_waited();
                    tokio::time::sleep(wait).await;
                }
                Err(_) => {
                    tokio::time::sleep_until(deadline).await;
                    return Err(Refused::Rate);
                }
            }
        }
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| Refused::Failed(io::Error::other(e)))?;
        let accept = start.into_stream(self.tls_config.clone());
        tokio::pin!(accept);
        tokio::select! {
            biased;
            done = &mut accept => return done.map_err(Refused::Failed),
            // Written (or the connection is gone): the cryptographic part is over.
            _ = flight => drop(permit),
        }
        accept.await.map_err(Refused::Failed)
    }
}

/// A connection's byte stream that tells, once, when the signer first wrote to it: during a
/// handshake, that its first flight is out.
pub struct Flight<IO> {
    inner: IO,
    written: Option<oneshot::Sender<()>>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Flight<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> Flight<IO> {
    fn wrote<T>(&mut self, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if matches!(poll, Poll::Ready(Ok(_)))
            && let Some(written) = self.written.take()
        {
            let _ = written.send(());
        }
        poll
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Flight<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<IO: Connected> Connected for Flight<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::oneshot::error::TryRecvError;

    /// Reading tells nothing; the first write tells, once.
    #[tokio::test]
    async fn the_first_write_is_told() {
        let (io, mut peer) = tokio::io::duplex(64);
        let (written, mut told) = oneshot::channel();
        let mut flight = Flight {
            inner: io,
            written: Some(written),
        };
        peer.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        flight.read_exact(&mut buf).await.unwrap();
        assert!(matches!(told.try_recv(), Err(TryRecvError::Empty)));
        flight.write_all(b"flight").await.unwrap();
        assert_eq!(told.try_recv(), Ok(()));
        flight.write_all(b"more").await.unwrap();
        assert!(flight.written.is_none());
    }
}
