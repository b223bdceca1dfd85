//! Serving workers: single-threaded tokio runtimes, each serving the connections handed to it
//! from start to end, with connections packed onto as few of them as keep up.
//!
//! Measured at c=32 on two cores shared with OpenBao and the load generator
//! (docs/benchmarks.md), a call costs the signer ~26 % less CPU on one busy thread than spread
//! over two half-idle ones: on tokio's shared runtime a call's tasks (its stream, its
//! connection, the Vault connection it uses, the I/O driver) wake each other across threads,
//! and every thread that goes idle between calls comes back to a cold cache and pays a
//! `futex`/`epoll_wait` round trip. So a connection lives on one worker, every task of its calls
//! runs there (each worker has its own Vault connection pool: [`current`] picks it), and a new
//! connection goes to the first worker that is not busy ([`Packing`], 60 % by default), spilling
//! to the next only when it is.
//!
//! Connections live long (pilot-agent and ztunnel keep one for up to
//! `server.max_connection_age`), and many can open at once while every worker is idle (after
//! a restart, every node's ztunnel), so load can grow on a worker after its connections were
//! placed. A worker more than [`OVERFLOW_MARGIN`] above the packing threshold therefore hands
//! its new calls to the least busy worker while one has room ([`Workers::overflow`]): the
//! connection's TLS and HTTP/2 stay where they are, the call's checks and Vault request run
//! on the other thread. Connections are never closed to move them: a tonic client (ztunnel,
//! agentgateway) fails a call it had queued on a connection that sends GOAWAY (`Cancelled`).

use std::cell::Cell;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// How often each worker measures how busy its thread was.
pub const LOAD_INTERVAL: Duration = Duration::from_millis(250);
/// How much busier than [`Packing`]'s threshold a worker must be to hand new calls to another
/// (per mille).
pub const OVERFLOW_MARGIN: u32 = 250;
/// Highest `server.worker_packing`: a thread is never filled further than this before the
/// next one is used (it overflows above 95 %).
pub const MAX_PACKING: f64 = 0.7;

/// `server.worker_packing`: the share of its time (0 to [`MAX_PACKING`]) below which a serving
/// thread takes new connections ahead of the threads after it; a thread more than
/// [`OVERFLOW_MARGIN`] above it hands new calls to the least busy thread while one is below
/// it. `0` spreads connections over the least busy threads and never hands calls over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "f64")]
pub struct Packing {
    /// Per mille.
    below: u32,
}

impl Packing {
    /// The default: 60 %, where a thread still has room for bursts while it batches its work.
    pub const DEFAULT: Packing = Packing { below: 600 };

    fn overflow_above(self) -> u32 {
        self.below + OVERFLOW_MARGIN
    }
}

impl TryFrom<f64> for Packing {
    type Error = String;

    fn try_from(share: f64) -> Result<Self, String> {
        if !(0.0..=MAX_PACKING).contains(&share) {
            return Err(format!(
                "must be a share of a thread's time from 0 to {MAX_PACKING}, not {share}"
            ));
        }
        Ok(Self {
            below: (share * 1000.0).round() as u32,
        })
    }
}

thread_local! {
    /// 1-based index of the serving worker on this thread; 0 on every other thread.
    static CURRENT: Cell<usize> = const { Cell::new(0) };
}

/// The serving worker this thread is (1, 2, …), or 0 when it is not one: what per-worker
/// state (the Vault connection pools) is chosen by.
pub fn current() -> usize {
    CURRENT.with(Cell::get)
}

/// The cores this process may use (affinity and cgroup quota included): how many serving
/// workers `server.workers = 0` starts.
pub fn available() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// What the others see of one worker.
struct Load {
    /// Connections it serves.
    open: AtomicUsize,
    /// Share of the last [`LOAD_INTERVAL`] its thread spent on the CPU, per mille.
    busy: AtomicU32,
}

/// A set of running serving workers; dropping it stops them (their tasks are dropped).
pub struct Workers {
    packing: Packing,
    handles: Vec<Handle>,
    loads: Arc<[Load]>,
    _stop: Vec<oneshot::Sender<()>>,
}

