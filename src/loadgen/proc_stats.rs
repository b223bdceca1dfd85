//! What `/proc` tells of another process (the signer, OpenBao, the load generator itself):
//! its memory and its CPU time, for the load generator's and the tests' reports. Linux only;
//! `None` where the process is gone or the field absent.

/// VmHWM of `pid` from /proc, in MiB.
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    proc_status_mib(pid, "VmHWM:")
}

/// A memory field of `/proc/<pid>/status` (`VmHWM:`, `VmRSS:`), in MiB.
pub fn proc_status_mib(pid: u32, field: &str) -> Option<f64> {
    proc_status_kib(pid, field).map(|kib| kib as f64 / 1024.0)
}

/// A memory field of `/proc/<pid>/status` (`VmHWM:`, `VmRSS:`), in KiB as the kernel gives
/// it (`VmRSS:     6260 kB`); `None` when the process is gone or the field absent.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let value = status.lines().find_map(|l| l.strip_prefix(field))?;
    value.split_whitespace().next()?.parse().ok()
}

/// User + system CPU seconds of `pid` from /proc (clock ticks of 1/100 s, Linux's USER_HZ).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_a_memory_field_of_proc_status() {
        let me = std::process::id();
        let rss = super::proc_status_kib(me, "VmRSS:").expect("own VmRSS");
        let peak = super::proc_status_kib(me, "VmHWM:").expect("own VmHWM");
        assert!(rss > 0 && peak >= rss, "VmRSS {rss} kB, VmHWM {peak} kB");
        assert_eq!(super::proc_status_kib(me, "NoSuchField:"), None);
        assert_eq!(
            super::proc_status_kib(u32::MAX, "VmRSS:"),
            None,
            "no such process"
        );
    }
}
