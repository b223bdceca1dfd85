//! Shared copies of the strings many pods repeat (namespaces, service accounts, node names):
//! one allocation per distinct value, released when the last pod using it goes.

use std::collections::HashSet;
use std::sync::Arc;

/// A set of shared strings.
#[derive(Debug, Default, Clone)]
pub struct Interner {
    set: HashSet<Arc<str>>,
}

impl Interner {
    /// The shared copy of `s`, made on first use.
    pub fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(existing) = self.set.get(s) {
            return existing.clone();
        }
        let shared: Arc<str> = s.into();
        self.set.insert(shared.clone());
        shared
    }

    /// The shared copy of `s`, if some pod uses it.
    pub fn get(&self, s: &str) -> Option<&Arc<str>> {
        self.set.get(s)
    }

    /// Gives back one user's copy; the string is forgotten when only the set still holds it.
    pub fn release(&mut self, shared: Arc<str>) {
        if Arc::strong_count(&shared) == 2 {
            self.set.remove(&*shared);
        }
    }

    /// Distinct strings held.
    pub fn len(&self) -> usize {
        self.set.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_and_releases() {
        let mut i = Interner::default();
        let a = i.intern("ns");
        let b = i.intern("ns");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(i.len(), 1);
        i.release(a);
        assert_eq!(i.len(), 1, "still used by b");
        i.release(b);
        assert_eq!(i.len(), 0);
    }
}
