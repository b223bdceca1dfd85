//! Loopback TCP proxies in front of a real OpenBao, for the faults OpenBao cannot produce
//! itself: a node that hangs with its connections up, a slow network, a cut-off.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A loopback listener handing every accepted connection to `handle` (each on its own
/// task); its address as `http://…`.
async fn listen<F, Fut>(handle: F) -> String
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                // Out of descriptors for a moment (a storm of reconnects): keep serving.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            tokio::spawn(handle(client));
        }
    });
    addr
}

/// Forwards `client` to `upstream`, awaiting `hold()` before each client→upstream chunk is
/// written; upstream→client flows freely.
async fn forward<H, HF>(client: TcpStream, upstream: String, mut hold: H)
where
    H: FnMut() -> HF,
    HF: Future<Output = ()>,
{
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut sr, &mut cw).await;
    });
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match cr.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        hold().await;
        if sw.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A loopback TCP proxy to `upstream` that forwards until the returned flag is set, then
/// holds every client→upstream chunk (on open and new connections) until it is cleared: a
/// node that hangs (as under SIGSTOP) while its TCP connections stay up.
pub async fn hanging_proxy(upstream: String) -> (String, Arc<AtomicBool>) {
    let hung = Arc::new(AtomicBool::new(false));
    let flag = hung.clone();
    let addr = listen(move |client| {
        let (up, hung) = (upstream.clone(), flag.clone());
        forward(client, up, move || {
            let hung = hung.clone();
            async move {
                while hung.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        })
    })
    .await;
    (addr, hung)
}

/// A loopback TCP proxy to `upstream` that can be cut: while the returned sender holds `true`,
/// open connections are closed and new ones are closed at once (Vault unreachable, as when
/// a network policy or a partition cuts it off); back to `false`, it forwards again.
pub async fn cuttable_proxy(upstream: String) -> (String, tokio::sync::watch::Sender<bool>) {
    let (cut, watch) = tokio::sync::watch::channel(false);
    let addr = listen(move |mut client| {
        let (up, mut cut) = (upstream.clone(), watch.clone());
        async move {
            if *cut.borrow_and_update() {
                return;
            }
            let Ok(mut server) = TcpStream::connect(up).await else {
                return;
            };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                // Only a cut ends it (not the sender going away).
                Ok(_) = cut.wait_for(|c| *c) => {}
            }
        }
    })
    .await;
    (addr, cut)
}

/// A loopback TCP proxy to `upstream` that holds every client→upstream chunk for `delay`:
/// a slow Vault, which OpenBao itself cannot be made into. `None` upstream = a black hole
/// that accepts connections and never answers.
pub async fn delaying_proxy(upstream: Option<String>, delay: Duration) -> String {
    listen(move |mut client| {
        let upstream = upstream.clone();
        async move {
            let Some(up) = upstream else {
                // Hold the connection open and silent until the peer gives up.
                let mut buf = [0u8; 1024];
                while matches!(client.read(&mut buf).await, Ok(n) if n > 0) {}
                return;
            };
            forward(client, up, move || tokio::time::sleep(delay)).await
        }
    })
    .await
}
