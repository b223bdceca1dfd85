//! The gRPC port: accepts TCP connections within the connection caps, completes TLS within
//! the bounds of [`super::handshake`] (each address's rate, permits, the deadline), and serves
//! each connection as HTTP/2 with explicit limits (streams, header list, windows, resets), an
//! idle timeout and a maximum age. Every call goes through the [`Gate`] before its message is
//! read.
//!
//! What one connection can hold is bounded by these settings, and the number of connections by
//! `server.limits.max_connections` (per address: `max_connections_per_peer`), so the memory an
//! unauthenticated client can take is bounded by configuration, not by its good will.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::service::Routes;
use tonic::transport::server::Connected;

use super::connections::{ConnectionSlot, Connections, EVICTED_GRACE};
use super::control_frames::ControlFrames;
use super::cork::cork;
use super::executor::CallExecutor;
use super::gate::Gate;
use super::handshake::{Handshakes, Refused};
use super::log_limit::LogLimit;
use super::pace::{Pace, Paced};
use super::quickack::QuickAck;
use crate::config::LimitsConfig;
use crate::worker::Workers;

/// HTTP/2 receive window of one stream: a typical request (1–3 KiB) in one flight; the largest
/// (16 KiB CSR + metadata) takes one window update once the call is admitted and read.
const STREAM_WINDOW: u32 = 16 * 1024;
/// HTTP/2 receive window of a connection: what a client may have sent that the signer has not
/// read yet, over all its streams (calls waiting at the gate read nothing). Room for a full
/// set of concurrent calls (ztunnel multiplexes them on one connection) without stalling.
const CONNECTION_WINDOW: u32 = 32 * 1024;
/// Largest HTTP/2 frame accepted (the protocol minimum).
const MAX_FRAME: u32 = 16 * 1024;
/// Response bytes buffered per stream (answers are a few KiB).
const MAX_SEND_BUFFER: usize = 64 * 1024;

/// How often the serving threads' busy shares are published as metrics.
const BUSY_REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// How the port serves connections.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub limits: LimitsConfig,
    pub handshake_timeout: Duration,
    /// `TCP_QUICKACK` on accepted connections ([`QuickAck`]).
    pub tcp_quickack: bool,
    pub max_connection_age: Duration,
    pub max_connection_age_grace: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
}

/// Accepts and serves connections until `shutdown`, then lets open calls finish (GOAWAY)
/// and returns when every connection has closed. Each connection is served on one of
/// `workers` (see [`crate::worker`]).
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    listener: TcpListener,
    tls_config: Arc<rustls::ServerConfig>,
    routes: Routes,
    gate: Arc<Gate>,
    options: ServeOptions,
    accepted: Arc<AtomicU64>,
    workers: Workers,
    shutdown: watch::Receiver<bool>,
) {
    let options = Arc::new(options);
    let connections = Connections::new(
        options.limits.max_connections,
        options.limits.max_connections_per_peer,
    );
    let workers = Arc::new(workers);
    let mut http = hyper::server::conn::http2::Builder::new(CallExecutor::new(workers.clone()));
    let limits = &options.limits;
    http.timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_send_buf_size(MAX_SEND_BUFFER)
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(limits.max_header_list_size)
        .max_pending_accept_reset_streams(limits.max_pending_reset_streams)
        .max_local_error_reset_streams(limits.max_local_reset_streams)
        .keep_alive_interval(options.keepalive_interval)
        .keep_alive_timeout(options.keepalive_timeout);
    let port = Arc::new(Port {
        handshakes: Handshakes::new(
            tls_config,
            options.limits.max_handshakes,
            options.limits.handshake_rate_per_peer(),
            options.handshake_timeout,
        ),
        http,
        routes,
        gate,
        options,
        accepted,
        shutdown: shutdown.clone(),
    });
    let mut tasks = tokio::task::JoinSet::new();
    let stop = stopped(shutdown.clone());
    tokio::pin!(stop);
    let mut report = tokio::time::interval(BUSY_REPORT_INTERVAL);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut stop => break,
            _ = report.tick() => {
                crate::metrics::serving_thread_busy(workers.busy_shares());
                continue;
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let ip = canonical(peer.ip());
        let slot = match connections.try_open(ip) {
            Ok(slot) => slot,
            Err(reason) => {
                crate::metrics::connection_refused(reason);
                refused_log(reason);
                continue; // dropping the socket closes it
            }
        };
        let _ = tcp.set_nodelay(true);
        // The socket moves to its worker's own I/O driver.
        let tcp = match tcp.into_std() {
            Ok(tcp) => tcp,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "could not hand the connection to a serving thread");
                continue;
            }
        };
        let (worker, assigned) = workers.assign();
        let port = port.clone();
        tasks.spawn_on(
            async move {
                let _assigned = assigned;
                match TcpStream::from_std(tcp) {
                    Ok(tcp) => connection(port, tcp, peer, slot).await,
                    Err(e) => tracing::debug!(%peer, error = %e, "serving thread could not register the connection"),
                }
            },
            worker,
        );
    }
    drop(listener);
    while tasks.join_next().await.is_some() {}
}

