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
    tokio_rustls::TlsConnector::from(Arc::new(config))
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
