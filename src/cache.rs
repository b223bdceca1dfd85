//! A bounded map of values that expire, keyed by the SHA-256 of a credential: verified callers
//! (authentication) and Vault tokens exchanged for callers' JWTs (delegated signing).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// A SHA-256 digest, the key of every cache entry.
pub type Digest = [u8; 32];

/// Entries live until their own deadline. When full, expired entries are dropped first, then
/// the soonest-expiring tenth at once, so a full cache pays one pass per many inserts rather
/// than one per insert.
pub struct ExpiringCache<V> {
    entries: Mutex<HashMap<Digest, (V, Instant)>>,
    capacity: usize,
}

impl<V: Clone> ExpiringCache<V> {
    /// A cache of at most `capacity` entries (0 disables it).
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, (V, Instant)>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The value under `key`, if it has not expired (an expired one is dropped).
    pub fn get(&self, key: &Digest) -> Option<V> {
        let mut entries = self.lock();
        match entries.get(key) {
            Some((value, until)) if Instant::now() < *until => Some(value.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Remembers `value` until `until` (nothing when disabled or already expired).
    pub fn insert(&self, key: Digest, value: V, until: Instant) {
        let now = Instant::now();
        if self.capacity == 0 || until <= now {
            return;
        }
        let mut entries = self.lock();
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.retain(|_, (_, u)| *u > now);
            let excess = entries.len() + 1;
            if excess > self.capacity {
                let evict = (excess - self.capacity).max(self.capacity / 10);
                let mut by_deadline: Vec<(Instant, Digest)> =
                    entries.iter().map(|(k, (_, u))| (*u, *k)).collect();
                by_deadline.select_nth_unstable(evict - 1);
                for (_, k) in &by_deadline[..evict] {
                    entries.remove(k);
                }
            }
        }
        entries.insert(key, (value, until));
    }

    pub fn remove(&self, key: &Digest) {
        self.lock().remove(key);
    }

    /// Entries held, expired ones included until they are dropped.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn key(i: u8) -> Digest {
        [i; 32]
    }

    #[test]
    fn bounded_expiring_and_soonest_evicted_first() {
        let now = Instant::now();
        let cache = ExpiringCache::new(20);
        for i in 0..20u8 {
            cache.insert(key(i), i, now + Duration::from_secs(100 + u64::from(i)));
        }
        assert_eq!(cache.len(), 20);
        // Full: the two soonest-expiring entries (a tenth) make room.
        cache.insert(key(99), 99, now + Duration::from_secs(1000));
        assert_eq!(cache.len(), 19);
        assert_eq!(cache.get(&key(0)), None);
        assert_eq!(cache.get(&key(1)), None);
        assert_eq!(cache.get(&key(2)), Some(2));
        assert_eq!(cache.get(&key(99)), Some(99));
        // Replacing a key never evicts.
        cache.insert(key(2), 22, now + Duration::from_secs(100));
        assert_eq!(cache.get(&key(2)), Some(22));
        cache.remove(&key(2));
        assert_eq!(cache.get(&key(2)), None);
        // Expired or disabled: nothing is kept.
        cache.insert(key(50), 50, now);
        assert_eq!(cache.get(&key(50)), None);
        let off = ExpiringCache::new(0);
        off.insert(key(1), 1, now + Duration::from_secs(10));
        assert!(off.is_empty());
    }
}
