//! Each answer leaves the signer as one TLS record: HEADERS, DATA and the trailers of a unary
//! call are written together (`server::cork`), so the client takes in one segment, not two.
//!
//! Real parts: OpenBao (dev server, set up by `deploy/vault/setup.py`), the signer in process,
//! a tonic client over real TLS shaped like pilot-agent, and a loopback TCP relay between them
//! that reads the TLS record headers of what the signer sends (it cannot decrypt them).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use istio_vault_ca::client::{self, Shape};
use istio_vault_ca::pb::istio_certificate_service_client::IstioCertificateServiceClient;
use tonic::transport::Channel;

type Client = IstioCertificateServiceClient<Channel>;
use support::{Env, id};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A relay to `upstream` that counts the TLS records flowing back to the client.
async fn record_counting_relay(upstream: String) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let records = Arc::new(AtomicUsize::new(0));
    let counter = records.clone();
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let server = tokio::net::TcpStream::connect(upstream).await.unwrap();
        let (mut cr, mut cw) = client.into_split();
        let (mut sr, mut sw) = server.into_split();
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut cr, &mut sw).await;
        });
        // Walk the record layer: 5-byte header (type, version, length), then the body.
        let mut pending = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            pending.extend_from_slice(&buf[..n]);
            while pending.len() >= 5 {
                let len = u16::from_be_bytes([pending[3], pending[4]]) as usize;
                if pending.len() < 5 + len {
                    break;
                }
                counter.fetch_add(1, Ordering::SeqCst);
                pending.drain(..5 + len);
            }
            if cw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    });
    (addr, records)
}

#[tokio::test]
async fn a_unary_answer_is_one_tls_record() {
    let env = Env::start().await;
    let (relay, records) = record_counting_relay(env.addr.clone()).await;
    let mut grpc = client::connect(&relay, &env.ca_pem, Some("localhost"))
        .await
        .unwrap();
    let call = async |grpc: &mut Client, n: usize| {
        let want = id("default", &format!("sa-{n}"));
        let kc = client::generate_csr(Shape::PilotAgent, &want).unwrap();
        let req = client::build_request(
            Shape::PilotAgent,
            &kc.csr_pem,
            &want,
            &env.opts("default", &format!("sa-{n}")),
        )
        .unwrap();
        let chain = grpc
            .create_certificate(req)
            .await
            .unwrap()
            .into_inner()
            .cert_chain;
        assert!(chain.len() >= 2);
    };
    // The handshake, the HTTP/2 preface and the first answer.
    call(&mut grpc, 0).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let before = records.load(Ordering::SeqCst);
    const CALLS: usize = 10;
    for n in 1..=CALLS {
        call(&mut grpc, n).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let per_call = records.load(Ordering::SeqCst) - before;
    // Without coalescing: two records per answer (HEADERS + DATA, then the trailers).
    assert!(
        per_call <= CALLS + 2,
        "{per_call} TLS records for {CALLS} answers"
    );
    assert!(per_call >= CALLS, "every answer seen ({per_call})");
}
