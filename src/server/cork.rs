//! Coalesced writes on served connections: what one poll of an HTTP/2 connection writes goes to
//! the TLS stream as one write, after the poll.
//!
//! h2 flushes its codec before it queues any frame behind a DATA frame larger than 256 bytes,
//! so every unary answer (HEADERS, a 2–3 KiB DATA frame, trailing HEADERS) left as two TLS
//! records in two `writev` calls, and the client had two segments to take in. [`Corked`] drives
//! the connection future: while it polls the connection, the connection's writes and flushes
//! only fill a buffer ([`CorkedIo`]); when the poll returns, the buffer is written and flushed.
//! Nothing waits longer than the poll that produced it, and the buffer is bounded
//! ([`MAX_CORKED`], 16 KiB): a peer that does not read stops the writer as before.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes held back while the connection is polled: one full TLS record's worth (answers are
/// 2–5 KiB). Past this, what is held is written first, so a connection never holds more, also
/// when its peer stops reading (the buffer keeps its capacity, at most this, while open).
pub const MAX_CORKED: usize = 16 * 1024;

/// The write side shared by the connection (through [`CorkedIo`]) and its driver ([`Corked`]);
/// both live in the connection's task, so the lock is never contended.
struct Shared<T> {
    io: T,
    out: BytesMut,
    corked: bool,
}

impl<T: AsyncWrite + Unpin> Shared<T> {
    /// Writes the held bytes, then flushes the stream.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_write_out(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.out))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out.advance(n);
        }
        Poll::Ready(Ok(()))
    }

    /// Makes room for `len` more bytes: holds them while corked and under the bound, else
    /// writes out what is held first.
    fn poll_room(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<()>> {
        if !self.corked || self.out.len() + len > MAX_CORKED {
            ready!(self.poll_write_out(cx))?;
        }
        Poll::Ready(Ok(()))
    }
}

fn lock<T>(shared: &Mutex<Shared<T>>) -> MutexGuard<'_, Shared<T>> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The stream handed to the HTTP/2 connection.
pub struct CorkedIo<T> {
    shared: Arc<Mutex<Shared<T>>>,
}

/// Drives a connection future over a [`CorkedIo`], writing out after each poll.
pub struct Corked<F: Future, T> {
    conn: Pin<Box<F>>,
    shared: Arc<Mutex<Shared<T>>>,
    /// The connection's result, held until its last bytes are out.
    done: Option<F::Output>,
}

/// Wraps `io` for a connection and returns it with the cork its driver needs.
pub fn cork<T>(io: T) -> (CorkedIo<T>, Cork<T>) {
    let shared = Arc::new(Mutex::new(Shared {
        io,
        out: BytesMut::new(),
        corked: false,
    }));
    (
        CorkedIo {
            shared: shared.clone(),
        },
        Cork { shared },
    )
}

/// The driver's half of [`cork`], until the connection future exists.
pub struct Cork<T> {
    shared: Arc<Mutex<Shared<T>>>,
}

impl<T> Cork<T> {
    /// Drives `conn`, which must do its I/O through this cork's [`CorkedIo`].
    pub fn drive<F: Future>(self, conn: F) -> Corked<F, T> {
        Corked {
            conn: Box::pin(conn),
            shared: self.shared,
            done: None,
        }
    }
}

impl<F: Future, T> Corked<F, T> {
    /// The connection, for calls made between polls (graceful shutdown).
    pub fn conn(&mut self) -> Pin<&mut F> {
        self.conn.as_mut()
    }
}

