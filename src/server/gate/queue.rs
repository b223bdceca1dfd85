//! The gate's slots and their queue: who holds a slot, who waits, and whose turn is next.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

use tokio::sync::oneshot;

/// Slots and waiters. Freed slots go to waiting peers in turn (round robin over source
/// addresses), so a peer with a thousand waiting calls delays a peer with one by at most one
/// turn, and a full queue drops the newest waiter of the peer with the most.
#[derive(Default)]
pub(super) struct State {
    pub(super) free: usize,
    pub(super) in_flight: HashMap<IpAddr, usize>,
    waiting: HashMap<IpAddr, VecDeque<Waiter>>,
    /// Peers with waiters, in the order they get the next slot.
    pub(super) turn: VecDeque<IpAddr>,
    pub(super) queued: usize,
    pub(super) next_id: u64,
}

struct Waiter {
    id: u64,
    grant: oneshot::Sender<()>,
}

impl State {
    /// A state with `slots` free slots.
    pub(super) fn new(slots: usize) -> Self {
        Self {
            free: slots,
            ..Self::default()
        }
    }

    /// Takes a free slot for `ip` at once if there is one, `ip` is below `per_peer` and none
    /// of its calls waits already (a newcomer does not pass its own waiting calls).
    pub(super) fn try_start(&mut self, ip: IpAddr, per_peer: usize) -> bool {
        if self.free > 0 && self.running(ip) < per_peer && !self.waiting.contains_key(&ip) {
            self.free -= 1;
            self.start(ip);
            return true;
        }
        false
    }

    /// Queues a waiter for `ip` (making room in a full queue of `max_queued` if another peer
    /// holds more places); its id and the receiver a slot is granted on, or `None` when full.
    pub(super) fn enqueue(
        &mut self,
        ip: IpAddr,
        max_queued: usize,
    ) -> Option<(u64, oneshot::Receiver<()>)> {
        if self.queued >= max_queued && !self.make_room(ip) {
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        let (grant, granted) = oneshot::channel();
        let queue = self.waiting.entry(ip).or_default();
        queue.push_back(Waiter { id, grant });
        if queue.len() == 1 {
            self.turn.push_back(ip);
        }
        self.queued += 1;
        Some((id, granted))
    }

    pub(super) fn running(&self, ip: IpAddr) -> usize {
        self.in_flight.get(&ip).copied().unwrap_or(0)
    }

    fn start(&mut self, ip: IpAddr) {
        *self.in_flight.entry(ip).or_insert(0) += 1;
    }

    pub(super) fn finish(&mut self, ip: IpAddr) {
        if let Some(n) = self.in_flight.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.in_flight.remove(&ip);
            }
        }
    }

    /// Removes waiter `id` of `ip`, if it still waits.
    pub(super) fn forget(&mut self, ip: IpAddr, id: u64) -> bool {
        let Some(queue) = self.waiting.get_mut(&ip) else {
            return false;
        };
        let Some(at) = queue.iter().position(|w| w.id == id) else {
            return false;
        };
        queue.remove(at);
        self.queued -= 1;
        if queue.is_empty() {
            self.waiting.remove(&ip);
            self.turn.retain(|p| *p != ip);
        }
        true
    }

    /// Gives a free slot to the next waiting peer below its own limit; keeps it free if none.
    pub(super) fn hand_over(&mut self, per_peer: usize) {
        let mut tried = 0;
        while tried < self.turn.len() {
            let Some(ip) = self.turn.pop_front() else {
                break;
            };
            if self.running(ip) >= per_peer {
                self.turn.push_back(ip);
                tried += 1;
                continue;
            }
            let Some(queue) = self.waiting.get_mut(&ip) else {
                continue;
            };
            let waiter = queue.pop_front();
            if queue.is_empty() {
                self.waiting.remove(&ip);
            } else {
                self.turn.push_back(ip);
            }
            let Some(waiter) = waiter else { continue };
            self.queued -= 1;
            // A waiter whose call was cancelled is gone: try the next one.
            if waiter.grant.send(()).is_ok() {
                self.start(ip);
                return;
            }
            tried = 0;
        }
        self.free += 1;
    }

    /// Makes room in a full queue for a call from `ip`: drops the newest waiter of the peer
    /// with the most, if that peer has more waiters than `ip` would.
    fn make_room(&mut self, ip: IpAddr) -> bool {
        let mine = self.waiting.get(&ip).map_or(0, VecDeque::len);
        let Some((&hog, len)) = self
            .waiting
            .iter()
            .map(|(p, q)| (p, q.len()))
            .max_by_key(|(_, n)| *n)
        else {
            return false;
        };
        if len <= mine + 1 {
            return false;
        }
        if let Some(queue) = self.waiting.get_mut(&hog) {
            // Dropping the sender tells the waiter it was dropped from the queue.
            queue.pop_back();
            self.queued -= 1;
        }
        true
    }
}
