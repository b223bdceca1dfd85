//! The authenticator's memory of verified tokens, so a caller's token is verified once per
//! lifetime, not once per request.

use std::time::{Duration, Instant, SystemTime};

use super::Caller;
use crate::cache::{Digest, ExpiringCache};

/// Verified tokens by SHA-256: an entry lives until the token's `exp` or `max_age`, whichever
/// is first; failures are never cached.
pub(super) struct ResultCache {
    pub(super) entries: ExpiringCache<Caller>,
    pub(super) max_age: Duration,
}

impl ResultCache {
    /// At most `size` entries, none kept longer than `max_age`.
    pub(super) fn new(size: usize, max_age: Duration) -> Self {
        Self {
            entries: ExpiringCache::new(size),
            max_age,
        }
    }

    /// SHA-256 of the cluster ID and the token: a token is judged per cluster.
    pub(super) fn key(cluster: &str, token: &str) -> Digest {
        crate::sha256(&[cluster.as_bytes(), &[0], token.as_bytes()])
    }

    pub(super) fn get(&self, key: &Digest) -> Option<Caller> {
        self.entries.get(key)
    }

    pub(super) fn put(&self, key: Digest, caller: &Caller, exp: Option<u64>, max_age: Duration) {
        let now = Instant::now();
        let mut until = now + max_age.min(self.max_age);
        if let Some(exp) = exp {
            let left = exp.saturating_sub(crate::time::unix(SystemTime::now()).max(0) as u64);
            // `exp` is the issuer's: a far-future value must not overflow the clock.
            if let Some(at) = now.checked_add(Duration::from_secs(left)) {
                until = until.min(at);
            }
        }
        self.entries.insert(key, caller.clone(), until);
    }
}
