//! Finding the HTTP/2 frames a client sends that oblige the signer to answer: PING and
//! SETTINGS (not their ACKs), the 2019 control-frame floods (CVE-2019-9512, CVE-2019-9515).
//!
//! h2 answers each and holds at most one answer unsent, so a flood queues nothing; but a client
//! that reads its answers can have a million a second answered on one connection, each a
//! frame decrypted, parsed, answered and encrypted on a serving thread, for nothing that
//! serves a call. h2 has no rate for them, so [`ControlFrames`] reads the connection's
//! plaintext as h2 does, counts those frames and charges them to the connection's
//! [`Pace`], which stops reading the connection once they are over its budget; of the read
//! that went over, only what precedes the end of that frame's header is handed on before the
//! pause. So the budget is kept to the frame, whatever one TLS record carries.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, ReadBuf};

use super::pace::Pace;

/// The client connection preface (RFC 9113 §3.4), read before the first frame.
const PREFACE_LEN: u8 = 24;
/// A frame header: length (3 bytes), type, flags, stream (4 bytes).
const HEADER_LEN: usize = 9;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
/// The ACK flag of SETTINGS and PING.
const ACK: u8 = 0x1;

/// Follows frame boundaries in a connection's inbound byte stream, across reads of any size.
#[derive(Debug)]
pub struct FrameScanner {
    /// Bytes of the preface still to pass.
    preface: u8,
    header: [u8; HEADER_LEN],
    /// Bytes of `header` collected so far.
    have: usize,
    /// Payload bytes of the current frame still to pass.
    payload: usize,
}

impl Default for FrameScanner {
    fn default() -> Self {
        Self {
            preface: PREFACE_LEN,
            header: [0; HEADER_LEN],
            have: 0,
            payload: 0,
        }
    }
}

impl FrameScanner {
    /// Passes over the next bytes the connection read, up to the end of the header of the
    /// next frame asking for an answer: how many bytes that is, and whether such a header
    /// ended there. Whatever the bytes are (h2 rejects what is not HTTP/2), this never fails
    /// and holds nine bytes at most.
    pub fn next_asking(&mut self, bytes: &[u8]) -> (usize, bool) {
        let mut used = 0;
        while used < bytes.len() {
            let rest = &bytes[used..];
            if self.preface > 0 {
                let n = rest.len().min(usize::from(self.preface));
                self.preface -= n as u8;
                used += n;
            } else if self.payload > 0 {
                let n = rest.len().min(self.payload);
                self.payload -= n;
                used += n;
            } else {
                let n = rest.len().min(HEADER_LEN - self.have);
                self.header[self.have..self.have + n].copy_from_slice(&rest[..n]);
                self.have += n;
                used += n;
                if self.have == HEADER_LEN {
                    self.have = 0;
                    let [l0, l1, l2, kind, flags, ..] = self.header;
                    self.payload = u32::from_be_bytes([0, l0, l1, l2]) as usize;
                    if matches!(kind, SETTINGS | PING) && flags & ACK == 0 {
                        return (used, true);
                    }
                }
            }
        }
        (used, false)
    }
}

/// A served connection's plaintext stream, whose PING and SETTINGS frames are charged to the
/// connection's [`Pace`]. A read is handed on up to the frame that paused the connection, the
/// rest held until the pause is over; while it is paused nothing more is read. So once its
/// budget is spent, a flooding connection is answered one frame per pause, its rate.
pub struct ControlFrames<T> {
    inner: T,
    scanner: FrameScanner,
    pace: Arc<Pace>,
    /// What a read brought past the frame that paused the connection (at most one read;
    /// nothing more is read while it is not handed on).
    held: Vec<u8>,
}

impl<T> ControlFrames<T> {
    pub fn new(inner: T, pace: Arc<Pace>) -> Self {
        Self {
            inner,
            scanner: FrameScanner::default(),
            pace,
            held: Vec::new(),
        }
    }
}