/// A connection's place on its worker: counts it as open until dropped.
pub struct Assigned {
    loads: Arc<[Load]>,
    index: usize,
}

impl Drop for Assigned {
    fn drop(&mut self) {
        self.loads[self.index].open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Workers {
    /// Starts `configured` workers (`server.workers`; `0`: one per core, [`available`]), each a
    /// thread running a current-thread runtime, packed by `packing`.
    pub fn start(configured: usize, packing: Packing) -> io::Result<Self> {
        let count = match configured {
            0 => available(),
            n => n,
        };
        let loads: Arc<[Load]> = (0..count)
            .map(|_| Load {
                open: AtomicUsize::new(0),
                busy: AtomicU32::new(0),
            })
            .collect();
        let mut handles = Vec::with_capacity(count);
        let mut stops = Vec::with_capacity(count);
        for index in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let (stop, stopped) = oneshot::channel::<()>();
            stops.push(stop);
            let loads = loads.clone();
            std::thread::Builder::new()
                .name(format!("serve-{}", index + 1))
                .spawn(move || {
                    CURRENT.with(|c| c.set(index + 1));
                    runtime.block_on(async {
                        tokio::select! {
                            _ = stopped => {}
                            () = measure(&loads[index]) => {}
                        }
                    });
                })?;
        }
        Ok(Self {
            packing,
            handles,
            loads,
            _stop: stops,
        })
    }

    /// The worker a new connection goes to ([`place`]), and its place there.
    pub fn assign(&self) -> (&Handle, Assigned) {
        let open: Vec<usize> = self
            .loads
            .iter()
            .map(|l| l.open.load(Ordering::Relaxed))
            .collect();
        let index = place(&self.busy(), &open, self.packing);
        self.loads[index].open.fetch_add(1, Ordering::Relaxed);
        (
            &self.handles[index],
            Assigned {
                loads: self.loads.clone(),
                index,
            },
        )
    }

    /// Where a call arriving on this thread should run instead, when this thread is a worker
    /// well above the packing threshold and another has room (see the module doc); `None`:
    /// here.
    pub fn overflow(&self) -> Option<&Handle> {
        let here = current().checked_sub(1)?;
        let busy = |i: usize| self.loads[i].busy.load(Ordering::Relaxed);
        overflow_to(busy, self.loads.len(), here, self.packing).map(|i| &self.handles[i])
    }

    /// Each worker's busy share over the last [`LOAD_INTERVAL`] (0 to 1), first worker first.
    pub fn busy_shares(&self) -> impl Iterator<Item = f64> + '_ {
        self.loads
            .iter()
            .map(|l| f64::from(l.busy.load(Ordering::Relaxed)) / 1000.0)
    }

    fn busy(&self) -> Vec<u32> {
        self.loads
            .iter()
            .map(|l| l.busy.load(Ordering::Relaxed))
            .collect()
    }
}

/// Where a new connection goes, given each worker's busy share (per mille) and open
/// connections: the first worker below the packing threshold, else the least busy, the one
/// with fewer connections among equally busy ones (so `0` spreads idle workers' connections
/// evenly).
fn place(busy: &[u32], open: &[usize], packing: Packing) -> usize {
    busy.iter()
        .position(|&b| b < packing.below)
        .or_else(|| (0..busy.len()).min_by_key(|&i| (busy[i], open[i])))
        .unwrap_or(0)
}

/// Where a call on worker `here` of `count` goes instead, `busy` reading a worker's busy share
/// (per mille): the least busy worker, when `here` is more than [`OVERFLOW_MARGIN`] above the
/// packing threshold and that one is below it. A call on a thread with room (the common case,
/// once per call) reads its own share only.
fn overflow_to(
    busy: impl Fn(usize) -> u32,
    count: usize,
    here: usize,
    packing: Packing,
) -> Option<usize> {
    if here >= count || busy(here) <= packing.overflow_above() {
        return None;
    }
    (0..count)
        .filter(|&i| i != here)
        .map(|i| (i, busy(i)))
        .min_by_key(|&(_, b)| b)
        .filter(|&(_, b)| b < packing.below)
        .map(|(i, _)| i)
}