async fn stopped(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// IPv4-mapped IPv6 addresses count as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// One line per refusal at most every 10 s, with the count since the last one.
fn refused_log(reason: &'static str) {
    static LIMIT: LogLimit = LogLimit::new();
    if let Some(suppressed) = LIMIT.due() {
        tracing::warn!(
            reason,
            suppressed,
            "refusing connections over a limit (the reason names it; see server.limits)"
        );
    }
}

/// What every connection of the port is served with.
struct Port {
    handshakes: Handshakes,
    http: hyper::server::conn::http2::Builder<CallExecutor>,
    routes: Routes,
    gate: Arc<Gate>,
    options: Arc<ServeOptions>,
    accepted: Arc<AtomicU64>,
    shutdown: watch::Receiver<bool>,
}

async fn connection(port: Arc<Port>, tcp: TcpStream, peer: SocketAddr, slot: ConnectionSlot) {
    let Port {
        handshakes,
        http,
        routes,
        gate,
        options,
        accepted,
        shutdown,
    } = &*port;
    // The handshake, bounded in rate per address and in permits (`server::handshake`).
    let handshake = async {
        let tcp = QuickAck::new(tcp, options.tcp_quickack);
        tokio::select! {
            r = handshakes.accept(tcp, canonical(peer.ip())) => Some(r),
            () = slot.evicted() => None,
        }
    };
    let tls = match handshake.await {
        None => {
            tracing::debug!(%peer, "connection evicted during its TLS handshake");
            return;
        }
        Some(Ok(tls)) => tls,
        Some(Err(Refused::Failed(e))) => {
            crate::metrics::connection_refused("handshake-failed");
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Some(Err(Refused::Rate)) => {
            crate::metrics::connection_refused("handshake-rate");
            refused_log("handshake-rate");
            return;
        }
        Some(Err(Refused::Timeout)) => {
            crate::metrics::connection_refused("handshake-timeout");
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    accepted.fetch_add(1, Ordering::Relaxed);
    crate::metrics::connection_accepted();
    let info = tls.connect_info();
    let activity = slot.activity();
    let pace = Arc::new(Pace::new(
        peer,
        options.limits.refusal_rate(),
        options.limits.control_frame_rate(),
    ));
    let service = {
        let activity = activity.clone();
        let pace = pace.clone();
        let proof = slot.proof();
        let (gate, routes) = (gate.clone(), routes.clone());
        hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
            let call = activity.begin();
            req.extensions_mut().insert(info.clone());
            req.extensions_mut().insert(proof.clone());
            let (gate, routes, pace) = (gate.clone(), routes.clone(), pace.clone());
            async move {
                let response = gate.run(Some(peer), req, routes).await;
                pace.answered(&response);
                drop(call);
                Ok::<_, std::convert::Infallible>(response)
            }
        })
    };
    // One write per poll of the connection: a unary answer's three frames leave together.
    // Not polled at all while it is paced for its refusals or its PING and SETTINGS frames.
    let (io, cork) = cork(ControlFrames::new(tls, pace.clone()));
    let mut conn = Paced::new(
        cork.drive(http.serve_connection(TokioIo::new(io), service)),
        &pace,
    );
    let idle_timeout = || {
        if slot.is_proven() {
            options.limits.idle_timeout
        } else {
            options
                .limits
                .unproven_idle_timeout
                .min(options.limits.idle_timeout)
        }
    };
    let age = tokio::time::sleep(options.max_connection_age);
    tokio::pin!(age);
    let stop = stopped(shutdown.clone());
    tokio::pin!(stop);
    // Once closing (GOAWAY sent), the calls left have until `hard_stop`.
    let mut hard_stop: Option<Instant> = None;
    let mut evicted = false;
    let mut idle_check = Instant::now() + idle_timeout();
    loop {
        let closing = hard_stop.is_some();
        tokio::select! {
            r = &mut conn => {
                match r {
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "connection ended"),
                    Err(e) => tracing::debug!(%peer, error = %e, "connection ended while writing"),
                    Ok(Ok(())) => {}
                }
                return;
            }
            _ = &mut age, if !closing => {
                hard_stop = Some(Instant::now() + options.max_connection_age_grace);
                conn.get_mut().conn().graceful_shutdown();
            }
            _ = &mut stop, if !closing => {
                hard_stop = Some(Instant::now() + options.max_connection_age_grace);
                conn.get_mut().conn().graceful_shutdown();
            }
            () = slot.evicted(), if !evicted => {
                if !slot.is_proven() {
                    tracing::debug!(%peer, "connection evicted: the table was full and it had not authenticated a call");
                    return;
                }
                tracing::debug!(%peer, "connection evicted: the table was full and its address held the most connections");
                evicted = true;
                let by = Instant::now() + EVICTED_GRACE;
                hard_stop = Some(hard_stop.map_or(by, |at| at.min(by)));
                if !closing {
                    conn.get_mut().conn().graceful_shutdown();
                }
            }
            _ = tokio::time::sleep_until(idle_check), if !closing => {
                match slot.idle_deadline(idle_timeout()) {
                    Some(at) if at <= Instant::now() => {
                        hard_stop = Some(Instant::now() + options.max_connection_age_grace);
                        conn.get_mut().conn().graceful_shutdown();
                    }
                    Some(at) => idle_check = at,
                    None => idle_check = Instant::now() + idle_timeout(),
                }
            }
            _ = tokio::time::sleep_until(hard_stop.unwrap_or_else(Instant::now)), if closing => {
                tracing::debug!(%peer, "closing connection: calls outlived the grace period");
                return;
            }
        }
    }
}