/// How much of `bytes`, the next the connection read, may be handed on now: all, or up to
/// the end of the header of the frame that paused the connection.
fn admit(scanner: &mut FrameScanner, pace: &Pace, bytes: &[u8]) -> usize {
    let mut used = 0;
    while used < bytes.len() {
        let (n, asking) = scanner.next_asking(&bytes[used..]);
        used += n;
        if asking && pace.control_frames(1) {
            break;
        }
    }
    used
}

impl<T: AsyncRead + Unpin> AsyncRead for ControlFrames<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pace.paused_until().is_some() {
            // Polled again at once, the connection's driver (`pace::Paced`) sleeps out the
            // pause before it polls the connection again.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if !this.held.is_empty() {
            let n = this.held.len().min(buf.remaining());
            let admitted = admit(&mut this.scanner, &this.pace, &this.held[..n]);
            buf.put_slice(&this.held[..admitted]);
            this.held.drain(..admitted);
            if this.held.is_empty() {
                this.held = Vec::new();
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let read = &buf.filled()[before..];
        let admitted = admit(&mut this.scanner, &this.pace, read);
        if admitted < read.len() {
            this.held.extend_from_slice(&read[admitted..]);
            buf.set_filled(before + admitted);
        }
        Poll::Ready(Ok(()))
    }
}

