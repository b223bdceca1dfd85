//! The table of open connections on the gRPC port: `server.limits.max_connections` in all,
//! `max_connections_per_peer` per IP address, and who gives way when it is full.
//!
//! A connection is *unproven* until a call on it has authenticated its caller. When the table
//! is full, a new connection takes the place of an unproven one: the oldest of the address
//! holding the most unproven connections, which is closed at once. Proven connections are never
//! evicted. So addresses that open connections and never authenticate (silent TCP, idle TLS)
//! cannot keep agents out: each new arrival displaces one of theirs, and agents, once their
//! first call has authenticated, keep their place. Unproven connections also idle out sooner
//! (`server.limits.unproven_idle_timeout`).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Open connections, in total and per source address, and the unproven ones in arrival order.
pub(super) struct Connections {
    max: usize,
    max_per_peer: usize,
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    total: usize,
    per_peer: HashMap<IpAddr, usize>,
    /// Unproven connections by arrival (sequence number): their address and how to close them.
    unproven: BTreeMap<u64, (IpAddr, Arc<Shared>)>,
    next: u64,
}

/// What a connection shares with the table.
#[derive(Default)]
struct Shared {
    /// Set when the table gave its place to another connection (its count is released then).
    evicted: AtomicBool,
    close: Notify,
    proven: AtomicBool,
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
    seq: u64,
    shared: Arc<Shared>,
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

    /// A place for a new connection from `ip`, evicting an unproven connection when the table
    /// is full; the reason it is refused otherwise.
    pub(super) fn try_open(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionSlot, &'static str> {
        let mut table = self.table();
        if table.per_peer.get(&ip).copied().unwrap_or(0) >= self.max_per_peer {
            return Err("peer-connection-limit");
        }
        if table.total >= self.max {
            let Some(victim) = table.victim() else {
                return Err("connection-limit");
            };
            let (victim_ip, shared) = table.unproven.remove(&victim).expect("chosen from it");
            table.release(victim_ip);
            shared.evicted.store(true, Ordering::Release);
            shared.close.notify_one();
            crate::metrics::connection_refused("evicted-unproven");
        }
        table.total += 1;
        *table.per_peer.entry(ip).or_insert(0) += 1;
        let seq = table.next;
        table.next += 1;
        let shared = Arc::new(Shared::default());
        table.unproven.insert(seq, (ip, shared.clone()));
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
    /// The oldest unproven connection of the address holding the most unproven ones.
    fn victim(&self) -> Option<u64> {
        let mut counts: HashMap<IpAddr, (usize, u64)> = HashMap::new();
        for (seq, (ip, _)) in &self.unproven {
            // Iterated oldest first: the first sequence seen per address is its oldest.
            counts.entry(*ip).or_insert((0, *seq)).0 += 1;
        }
        counts
            .into_values()
            .max_by_key(|(n, oldest)| (*n, std::cmp::Reverse(*oldest)))
            .map(|(_, oldest)| oldest)
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
            seq: self.seq,
            shared: self.shared.clone(),
        }
    }
}

impl ConnectionProof {
    /// A call on this connection authenticated its caller: it is never evicted from now on.
    pub fn prove(&self) {
        if self.shared.proven.swap(true, Ordering::AcqRel) {
            return;
        }
        self.connections.table().unproven.remove(&self.seq);
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut table = self.connections.table();
        table.unproven.remove(&self.seq);
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
        // Full: 10.0.0.1 holds the most unproven, its oldest gives way.
        let _a3 = c.try_open(ip(1)).unwrap();
        assert!(a1.shared.evicted.load(Ordering::Acquire));
        assert!(!a2.shared.evicted.load(Ordering::Acquire));
        // Now 10.0.0.1 holds 2 unproven (a2 and the new one), 10.0.0.2 one: a2 goes next.
        let _d = c.try_open(ip(4)).unwrap();
        assert!(a2.shared.evicted.load(Ordering::Acquire));
        drop((a1, a2));
        assert_eq!(c.table().total, 4, "evicted slots are not released twice");
        drop(b1);
        assert_eq!(c.table().total, 3);
        let e = c.try_open(ip(5)).unwrap();
        e.proof().prove();
        // Full again; unproven: 10.0.0.1's newest and 10.0.0.4's, one each: the older goes.
        let _f = c.try_open(ip(6)).unwrap();
        assert_eq!(c.table().per_peer.get(&ip(1)), None);
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
}
