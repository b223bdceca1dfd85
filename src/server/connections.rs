//! The table of open connections on the gRPC port: `server.limits.max_connections` in all,
//! `max_connections_per_peer` per IP address, and who gives way when it is full.
//!
//! A connection is *unproven* until a call on it has authenticated its caller. When the table
//! is full, a new connection from an address holding `c` connections takes the place of:
//!
//! - an unproven connection of an address holding at least `c + 1`: the oldest of the address
//!   holding the most unproven ones, closed at once. So addresses that open connections and
//!   never authenticate (silent TCP, idle TLS) cannot keep agents out: each new arrival of an
//!   agent displaces one of theirs, and their arrivals do not displace the agent's while its
//!   first call authenticates. Unproven connections also idle out sooner
//!   (`server.limits.unproven_idle_timeout`).
//! - else a proven connection of an address holding at least `c + 2`, so that it still holds
//!   as many as the newcomer's after the swap: of the address holding the most, the one idle
//!   the longest or, if each of them carries a call, its oldest. Its caller authenticated, so
//!   it is closed gracefully (GOAWAY), and its calls have [`EVICTED_GRACE`] to finish. So a
//!   few compromised pods, each holding `max_connections_per_peer` connections proven with its
//!   own valid token, give way to agents, whose one connection per address is never taken
//!   for another's; addresses holding equal shares do not displace each other.
//!
//! A connection never gives way to one from an address that holds more than its own.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// How long the calls of a proven connection that gave its place away may take to finish
/// (none, unless every connection of its address carried one); it no longer counts in the
/// table, so this bounds what it holds outside it.
pub(super) const EVICTED_GRACE: Duration = Duration::from_secs(5);

/// Open connections, in total and per source address, in arrival order.
pub(super) struct Connections {
    max: usize,
    max_per_peer: usize,
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    total: usize,
    per_peer: HashMap<IpAddr, usize>,
    /// Connections in the table by arrival (sequence number): their address and their state.
    open: BTreeMap<u64, (IpAddr, Arc<Shared>)>,
    next: u64,
}

/// What a connection shares with the table.
struct Shared {
    /// Set when the table gave its place to another connection (its count is released then).
    evicted: AtomicBool,
    close: Notify,
    /// Set, under the table's lock, once a call on it authenticated its caller.
    proven: AtomicBool,
    /// Calls in progress on it.
    calls: AtomicUsize,
    /// Since when it has had none.
    idle_since: Mutex<Instant>,
}

impl Shared {
    fn new() -> Self {
        Self {
            evicted: AtomicBool::new(false),
            close: Notify::new(),
            proven: AtomicBool::new(false),
            calls: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
        }
    }