/// Runs on a worker: measures its thread's busy share every [`LOAD_INTERVAL`].
async fn measure(load: &Load) {
    let mut ticker = tokio::time::interval(LOAD_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = (tokio::time::Instant::now(), crate::cpu_time::thread_cpu());
    loop {
        ticker.tick().await;
        let now = (tokio::time::Instant::now(), crate::cpu_time::thread_cpu());
        let wall = now.0.duration_since(last.0).as_secs_f64();
        let cpu = now.1.saturating_sub(last.1).as_secs_f64();
        last = now;
        if wall > 0.0 {
            let busy = (cpu / wall * 1000.0).min(1000.0) as u32;
            load.busy.store(busy, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`overflow_to`] over a slice of busy shares.
    fn over(busy: &[u32], here: usize, packing: Packing) -> Option<usize> {
        overflow_to(|i| busy[i], busy.len(), here, packing)
    }

    #[test]
    fn connections_are_packed_onto_the_first_worker_with_room() {
        let p = Packing::DEFAULT;
        assert_eq!(
            place(&[0, 0, 0], &[9, 0, 0], p),
            0,
            "packed, however many it has"
        );
        assert_eq!(place(&[599, 0], &[1, 0], p), 0);
        assert_eq!(place(&[600, 100, 0], &[1, 1, 1], p), 1);
        assert_eq!(
            place(&[900, 700, 650], &[1, 1, 1], p),
            2,
            "all busy: the least busy"
        );
        assert_eq!(
            place(&[900, 900], &[3, 2], p),
            1,
            "equally busy: fewer connections"
        );
        assert_eq!(place(&[], &[], p), 0);
        let spread = Packing::try_from(0.0).unwrap();
        assert_eq!(
            place(&[300, 100, 200], &[0, 5, 0], spread),
            1,
            "0: the least busy"
        );
        assert_eq!(
            place(&[0, 0, 0], &[2, 1, 2], spread),
            1,
            "0: idle workers in turn"
        );
    }

    #[test]
    fn a_busy_worker_hands_calls_to_the_least_busy_one_with_room() {
        let p = Packing::DEFAULT;
        assert_eq!(over(&[900, 100, 50], 0, p), Some(2));
        assert_eq!(over(&[900, 700], 0, p), None, "nowhere with room");
        assert_eq!(over(&[850, 0], 0, p), None, "not above 60 % + 25 %");
        assert_eq!(over(&[900], 0, p), None, "a single worker");
        assert_eq!(over(&[100, 950], 1, p), Some(0));
        assert_eq!(over(&[900, 100], 5, p), None, "not a worker of this set");
        let spread = Packing::try_from(0.0).unwrap();
        assert_eq!(over(&[1000, 0], 0, spread), None, "0 never hands over");
    }

    #[test]
    fn packing_is_a_share_up_to_the_maximum() {
        assert_eq!(Packing::try_from(0.6), Ok(Packing::DEFAULT));
        assert_eq!(Packing::try_from(0.7).map(|p| p.overflow_above()), Ok(950));
        for bad in [-0.1, 0.71, 1.0, f64::NAN] {
            let e = Packing::try_from(bad).unwrap_err();
            assert!(e.contains("from 0 to 0.7"), "{bad}: {e}");
        }
    }

    /// Real runtimes: a connection's task runs on the worker it was assigned to, its thread
    /// knows its index, and the count of open connections follows the claims.
    #[test]
    fn a_connection_runs_on_its_worker_and_is_counted_while_open() {
        let workers = Workers::start(2, Packing::DEFAULT).expect("workers");
        let (handle, first) = workers.assign();
        let on = handle
            .block_on(async { handle.spawn(async { current() }).await })
            .expect("task");
        assert_eq!(on, 1, "the first worker, idle, takes the connection");
        assert_eq!(workers.loads[0].open.load(Ordering::Relaxed), 1);
        drop(first);
        assert_eq!(workers.loads[0].open.load(Ordering::Relaxed), 0);
        assert_eq!(current(), 0, "the test thread is no worker");
        assert_eq!(workers.busy_shares().count(), 2);
    }
}