impl<F: Future, T: AsyncWrite + Unpin> Future for Corked<F, T>
where
    F::Output: Unpin,
{
    /// The connection's own result, or the error that ended writing out its last poll.
    type Output = Result<F::Output, io::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if this.done.is_none() {
            lock(&this.shared).corked = true;
            let polled = this.conn.as_mut().poll(cx);
            lock(&this.shared).corked = false;
            if let Poll::Ready(output) = polled {
                this.done = Some(output);
            }
        }
        // Pending: the socket is full and the task is woken when it drains; the held bytes
        // stay and are written after the next poll (the connection's writes wait at the bound).
        ready!(lock(&this.shared).poll_drain(cx))?;
        match this.done.take() {
            Some(output) => Poll::Ready(Ok(output)),
            None => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CorkedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut lock(&self.shared).io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CorkedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut shared = lock(&self.shared);
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        ready!(shared.poll_room(cx, len))?;
        if !shared.corked {
            return Pin::new(&mut shared.io).poll_write_vectored(cx, bufs);
        }
        // Take what fits under the bound (all of it unless one write is larger).
        let mut room = MAX_CORKED.saturating_sub(shared.out.len());
        let mut taken = 0;
        for b in bufs {
            let n = b.len().min(room);
            shared.out.extend_from_slice(&b[..n]);
            taken += n;
            room -= n;
            if room == 0 {
                break;
            }
        }
        Poll::Ready(Ok(taken))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut shared = lock(&self.shared);
        if shared.corked {
            // Written and flushed when the driver's poll of the connection returns.
            return Poll::Ready(Ok(()));
        }
        shared.poll_drain(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut shared = lock(&self.shared);
        ready!(shared.poll_drain(cx))?;
        Pin::new(&mut shared.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use tokio::io::AsyncWriteExt;

    /// Records each write that reaches the stream; can refuse writes (a full socket).
    #[derive(Clone, Default)]
    struct Recorder {
        writes: Arc<Mutex<Vec<Vec<u8>>>>,
        flushes: Arc<AtomicUsize>,
        full: Arc<AtomicBool>,
        waker: Arc<Mutex<Option<std::task::Waker>>>,
    }

    impl Recorder {
        fn writes(&self) -> Vec<Vec<u8>> {
            self.writes.lock().unwrap().clone()
        }
        fn unblock(&self) {
            self.full.store(false, Ordering::SeqCst);
            if let Some(w) = self.waker.lock().unwrap().take() {
                w.wake();
            }
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            if self.full.load(Ordering::SeqCst) {
                *self.waker.lock().unwrap() = Some(cx.waker().clone());
                return Poll::Pending;
            }
            self.writes.lock().unwrap().push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushes.fetch_add(1, Ordering::SeqCst);
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Like h2 answering a unary call: HEADERS, flush (a large DATA frame follows), DATA,
    /// flush, trailers, flush — all within one poll of the connection.
    async fn answer(io: &mut CorkedIo<Recorder>) -> io::Result<()> {
        io.write_all(b"headers|").await?;
        io.flush().await?;
        io.write_all(&[b'd'; 2048]).await?;
        io.flush().await?;
        io.write_all(b"|trailers").await?;
        io.flush().await
    }

    #[tokio::test]
    async fn one_poll_of_writes_and_flushes_reaches_the_stream_as_one_write() {
        let recorder = Recorder::default();
        let (mut io, cork) = cork(recorder.clone());
        cork.drive(async move { answer(&mut io).await })
            .await
            .unwrap()
            .unwrap();
        let writes = recorder.writes();
        assert_eq!(writes.len(), 1, "one write for the whole answer");
        assert_eq!(writes[0].len(), 8 + 2048 + 9);
        assert!(writes[0].starts_with(b"headers|") && writes[0].ends_with(b"|trailers"));
        assert!(recorder.flushes.load(Ordering::SeqCst) >= 1, "and flushed");
    }

    /// A write larger than the bound passes through in pieces no larger than the bound.
    #[tokio::test]
    async fn a_write_past_the_bound_goes_out_in_bounded_pieces() {
        let recorder = Recorder::default();
        let (mut io, cork) = cork(recorder.clone());
        let big: Vec<u8> = (0..2 * MAX_CORKED + 500).map(|n| (n % 253) as u8).collect();
        let sent = big.clone();
        cork.drive(async move {
            io.write_all(b"head").await?;
            io.write_all(&sent).await?;
            io.flush().await
        })
        .await
        .unwrap()
        .unwrap();
        let writes = recorder.writes();
        assert!(writes.iter().all(|w| w.len() <= MAX_CORKED));
        assert_eq!(writes.concat(), [b"head".as_slice(), &big].concat());
    }

    #[tokio::test]
    async fn outside_a_driven_poll_writes_go_straight_through() {
        let recorder = Recorder::default();
        let (mut io, _cork) = cork(recorder.clone());
        answer(&mut io).await.unwrap();
        assert_eq!(recorder.writes().len(), 3);
    }

    /// A peer that stops reading: the held bytes stop at the bound, the connection's writes
    /// wait, and everything arrives in order once the socket drains.
    #[tokio::test]
    async fn a_full_socket_bounds_what_is_held_and_loses_nothing() {
        let recorder = Recorder::default();
        recorder.full.store(true, Ordering::SeqCst);
        let (mut io, cork) = cork(recorder.clone());
        let total = 3 * MAX_CORKED + 123;
        let written = Arc::new(AtomicUsize::new(0));
        let progress = written.clone();
        let task = tokio::spawn(cork.drive(async move {
            for i in 0..total / 1000 + 1 {
                let chunk = vec![(i % 251) as u8; 1000.min(total - i * 1000)];
                io.write_all(&chunk).await?;
                progress.fetch_add(chunk.len(), Ordering::SeqCst);
            }
            io.flush().await
        }));
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        let held = written.load(Ordering::SeqCst);
        assert!(
            held <= MAX_CORKED + 1000,
            "held {held} bytes past the bound"
        );
        assert!(recorder.writes().is_empty());
        recorder.unblock();
        task.await.unwrap().unwrap().unwrap();
        let out: Vec<u8> = recorder.writes().concat();
        assert_eq!(out.len(), total);
        let expected: Vec<u8> = (0..total).map(|n| ((n / 1000) % 251) as u8).collect();
        assert!(out == expected, "bytes in order");
    }
}
