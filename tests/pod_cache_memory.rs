//! What the pod cache holds per pod, counted by a global allocator: 100,000 realistic pods
//! (decoded from the same JSON shape the API server sends) applied to the index, bytes still
//! allocated divided by pods. Allocator bookkeeping and fragmentation are not included; the
//! whole process's RSS is reported by `tests/pod_cache_scale.rs`.
//!
//! Real: the cache's own types and serde decoding. No server is involved.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use istio_vault_ca::nodes::{PodSet, WatchedPod};
use support::pod_api::realistic_pod;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes the index holds per pod, at 100,000 pods.
#[test]
fn bytes_per_cached_pod() {
    const PODS: usize = 100_000;
    // Decode in pages, as the watcher does, dropping each page after applying it.
    let before = LIVE.load(Ordering::Relaxed);
    let mut set = PodSet::default();
    for start in (0..PODS).step_by(500) {
        let page: Vec<WatchedPod> = (start..start + 500)
            .map(|i| serde_json::from_value(realistic_pod(i)).unwrap())
            .collect();
        for pod in &page {
            set.apply(pod);
        }
    }
    let held = LIVE.load(Ordering::Relaxed) - before;
    let per_pod = held as f64 / PODS as f64;
    eprintln!(
        "pod cache: {PODS} pods hold {:.1} MiB, {per_pod:.0} bytes a pod ({} shared strings)",
        held as f64 / (1024.0 * 1024.0),
        set.shared_strings()
    );
    assert_eq!(set.len(), PODS);
    assert!(
        set.runs_on("team-7", "svc-14", "node-0200")
            && !set.runs_on("team-7", "svc-14", "node-0300"),
        "the index answers"
    );
    // A guard against regressions to whole objects (a full Pod is kilobytes).
    assert!(per_pod < 600.0, "{per_pod:.0} bytes a pod");
}
