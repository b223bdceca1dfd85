//! The queue between signing and the ledger, and the writer that empties it in batches.

use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::{LedgerStore, Record};
use crate::backoff::Backoff;
use crate::config::LedgerConfig;

/// How long a shutdown waits for the last records to be written.
pub const FINAL_FLUSH_LIMIT: Duration = Duration::from_secs(10);
/// Retry delays of a failed write.
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// What signing holds: hands records to the writer without waiting.
#[derive(Clone, Debug)]
pub struct Ledger {
    tx: mpsc::Sender<Record>,
}

/// What happened to a record handed to [`Ledger::record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    Queued,
    /// The queue was full (`ledger.max_pending`) or the writer gone: the record is lost.
    Dropped,
}

impl Ledger {
    /// Queues `record` for the next batch; never waits.
    pub fn record(&self, record: Record) -> Queued {
        match self.tx.try_send(record) {
            Ok(()) => Queued::Queued,
            Err(_) => Queued::Dropped,
        }
    }

    /// Records waiting to be written.
    pub fn pending(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

/// One replica's writer: batches of up to `max_batch` records, written at most
/// `flush_interval` after the first of them was queued.
pub struct LedgerWriter {
    rx: mpsc::Receiver<Record>,
    store: LedgerStore,
    /// This replica's part of every batch name.
    replica: String,
    seq: u64,
    flush_interval: Duration,
    max_batch: usize,
}

/// The outcome of one batch write, for the caller's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    Written(usize),
    Failed,
}

impl LedgerWriter {
    /// The queue (`max_pending` deep) and its writer.
    pub fn new(store: LedgerStore, config: &LedgerConfig) -> (Ledger, Self) {
        let (tx, rx) = mpsc::channel(config.max_pending);
        let writer = Self {
            rx,
            store,
            replica: replica_name(),
            seq: 0,
            flush_interval: config.flush_interval,
            max_batch: config.max_batch,
        };
        (Ledger { tx }, writer)
    }

    /// Writes batches until `closing` turns true, then writes what is queued (for at most
    /// [`FINAL_FLUSH_LIMIT`]) and returns how many records could not be written. `report` is
    /// told each write's outcome.
    pub async fn run(
        mut self,
        mut closing: watch::Receiver<bool>,
        report: impl Fn(Flush) + Send + Sync,
    ) -> usize {
        let mut batch: Vec<Record> = Vec::new();
        let mut backoff = Backoff::new(RETRY_FIRST, RETRY_MAX).jittered();
        loop {
            if batch.is_empty() {
                tokio::select! {
                    r = self.rx.recv() => match r {
                        Some(r) => batch.push(r),
                        None => return 0,
                    },
                    () = closed(&mut closing) => return self.close(batch, &report).await,
                }
                let deadline = Instant::now() + self.flush_interval;
                while batch.len() < self.max_batch {
                    tokio::select! {
                        r = self.rx.recv() => match r {
                            Some(r) => batch.push(r),
                            None => break,
                        },
                        () = tokio::time::sleep_until(deadline) => break,
                        () = closed(&mut closing) => break,
                    }
                }
            }
            if self.write(&batch).await {
                report(Flush::Written(batch.len()));
                batch.clear();
                backoff.reset();
            } else {
                report(Flush::Failed);
                tokio::select! {
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                    () = closed(&mut closing) => return self.close(batch, &report).await,
                }
            }
            if *closing.borrow() {
                return self.close(batch, &report).await;
            }
        }
    }

    /// Writes `batch` and everything still queued, within [`FINAL_FLUSH_LIMIT`]; returns how
    /// many records were not written.
    async fn close(mut self, mut batch: Vec<Record>, report: &(impl Fn(Flush) + Sync)) -> usize {
        self.rx.close();
        while let Ok(r) = self.rx.try_recv() {
            batch.push(r);
        }
        let deadline = Instant::now() + FINAL_FLUSH_LIMIT;
        let mut backoff = Backoff::new(RETRY_FIRST, RETRY_MAX).jittered();
        while !batch.is_empty() {
            let n = batch.len().min(self.max_batch);
            let written = tokio::time::timeout_at(deadline, self.write(&batch[..n]))
                .await
                .unwrap_or(false);
            if written {
                report(Flush::Written(n));
                batch.drain(..n);
            } else {
                report(Flush::Failed);
                let delay = backoff.next_delay();
                if Instant::now() + delay >= deadline {
                    break;
                }
                tokio::time::sleep(delay).await;
            }
        }
        batch.len()
    }

    /// One batch, named by this replica, the time and a sequence number.
    async fn write(&mut self, batch: &[Record]) -> bool {
        self.seq += 1;
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let name = format!("{}-{millis}-{}", self.replica, self.seq);
        let mut records = batch.to_vec();
        for r in &mut records {
            if r.issuer_key_id.is_empty() {
                r.issuer_key_id = Record::issuer_key_id(&r.certificate);
            }
        }
        match self.store.write(&name, &records).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, records = records.len(), "writing the issued-certificate ledger failed; retrying");
                false
            }
        }
    }
}

/// Resolves once `flag` is true (or its sender is gone).
async fn closed(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|c| *c).await;
}

/// This replica's name in batch names: the pod's name (`HOSTNAME`) when it is a usable path
/// segment, else random.
fn replica_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 63
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        })
        .unwrap_or_else(|| {
            let mut bytes = [0u8; 6];
            let _ = aws_lc_rs::rand::fill(&mut bytes);
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        })
}

/// Deletes windows that have passed, every `interval`, until `shutdown`; `report` gets how
/// many batches each round deleted (or the error).
pub async fn prune_periodically(
    store: LedgerStore,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
    report: impl Fn(Result<usize, crate::vault::VaultError>) + Send,
) {
    loop {
        let now = crate::time::unix(std::time::SystemTime::now());
        report(store.prune(now).await);
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = closed(&mut shutdown) => return,
        }
    }
}
