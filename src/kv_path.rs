//! A key (or folder) under a KV v2 mount, built only from segments that cannot leave the
//! mount or the folder (a leaf: the ledger's config checks its prefix with it, the Vault
//! client writes to it).

/// A key (or folder) under a KV v2 mount: segments of `[A-Za-z0-9._-]`, never `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvPath(String);

/// A segment that is not allowed in a KV path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("KV path segment {0:?}")]
pub struct BadSegment(pub String);

impl KvPath {
    /// Joins `segments`; refuses anything that could leave the mount or the folder.
    pub fn new<S: AsRef<str>>(segments: &[S]) -> Result<Self, BadSegment> {
        let mut path = String::new();
        for s in segments {
            let s = s.as_ref();
            let ok = !s.is_empty()
                && s != "."
                && s != ".."
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
            if !ok {
                return Err(BadSegment(s.to_owned()));
            }
            if !path.is_empty() {
                path.push('/');
            }
            path.push_str(s);
        }
        Ok(Self(path))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_cannot_leave_their_folder() {
        assert_eq!(
            KvPath::new(&["issued", "123", "a-1"]).unwrap().as_str(),
            "issued/123/a-1"
        );
        for bad in ["..", ".", "", "a/b", "a?list=true", "a%2f", "ä"] {
            assert!(KvPath::new(&["issued", bad]).is_err(), "{bad:?}");
        }
    }
}
