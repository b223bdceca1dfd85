//! Immediate ACKs on accepted connections (`server.tcp_quickack`).
//!
//! ztunnel writes each CreateCertificate request in three writes without `TCP_NODELAY`: after
//! the first segment, Nagle's algorithm holds the rest until that segment is acknowledged, and
//! a Linux receiver that has nothing to send yet delays its ACK by 40 ms or more. Every request
//! then waits ~40 ms, and a ztunnel fetching 20 identities on start takes a second. Linux
//! leaves quick-ACK mode on its own, so it is set again after every read that returned data.
//! Elsewhere than Linux this is a no-op.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// A TCP stream that acknowledges what it reads at once (when `enabled`).
pub struct QuickAck {
    inner: TcpStream,
    enabled: bool,
}

impl QuickAck {
    pub fn new(inner: TcpStream, enabled: bool) -> Self {
        let stream = Self { inner, enabled };
        stream.rearm();
        stream
    }

    /// Asks the kernel to acknowledge the next segments at once.
    fn rearm(&self) {
        #[cfg(target_os = "linux")]
        if self.enabled {
            // Best effort: a failure only means ACKs stay delayed.
            let _ = socket2::SockRef::from(&self.inner).set_tcp_quickack(true);
        }
    }

    /// Whether the socket is in quick-ACK mode now (for tests).
    #[cfg(target_os = "linux")]
    pub fn quickack(&self) -> io::Result<bool> {
        socket2::SockRef::from(&self.inner).tcp_quickack()
    }
}

impl AsyncRead for QuickAck {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.rearm();
        }
        poll
    }
}

writes_pass_through!(QuickAck);

impl Connected for QuickAck {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The mode is set on accept and set again after each read (the kernel clears it).
    #[tokio::test]
    async fn quick_ack_is_rearmed_after_each_read() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let mut server = QuickAck::new(tcp, true);
        assert!(server.quickack().unwrap());
        for _ in 0..3 {
            socket2::SockRef::from(&server.inner)
                .set_tcp_quickack(false)
                .unwrap();
            client.write_all(b"part").await.unwrap();
            let mut buf = [0u8; 4];
            server.read_exact(&mut buf).await.unwrap();
            assert!(server.quickack().unwrap(), "re-armed after the read");
        }
    }
}