writes_pass_through!(ControlFrames<T>, T);

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;
    use std::time::Duration;

    use super::*;
    use crate::rate::Rate;
    use crate::server::pace::MAX_PAUSE;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags, 0, 0, 0, 0];
        f.extend_from_slice(payload);
        f
    }

    /// A client's opening as pilot-agent's and ztunnel's libraries write it, then a call and
    /// the frames a flood is made of.
    fn stream() -> (Vec<u8>, usize) {
        let mut s = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        s.extend(frame(SETTINGS, 0, &[0, 3, 0, 0, 0, 100])); // asks: 1
        s.extend(frame(0x8, 0, &[0, 0, 0xff, 0xff])); // WINDOW_UPDATE
        s.extend(frame(SETTINGS, ACK, &[])); // the ACK of the signer's SETTINGS
        s.extend(frame(0x1, 0x4, &[0x82; 40])); // HEADERS
        // DATA whose payload looks like PING frames: not frames, not counted.
        s.extend(frame(0x0, 0x1, &frame(PING, 0, &[1; 8]).repeat(20)));
        s.extend(frame(PING, ACK, &[2; 8])); // the ACK of the signer's keepalive PING
        for _ in 0..5 {
            s.extend(frame(PING, 0, &[3; 8])); // asks: 5
        }
        s.extend(frame(SETTINGS, 0, &[])); // asks: 1
        (s, 7)
    }

    impl FrameScanner {
        /// How many frames asking for an answer have their header end in `bytes`.
        fn scan(&mut self, mut bytes: &[u8]) -> usize {
            let mut asking = 0;
            while !bytes.is_empty() {
                let (used, asks) = self.next_asking(bytes);
                asking += usize::from(asks);
                bytes = &bytes[used..];
            }
            asking
        }
    }

    #[test]
    fn counts_pings_and_settings_but_not_acks_or_payloads() {
        let (s, asking) = stream();
        assert_eq!(FrameScanner::default().scan(&s), asking);
        // Each stop is at the end of an asking frame's header.
        let mut scanner = FrameScanner::default();
        let (used, asks) = scanner.next_asking(&s);
        assert!(asks);
        assert_eq!(
            used,
            24 + 9,
            "the preface, then the first SETTINGS frame's header"
        );
    }

    #[test]
    fn reads_of_any_size_count_the_same() {
        let (s, asking) = stream();
        for size in [1, 2, 5, 8, 9, 10, 17, 24, 25, 100] {
            let mut scanner = FrameScanner::default();
            let counted: usize = s.chunks(size).map(|c| scanner.scan(c)).sum();
            assert_eq!(counted, asking, "reads of {size} bytes");
        }
    }

    #[test]
    fn garbage_is_counted_as_whatever_it_looks_like_without_failing() {
        let mut scanner = FrameScanner::default();
        scanner.scan(&[0xff; 24 + 9]);
        // A header claiming a 16 MiB payload: the next bytes are passed over as its payload.
        assert_eq!(scanner.scan(&frame(PING, 0, &[0; 8]).repeat(1000)), 0);
        assert_eq!(scanner.payload, 0xff_ffff - 17_000);
    }

    fn rate(per_second: u32, burst: u32) -> Option<Rate> {
        Some(Rate::new(
            NonZeroU32::new(per_second).unwrap(),
            Duration::from_secs(1),
            NonZeroU32::new(burst).unwrap(),
        ))
    }

    /// A flood read through the wrapper pauses the connection, and nothing more is read until
    /// the pause is over; a client's opening does not.
    #[tokio::test(start_paused = true)]
    async fn a_flood_pauses_the_connection_and_reading_stops() {
        let pace = Arc::new(Pace::new(([127, 0, 0, 1], 1).into(), None, rate(10, 32)));
        let (client, server) = tokio::io::duplex(1 << 16);
        let mut server = ControlFrames::new(server, pace.clone());
        let (_client_read, mut client_write) = tokio::io::split(client);
        let (opening, opened_with) = stream();
        tokio::io::AsyncWriteExt::write_all(&mut client_write, &opening)
            .await
            .unwrap();
        let mut buf = vec![0; 1 << 16];
        let n = tokio::io::AsyncReadExt::read(&mut server, &mut buf)
            .await
            .unwrap();
        assert_eq!(n, opening.len());
        assert_eq!(
            pace.paused_until(),
            None,
            "a client's opening is not a flood"
        );

        // 500 PINGs in one read: handed on up to the header of the first over the burst of 32
        // (the opening took 7), which paused the connection; the rest is held.
        let flood = frame(PING, 0, &[9; 8]).repeat(500);
        tokio::io::AsyncWriteExt::write_all(&mut client_write, &flood)
            .await
            .unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut client_write, b"more")
            .await
            .unwrap();
        let mut handed = Vec::new();
        let n = tokio::io::AsyncReadExt::read(&mut server, &mut buf)
            .await
            .unwrap();
        // The frame that takes the burst's last place pauses the connection.
        let within = 32 - opened_with - 1;
        assert_eq!(
            n,
            within * 17 + 9,
            "the burst, and the header that paused it"
        );
        handed.extend_from_slice(&buf[..n]);
        assert!(pace.paused_until().is_some(), "500 PINGs at once pause it");

        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut small = [0; 64];
        let mut read = ReadBuf::new(&mut small);
        assert!(
            Pin::new(&mut server)
                .poll_read(&mut cx, &mut read)
                .is_pending(),
            "read while paused"
        );
        // After each pause, one more PING: the connection's rate, 10 a second.
        let start = tokio::time::Instant::now();
        for _ in 0..10 {
            tokio::time::sleep_until(pace.paused_until().expect("paused")).await;
            let mut read = ReadBuf::new(&mut small);
            assert!(
                Pin::new(&mut server)
                    .poll_read(&mut cx, &mut read)
                    .is_ready()
            );
            assert_eq!(read.filled().len(), 8 + 9, "a payload and the next header");
            handed.extend_from_slice(read.filled());
        }
        let took = start.elapsed();
        assert!(
            (Duration::from_millis(900)..=MAX_PAUSE).contains(&took),
            "10 PINGs past the burst took {took:?}"
        );
        // Nothing more is read until what is held is handed on, in order.
        assert!(server.held.len() <= flood.len());
        while handed.len() < flood.len() + 4 {
            if let Some(until) = pace.paused_until() {
                tokio::time::sleep_until(until).await;
            }
            let n = tokio::io::AsyncReadExt::read(&mut server, &mut buf)
                .await
                .unwrap();
            handed.extend_from_slice(&buf[..n]);
        }
        assert_eq!(&handed[..flood.len()], &flood[..]);
        assert_eq!(&handed[flood.len()..], b"more");
        assert!(server.held.capacity() == 0, "nothing held once handed on");
    }
}
