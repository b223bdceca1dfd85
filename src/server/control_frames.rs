//! Finding the HTTP/2 frames a client sends that oblige the signer to answer: PING and
//! SETTINGS (not their ACKs), the 2019 control-frame floods (CVE-2019-9512, CVE-2019-9515).
//!
//! h2 answers each and holds at most one answer unsent, so a flood queues nothing; but a client
//! that reads its answers can have a million a second answered on one connection, each a
//! frame decrypted, parsed, answered and encrypted on a serving thread, for nothing that
//! serves a call. h2 has no rate for them, so [`ControlFrames`] reads the connection's
//! plaintext as h2 does, counts those frames and charges them to the connection's
//! [`Pace`], which stops reading the connection once they are over its budget.

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
    /// The frames asking for an answer whose header ends in `bytes`, the next bytes the
    /// connection read. Whatever the bytes are (h2 rejects what is not HTTP/2), this only
    /// counts: it never fails and holds nine bytes at most.
    pub fn scan(&mut self, mut bytes: &[u8]) -> usize {
        let mut asking = 0;
        while !bytes.is_empty() {
            let n = if self.preface > 0 {
                let n = bytes.len().min(usize::from(self.preface));
                self.preface -= n as u8;
                n
            } else if self.payload > 0 {
                let n = bytes.len().min(self.payload);
                self.payload -= n;
                n
            } else {
                let n = bytes.len().min(HEADER_LEN - self.have);
                self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
                self.have += n;
                if self.have == HEADER_LEN {
                    self.have = 0;
                    let [l0, l1, l2, kind, flags, ..] = self.header;
                    self.payload = u32::from_be_bytes([0, l0, l1, l2]) as usize;
                    asking += usize::from(matches!(kind, SETTINGS | PING) && flags & ACK == 0);
                }
                n
            };
            bytes = &bytes[n..];
        }
        asking
    }
}

/// A served connection's plaintext stream, whose PING and SETTINGS frames are charged to the
/// connection's [`Pace`]. While the connection is paused nothing more is read, also within
/// the poll that paused it.
pub struct ControlFrames<T> {
    inner: T,
    scanner: FrameScanner,
    pace: Arc<Pace>,
}

impl<T> ControlFrames<T> {
    pub fn new(inner: T, pace: Arc<Pace>) -> Self {
        Self {
            inner,
            scanner: FrameScanner::default(),
            pace,
        }
    }
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
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let asking = this.scanner.scan(&buf.filled()[before..]);
        this.pace.control_frames(asking);
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

    #[test]
    fn counts_pings_and_settings_but_not_acks_or_payloads() {
        let (s, asking) = stream();
        assert_eq!(FrameScanner::default().scan(&s), asking);
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
        let (opening, _) = stream();
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

        let flood = frame(PING, 0, &[9; 8]).repeat(500);
        tokio::io::AsyncWriteExt::write_all(&mut client_write, &flood)
            .await
            .unwrap();
        let n = tokio::io::AsyncReadExt::read(&mut server, &mut buf)
            .await
            .unwrap();
        assert_eq!(n, flood.len(), "what was read is handed on");
        assert!(pace.paused_until().is_some(), "500 PINGs at once pause it");

        tokio::io::AsyncWriteExt::write_all(&mut client_write, b"more")
            .await
            .unwrap();
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut small = [0; 4];
        let mut read = ReadBuf::new(&mut small);
        assert!(
            Pin::new(&mut server)
                .poll_read(&mut cx, &mut read)
                .is_pending(),
            "read while paused"
        );
        tokio::time::advance(super::super::pace::MAX_PAUSE).await;
        assert!(
            Pin::new(&mut server)
                .poll_read(&mut cx, &mut read)
                .is_ready()
        );
        assert_eq!(read.filled(), b"more");
    }
}