    fn idle_since(&self) -> Option<Instant> {
        (self.calls.load(Ordering::Acquire) == 0)
            .then(|| *self.idle_since.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// A connection's place in the table, released when it is dropped.
pub(super) struct ConnectionSlot {
    connections: Arc<Connections>,
    ip: IpAddr,
    seq: u64,
    shared: Arc<Shared>,
}

/// Handed to the calls of one connection: the handler proves the connection once a call on it
/// has authenticated its caller.
#[derive(Clone)]
pub struct ConnectionProof {
    connections: Arc<Connections>,
    shared: Arc<Shared>,
}

/// Counts the calls in progress on one connection: a connection with none idles out, and gives
/// its place away before one that has.
#[derive(Clone)]
pub(super) struct Activity(Arc<Shared>);

/// One call in progress, counted until dropped.
pub(super) struct ActiveCall(Arc<Shared>);

/// Which connection gives way to a new one, and why (the metric's reason).
struct Victim {
    seq: u64,
    reason: &'static str,
}

impl Connections {
    pub(super) fn new(max: usize, max_per_peer: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            max_per_peer,
            table: Mutex::new(Table::default()),
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for a new connection from `ip`, evicting another connection when the table is
    /// full; the reason it is refused otherwise.
    pub(super) fn try_open(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionSlot, &'static str> {
        let mut table = self.table();
        if table.count(ip) >= self.max_per_peer {
            return Err("peer-connection-limit");
        }
        if table.total >= self.max {
            let Some(victim) = table.victim(ip) else {
                return Err("connection-limit");
            };
            let (victim_ip, shared) = table.open.remove(&victim.seq).expect("chosen from it");
            table.release(victim_ip);
            shared.evicted.store(true, Ordering::Release);
            shared.close.notify_one();
            crate::metrics::connection_refused(victim.reason);
        }
        table.total += 1;
        *table.per_peer.entry(ip).or_insert(0) += 1;
        let seq = table.next;
        table.next += 1;
        let shared = Arc::new(Shared::new());
        table.open.insert(seq, (ip, shared.clone()));
        crate::metrics::connections_open(table.total);
        Ok(ConnectionSlot {
            connections: self.clone(),
            ip,
            seq,
            shared,
        })
    }
}

impl Table {
    fn count(&self, ip: IpAddr) -> usize {
        self.per_peer.get(&ip).copied().unwrap_or(0)
    }

    /// Who gives way to a new connection from `newcomer` (see the module's documentation).
    fn victim(&self, newcomer: IpAddr) -> Option<Victim> {
        let held = self.count(newcomer);
        self.unproven_victim(held + 1)
            .or_else(|| self.proven_victim(held + 2))
    }

    /// The oldest unproven connection of the address holding the most unproven ones, among
    /// addresses holding at least `floor` connections.
    fn unproven_victim(&self, floor: usize) -> Option<Victim> {
        let mut counts: HashMap<IpAddr, (usize, u64)> = HashMap::new();
        for (seq, (ip, shared)) in &self.open {
            if shared.proven.load(Ordering::Acquire) || self.count(*ip) < floor {
                continue;
            }
            // Iterated oldest first: the first sequence seen per address is its oldest.
            counts.entry(*ip).or_insert((0, *seq)).0 += 1;
        }
        counts
            .into_values()
            .max_by_key(|(n, oldest)| (*n, std::cmp::Reverse(*oldest)))
            .map(|(_, seq)| Victim {
                seq,
                reason: "evicted-unproven",
            })
    }

    /// A proven connection of the address holding the most connections, among addresses
    /// holding at least `floor`: the one idle the longest, else the oldest.
    fn proven_victim(&self, floor: usize) -> Option<Victim> {
        self.open
            .iter()
            .filter(|(_, (ip, shared))| {
                self.count(*ip) >= floor && shared.proven.load(Ordering::Acquire)
            })
            .max_by_key(|(seq, (ip, shared))| {
                let idle_since = shared.idle_since();
                (
                    self.count(*ip),
                    idle_since.is_some(),
                    std::cmp::Reverse(idle_since),
                    std::cmp::Reverse(**seq),
                )
            })
            .map(|(seq, _)| Victim {
                seq: *seq,
                reason: "evicted-proven",
            })
    }

    fn release(&mut self, ip: IpAddr) {
        self.total -= 1;
        if let Some(n) = self.per_peer.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_peer.remove(&ip);
            }
        }
        crate::metrics::connections_open(self.total);
    }
}

impl ConnectionSlot {
    /// Resolves when the table gave this connection's place to another one.
    pub(super) async fn evicted(&self) {
        self.shared.close.notified().await;
    }

    pub(super) fn is_proven(&self) -> bool {
        self.shared.proven.load(Ordering::Acquire)
    }

    /// What the connection's calls carry to prove it.
    pub(super) fn proof(&self) -> ConnectionProof {
        ConnectionProof {
            connections: self.connections.clone(),
            shared: self.shared.clone(),
        }
    }

    /// What counts the connection's calls.
    pub(super) fn activity(&self) -> Activity {
        Activity(self.shared.clone())
    }

    /// When the connection will have been idle for `timeout`, if it has no call now.
    pub(super) fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        self.shared.idle_since().map(|since| since + timeout)
    }
}

impl ConnectionProof {
    /// A call on this connection authenticated its caller: from now on it gives way only to a
    /// connection from an address holding fewer (see the module's documentation).
    pub fn prove(&self) {
        if self.shared.proven.load(Ordering::Acquire) {
            return;
        }
        // Under the lock, so that the table never chooses it as unproven once it is proven.
        let _table = self.connections.table();
        self.shared.proven.store(true, Ordering::Release);
    }
}

impl Activity {
    pub(super) fn begin(&self) -> ActiveCall {
        self.0.calls.fetch_add(1, Ordering::AcqRel);
        ActiveCall(self.0.clone())
    }
}

impl Drop for ActiveCall {
    fn drop(&mut self) {
        *self.0.idle_since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.0.calls.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut table = self.connections.table();
        table.open.remove(&self.seq);
        if !self.shared.evicted.load(Ordering::Acquire) {
            table.release(self.ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn a_full_table_evicts_the_unproven_connection_of_the_busiest_address() {
        let c = Connections::new(4, 3);
        let a1 = c.try_open(ip(1)).unwrap();
        let a2 = c.try_open(ip(1)).unwrap();
        let b1 = c.try_open(ip(2)).unwrap();
        let agent = c.try_open(ip(3)).unwrap();
        agent.proof().prove();
        assert!(agent.is_proven());
        // Full, and 10.0.0.1 cannot displace its own: it holds no fewer than itself.
        assert_eq!(c.try_open(ip(1)).err(), Some("connection-limit"));
        // 10.0.0.1 holds the most unproven, its oldest gives way to 10.0.0.5.
        let x = c.try_open(ip(5)).unwrap();
        assert!(a1.shared.evicted.load(Ordering::Acquire));
        assert!(!a2.shared.evicted.load(Ordering::Acquire));
        // Now 10.0.0.1, 10.0.0.2 and 10.0.0.5 hold one unproven each: the oldest, a2, goes.
        let _d = c.try_open(ip(4)).unwrap();
        assert!(a2.shared.evicted.load(Ordering::Acquire));
        drop((a1, a2));
        assert_eq!(c.table().total, 4, "evicted slots are not released twice");
        drop(b1);
        assert_eq!(c.table().total, 3);
        let e = c.try_open(ip(5)).unwrap();
        e.proof().prove();
        // Full again; unproven: 10.0.0.5's older and 10.0.0.4's, one each: the older goes.
        let _f = c.try_open(ip(6)).unwrap();
        assert!(x.shared.evicted.load(Ordering::Acquire));
        assert_eq!(c.table().per_peer.get(&ip(5)), Some(&1));
        assert_eq!(c.table().total, 4);
        assert!(!agent.shared.evicted.load(Ordering::Acquire));
    }

    #[test]
    fn per_peer_limit_and_all_proven() {
        let c = Connections::new(2, 1);
        let a = c.try_open(ip(1)).unwrap();
        assert_eq!(c.try_open(ip(1)).err(), Some("peer-connection-limit"));
        let b = c.try_open(ip(2)).unwrap();
        a.proof().prove();
        b.proof().prove();
        assert_eq!(c.try_open(ip(3)).err(), Some("connection-limit"));
        drop(a);
        assert!(c.try_open(ip(3)).is_ok());
    }

    fn evicted(slot: &ConnectionSlot) -> bool {
        slot.shared.evicted.load(Ordering::Acquire)
    }

    /// Every place proven: a new connection takes a connection of the address holding the
    /// most, if that address would still hold as many, its longest idle first; an agent's one
    /// connection is never taken; equal shares do not displace each other.
    #[test]
    fn a_full_proven_table_gives_way_to_fair_shares() {
        let c = Connections::new(5, 4);
        let agent = c.try_open(ip(9)).unwrap();
        let pod: Vec<_> = (0..4).map(|_| c.try_open(ip(1)).unwrap()).collect();
        for slot in pod.iter().chain([&agent]) {
            slot.proof().prove();
        }
        let call = pod[0].activity().begin();
        // 10.0.0.1 holds 4 ≥ 0 + 2: its oldest idle connection goes, not the one with a call.
        let a = c.try_open(ip(8)).unwrap();
        assert!(!evicted(&pod[0]) && evicted(&pod[1]));
        a.proof().prove();
        // 3 ≥ 1 + 2: one more.
        let b = c.try_open(ip(8)).unwrap();
        assert!(evicted(&pod[2]));
        b.proof().prove();
        // 10.0.0.1 and 10.0.0.8 hold 2 each: neither gives way to the other.
        assert_eq!(c.try_open(ip(8)).err(), Some("connection-limit"));
        assert_eq!(c.try_open(ip(1)).err(), Some("connection-limit"));
        // A newcomer: the longest idle of the two (10.0.0.1's, idle since it opened).
        let d = c.try_open(ip(7)).unwrap();
        assert!(evicted(&pod[3]) && !evicted(&pod[0]));
        d.proof().prove();
        let e = c.try_open(ip(6)).unwrap();
        assert!(evicted(&a) && !evicted(&b));
        e.proof().prove();
        // Every address holds one now.
        assert_eq!(c.try_open(ip(5)).err(), Some("connection-limit"));
        assert!(!evicted(&agent));
        assert_eq!(c.table().total, 5);
        drop(call);
    }

    /// An address whose every connection carries a call still gives way: its oldest.
    #[test]
    fn a_busy_address_gives_its_oldest() {
        let c = Connections::new(2, 2);
        let old = c.try_open(ip(1)).unwrap();
        let new = c.try_open(ip(1)).unwrap();
        let calls: Vec<_> = [&old, &new]
            .iter()
            .map(|slot| {
                slot.proof().prove();
                slot.activity().begin()
            })
            .collect();
        let _agent = c.try_open(ip(2)).unwrap();
        assert!(evicted(&old) && !evicted(&new));
        drop(calls);
    }

    /// An agent's new connection, unproven until its call authenticates, is not displaced by
    /// arrivals from an address holding more (a compromised pod reconnecting), only by one
    /// from an address holding none; unproven connections go before proven ones.
    #[test]
    fn an_unproven_connection_gives_way_only_to_lighter_addresses() {
        let c = Connections::new(3, 3);
        let pod: Vec<_> = (0..2).map(|_| c.try_open(ip(1)).unwrap()).collect();
        for slot in &pod {
            slot.proof().prove();
        }
        let agent = c.try_open(ip(2)).unwrap();
        assert_eq!(c.try_open(ip(1)).err(), Some("connection-limit"));
        assert!(!evicted(&agent));
        assert!(c.table().unproven_victim(0).is_some());
        let _other = c.try_open(ip(3)).unwrap();
        assert!(evicted(&agent));
        assert!(pod.iter().all(|slot| !evicted(slot)));
        for slot in &pod {
            slot.proof().prove();
        }
        assert!(
            c.table().unproven_victim(0).is_some(),
            "proving twice changes nothing"
        );
    }
}
