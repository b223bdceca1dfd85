//! `[server.limits]`: what one connection, one peer and all callers together may hold before
//! they are authenticated. Every bound here is enforced before a token is looked at, so the
//! memory and work an unauthenticated client can cause is bounded by these numbers (the
//! arithmetic is in docs/security-model.md).

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, duration};
use crate::rate::Rate;

/// Open connections (TLS handshakes in progress included). Sized for the shipped 256Mi memory
/// limit: a connection, its streams and their unread data cost ~200 KiB, at most 288 KiB
/// (measured under a flood, tests/abuse.rs), so 512 connections hold at most ~144 MiB.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
/// Open connections from one IP address. Every pod has its own; set it higher (or to
/// `max_connections`) when callers arrive through a gateway or SNAT.
pub const DEFAULT_MAX_CONNECTIONS_PER_PEER: usize = 32;
/// TLS handshakes past the ClientHello in progress at once (the CPU-bound part; waiting for a
/// ClientHello holds only the connection's slot).
pub const DEFAULT_MAX_HANDSHAKES: usize = 64;
/// A connection with no call in progress for this long is closed (GOAWAY); agents reconnect.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// A connection on which no call has authenticated its caller is closed after this long
/// without a call in progress (agents call right after connecting; a connection held open
/// without calling is an attacker's or a broken client's).
pub const DEFAULT_UNPROVEN_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS` advertised on every connection (clients queue
/// calls beyond it; pilot-agent makes one at a time).
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 32;
/// HTTP/2 `SETTINGS_MAX_HEADER_LIST_SIZE`: a service-account token is ~1 KiB.
pub const DEFAULT_MAX_HEADER_LIST_SIZE: u32 = 8 * 1024;
/// Calls from one IP address being received or processed at once; more wait in the queue.
/// Small against `server.max_in_flight` (256), so that even 15 addresses flooding with calls
/// that never finish leave slots free for everyone else.
pub const DEFAULT_MAX_IN_FLIGHT_PER_PEER: usize = 16;
/// Calls waiting for a slot; beyond this a call is refused at once (`ResourceExhausted`).
pub const DEFAULT_MAX_QUEUED: usize = 1024;
/// Authenticated calls that wait for their turn at Vault (`vault.max_requests_per_second`)
/// without holding a slot, so that the admission queue drains into Vault's, where calls for
/// workloads without a certificate go first. Each holds its parsed request and its handler's
/// state, ~10–20 KiB more than a call waiting for a slot (fleet runs, docs/benchmarks.md):
/// 1,024 cost ~10–20 MiB. Beyond it a call keeps its slot while it waits; `0` never hands a
/// slot on.
pub const DEFAULT_MAX_WAITING_FOR_VAULT: usize = 1024;
/// The whole request message must have arrived this long after the call was admitted
/// (generous: an overloaded signer may be slow to read what the client already sent).
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(5);
/// Streams a client may reset before the server accepts them (Rapid Reset, CVE-2023-44487).
pub const DEFAULT_MAX_PENDING_RESET_STREAMS: usize = 20;
/// Streams the server may have to reset because of client errors before it closes the
/// connection (MadeYouReset, CVE-2025-8671; unbounded when the option is unset).
pub const DEFAULT_MAX_LOCAL_RESET_STREAMS: usize = 128;
/// TLS handshakes one IP address is served per second after its burst. A handshake costs the
/// signer a key exchange and a signature (~0.1–2 ms with the serving key's type) and the
/// client as little as one replayed ClientHello, so without a rate one address could keep a
/// core busy with handshakes it never finishes. Agents open a connection when they start and
/// when one breaks; beyond the rate a handshake waits for its turn (up to half of
/// `server.handshake_timeout`, else the connection is held until the handshake times out;
/// `server::handshake`). `0` turns it off.
pub const DEFAULT_MAX_HANDSHAKES_PER_SECOND_PER_PEER: u32 = 10;
/// Handshakes one IP address may start at once before the rate above applies: as many as the
/// connections it may hold (`max_connections_per_peer`).
pub const DEFAULT_HANDSHAKE_BURST_PER_PEER: u32 = 32;
/// Refusals of the caller's making (unauthenticated, not permitted, malformed, over a limit)
/// one connection is answered per second before it is paced (`server::pace`): not read for
/// a while, so that it cannot keep the serving threads busy with refusals. An agent is
/// refused at the pace of its retries (seconds apart); `0` turns pacing off.
pub const DEFAULT_MAX_REFUSALS_PER_SECOND: u32 = 10;
/// Refusals one connection is answered at once before the rate above applies: a ztunnel
/// multiplexes its node's calls on one connection, and a full queue refuses them together.
pub const DEFAULT_REFUSAL_BURST: u32 = 32;
/// HTTP/2 frames that oblige the signer to answer (PING and SETTINGS, not their ACKs) one
/// connection may send per second before it is paced like a refused caller
/// (`server::control_frames`). Clients send a SETTINGS when they connect and a PING per
/// keepalive interval (ztunnel: 30 s) or, with flow-control probing, about one per answer;
/// a flood sends hundreds of thousands a second, each answered. `0` turns it off.
pub const DEFAULT_MAX_CONTROL_FRAMES_PER_SECOND: u32 = 10;
/// Such frames one connection may send at once before the rate above applies.
pub const DEFAULT_CONTROL_FRAME_BURST: u32 = 32;

/// Bounds on connections, streams and queued calls, all before authentication.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_connections: usize,
    pub max_connections_per_peer: usize,
    pub max_handshakes: usize,
    pub max_handshakes_per_second_per_peer: u32,
    pub handshake_burst_per_peer: u32,
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    #[serde(with = "duration")]
    pub unproven_idle_timeout: Duration,
    pub max_concurrent_streams: u32,
    pub max_header_list_size: u32,
    pub max_in_flight_per_peer: usize,
    pub max_queued: usize,
    pub max_waiting_for_vault: usize,
    #[serde(with = "duration")]
    pub body_timeout: Duration,
    pub max_pending_reset_streams: usize,
    pub max_local_reset_streams: usize,
    pub max_refusals_per_second: u32,
    pub refusal_burst: u32,
    pub max_control_frames_per_second: u32,
    pub control_frame_burst: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_peer: DEFAULT_MAX_CONNECTIONS_PER_PEER,
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
            max_handshakes_per_second_per_peer: DEFAULT_MAX_HANDSHAKES_PER_SECOND_PER_PEER,
            handshake_burst_per_peer: DEFAULT_HANDSHAKE_BURST_PER_PEER,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            unproven_idle_timeout: DEFAULT_UNPROVEN_IDLE_TIMEOUT,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            max_header_list_size: DEFAULT_MAX_HEADER_LIST_SIZE,
            max_in_flight_per_peer: DEFAULT_MAX_IN_FLIGHT_PER_PEER,
            max_queued: DEFAULT_MAX_QUEUED,
            max_waiting_for_vault: DEFAULT_MAX_WAITING_FOR_VAULT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            max_pending_reset_streams: DEFAULT_MAX_PENDING_RESET_STREAMS,
            max_local_reset_streams: DEFAULT_MAX_LOCAL_RESET_STREAMS,
            max_refusals_per_second: DEFAULT_MAX_REFUSALS_PER_SECOND,
            refusal_burst: DEFAULT_REFUSAL_BURST,
            max_control_frames_per_second: DEFAULT_MAX_CONTROL_FRAMES_PER_SECOND,
            control_frame_burst: DEFAULT_CONTROL_FRAME_BURST,
        }
    }
}

impl LimitsConfig {
    /// The refusals one connection is answered before it is paced; `None`: never paced.
    pub fn refusal_rate(&self) -> Option<Rate> {
        Rate::per_second(self.max_refusals_per_second, self.refusal_burst)
    }

    /// The PING and SETTINGS frames one connection may send before it is paced; `None`: never
    /// paced for them.
    pub fn control_frame_rate(&self) -> Option<Rate> {
        Rate::per_second(self.max_control_frames_per_second, self.control_frame_burst)
    }

    /// The TLS handshakes one IP address is served; `None`: unlimited.
    pub fn handshake_rate_per_peer(&self) -> Option<Rate> {
        Rate::per_second(
            self.max_handshakes_per_second_per_peer,
            self.handshake_burst_per_peer,
        )
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("server.limits.max_connections", self.max_connections),
            (
                "server.limits.max_connections_per_peer",
                self.max_connections_per_peer,
            ),
            ("server.limits.max_handshakes", self.max_handshakes),
            (
                "server.limits.max_concurrent_streams",
                self.max_concurrent_streams as usize,
            ),
            (
                "server.limits.max_in_flight_per_peer",
                self.max_in_flight_per_peer,
            ),
            (
                "server.limits.max_local_reset_streams",
                self.max_local_reset_streams,
            ),
            (
                "server.limits.max_pending_reset_streams",
                self.max_pending_reset_streams,
            ),
            ("server.limits.refusal_burst", self.refusal_burst as usize),
            (
                "server.limits.control_frame_burst",
                self.control_frame_burst as usize,
            ),
            (
                "server.limits.handshake_burst_per_peer",
                self.handshake_burst_per_peer as usize,
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(key, "must be at least 1"));
            }
        }
        if self.max_connections_per_peer > self.max_connections {
            return Err(ConfigError::invalid(
                "server.limits.max_connections_per_peer",
                "must not exceed server.limits.max_connections",
            ));
        }
        if self.max_header_list_size < 1024 {
            return Err(ConfigError::invalid(
                "server.limits.max_header_list_size",
                "must be at least 1024 (a service-account token alone is ~1 KiB)",
            ));
        }
        for (key, d) in [
            ("server.limits.idle_timeout", self.idle_timeout),
            (
                "server.limits.unproven_idle_timeout",
                self.unproven_idle_timeout,
            ),
            ("server.limits.body_timeout", self.body_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::invalid(key, "must be positive"));
            }
        }
        Ok(())
    }
}
