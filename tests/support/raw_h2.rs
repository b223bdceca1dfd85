//! A real HTTP/2 client over real TLS (the `h2` crate) for tests that must misbehave on
//! purpose: send headers and hold the message, send malformed headers, open streams from
//! chosen loopback addresses.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::net::{TcpSocket, TcpStream};

/// The gRPC path of CreateCertificate.
pub const PATH: &str = "/istio.v1.auth.IstioCertificateService/CreateCertificate";

/// A TLS connector trusting `ca_pem`, offering ALPN `h2` (as pilot-agent and ztunnel do).
pub fn tls_connector(ca_pem: &[u8]) -> tokio_rustls::TlsConnector {
    tokio_rustls::TlsConnector::from(client_config(ca_pem))
}

/// The bytes of a TLS ClientHello for `localhost` (ALPN `h2`, rustls's default key shares),
/// as a real client's first flight: replayed on new connections, each makes the server do a
/// whole handshake's cryptography while the client does none.
pub fn client_hello(ca_pem: &[u8]) -> Vec<u8> {
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(client_config(ca_pem), name).unwrap();
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).unwrap();
    }
    hello
}

fn client_config(ca_pem: &[u8]) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    istio_vault_ca::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// A TCP connection to `to` from loopback address `src`. `SO_REUSEADDR` lets the kernel pick
/// a local port still in TIME_WAIT from an earlier test's connections: floods leave tens of
/// thousands, and without it a later test's attackers could not connect at all.
pub async fn tcp_from(src: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::new(src, 0))?;
    socket.connect(to).await
}

/// An HTTP/2 connection to the signer at `to` over TLS (name `localhost`), driven in the
/// background.
pub async fn connect(to: SocketAddr, ca_pem: &[u8]) -> h2::client::SendRequest<bytes::Bytes> {
    let tcp = TcpStream::connect(to).await.expect("connect to the signer");
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tls_connector(ca_pem).connect(name, tcp).await.expect("TLS");
    let (send, conn) = h2::client::handshake(tls).await.expect("HTTP/2");
    tokio::spawn(conn);
    send
}

/// A CreateCertificate request's headers with `extra` headers added.
pub fn request(extra: &[(&str, &str)]) -> http::Request<()> {
    let mut req = http::Request::post(format!("https://localhost{PATH}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    req.body(()).unwrap()
}

/// HTTP/2 frame types the frame-level client sends or reads (RFC 9113 §6).
pub mod frame {
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
    pub const END_HEADERS: u8 = 0x4;
    pub const ACK: u8 = 0x1;
    /// GOAWAY's error code for "the peer is behaving badly" (RFC 9113 §7).
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;
}

/// One HTTP/2 frame as read: type, flags, stream, payload.
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// An HTTP/2 connection written frame by frame over real TLS, for the frames a correct client
/// (the `h2` crate) never sends: an attacker's.
pub struct RawWriter(tokio::io::WriteHalf<Tls>);

/// The server's side of a [`RawWriter`]'s connection, frame by frame.
pub struct RawReader(tokio::io::ReadHalf<Tls>);

/// Connects from `src` to `to` over TLS (ALPN `h2`), sends the client preface and an empty
/// SETTINGS frame, and acknowledges the server's.
pub async fn raw_connect(
    src: IpAddr,
    to: SocketAddr,
    ca_pem: &[u8],
) -> std::io::Result<(RawWriter, RawReader)> {
    use tokio::io::AsyncWriteExt;
    let tcp = tcp_from(src, to).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tls_connector(ca_pem).connect(name, tcp).await?;
    let (read, write) = tokio::io::split(tls);
    let mut writer = RawWriter(write);
    writer
        .0
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await?;
    writer.send(frame::SETTINGS, 0, 0, &[]).await?;
    writer.send(frame::SETTINGS, frame::ACK, 0, &[]).await?;
    Ok((writer, RawReader(read)))
}

impl RawWriter {
    /// Writes one frame.
    pub async fn send(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        payload: &[u8],
    ) -> std::io::Result<()> {
        self.send_repeated(kind, flags, stream, payload, 1).await
    }

    /// Writes `count` copies of one frame in one write (a flood's batch: one TLS record per
    /// 16 KiB, as cheap for the sender as frames get).
    pub async fn send_repeated(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        payload: &[u8],
        count: usize,
    ) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        let len = u32::try_from(payload.len()).unwrap();
        let mut one = Vec::with_capacity(9 + payload.len());
        one.extend_from_slice(&len.to_be_bytes()[1..]);
        one.push(kind);
        one.push(flags);
        one.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
        one.extend_from_slice(payload);
        self.0.write_all(&one.repeat(count)).await?;
        self.0.flush().await
    }

    /// HEADERS opening a CreateCertificate call on `stream` (headers only, the message to
    /// follow), encoded as HPACK literals without indexing.
    pub async fn open_call(&mut self, stream: u32) -> std::io::Result<()> {
        let mut block = Vec::new();
        for (name, value) in [
            (":method", "POST"),
            (":scheme", "https"),
            (":path", PATH),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ] {
            // Literal header field without indexing, new name; every length here is < 127.
            block.push(0);
            block.push(u8::try_from(name.len()).unwrap());
            block.extend_from_slice(name.as_bytes());
            block.push(u8::try_from(value.len()).unwrap());
            block.extend_from_slice(value.as_bytes());
        }
        self.send(frame::HEADERS, frame::END_HEADERS, stream, &block)
            .await
    }
}

impl RawReader {
    /// The next frame, or `None` when the server closed the connection.
    pub async fn next(&mut self) -> std::io::Result<Option<Frame>> {
        use tokio::io::AsyncReadExt;
        let mut head = [0u8; 9];
        match self.0.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0; len];
        self.0.read_exact(&mut payload).await?;
        Ok(Some(Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
            payload,
        }))
    }
}
