//! The calling thread's CPU time: what a synchronous piece of work (a signature check) cost,
//! whatever else shares the cores. Reading the clock is one system call (~0.2 µs here).

use std::time::Duration;

use rustix::time::{ClockId, clock_gettime};

/// CPU time the calling thread has used so far.
pub fn thread_cpu() -> Duration {
    let t = clock_gettime(ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// Runs `f` and returns its result with the CPU time this thread spent in it. `f` is
/// synchronous, so the thread that starts it is the one that finishes it.
pub fn measure<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = thread_cpu();
    let out = f();
    (out, thread_cpu().saturating_sub(start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_work_done_and_not_time_asleep() {
        let ((), busy) = measure(|| {
            let mut x = 0u64;
            let until = std::time::Instant::now() + Duration::from_millis(20);
            while std::time::Instant::now() < until {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        });
        let ((), asleep) = measure(|| std::thread::sleep(Duration::from_millis(50)));
        assert!(
            busy >= Duration::from_millis(5),
            "busy loop counted {busy:?}"
        );
        assert!(asleep < busy, "sleep counted {asleep:?}, busy {busy:?}");
    }
}
