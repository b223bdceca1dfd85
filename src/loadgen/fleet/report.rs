//! What a fleet run reports: each second of the timeline, totals per phase, and the text and
//! CSV forms of both.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

/// One second of the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Second {
    pub ok: usize,
    pub errors: BTreeMap<String, usize>,
    #[serde(skip)]
    pub(super) latencies_ms: Vec<f32>,
    /// Workloads without a valid certificate at the end of this second.
    pub uncovered: usize,
    /// Of them, pods whose certificate expired (the rest are new pods past the grace).
    pub expired: usize,
    pub pods: usize,
    /// From the signer's metrics (when given).
    pub queued: Option<f64>,
    /// Calls Vault was sent per second: those that took a turn of the outbound limit when it
    /// is set, else sign calls answered.
    pub vault_signs: Option<f64>,
    pub signer_rss_mib: Option<f64>,
    pub signer_cpu_s: Option<f64>,
}

/// Totals of one phase.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    pub name: String,
    pub from_s: usize,
    pub to_s: usize,
    pub calls: usize,
    pub ok: usize,
    pub errors: BTreeMap<String, usize>,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Workload-seconds without a valid certificate, and of them from expired certificates.
    pub uncovered_workload_seconds: usize,
    pub expired_workload_seconds: usize,
    pub max_queued: Option<f64>,
    /// Largest number of Vault sign calls in one second.
    pub max_vault_signs_per_s: Option<f64>,
}

/// The outcome of a fleet run.
#[derive(Debug, Clone, Serialize)]
pub struct FleetReport {
    pub phases: Vec<PhaseReport>,
    pub timeline: Vec<Second>,
    pub pods_at_end: usize,
    pub peak_rss_mib: Option<f64>,
    /// Signer CPU seconds over the run.
    pub signer_cpu_s: Option<f64>,
}

impl FleetReport {
    /// One line per phase.
    pub fn text(&self) -> String {
        let mut out = String::from(
            "phase                 s    calls      ok  p50 ms  p99 ms  max ms  uncovered  expired  queue  vault/s  errors\n",
        );
        for p in &self.phases {
            // `+ 0.0` turns a gauge's -0 into 0.
            let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{:.0}", v + 0.0));
            out.push_str(&format!(
                "{:<18} {:>3}-{:<3} {:>6} {:>7} {:>7.1} {:>7.1} {:>7.1} {:>10} {:>8} {:>6} {:>8}  {:?}\n",
                p.name,
                p.from_s,
                p.to_s,
                p.calls,
                p.ok,
                p.p50_ms,
                p.p99_ms,
                p.max_ms,
                p.uncovered_workload_seconds,
                p.expired_workload_seconds,
                opt(p.max_queued),
                opt(p.max_vault_signs_per_s),
                p.errors
            ));
        }
        if let Some(rss) = self.peak_rss_mib {
            out.push_str(&format!("signer peak RSS {rss:.0} MiB"));
        }
        if let Some(cpu) = self.signer_cpu_s {
            out.push_str(&format!(", CPU {cpu:.1} s\n"));
        }
        out
    }

    /// Latency p50 and p99 (ms) of each second's calls (0 for a second without calls).
    pub fn latency_percentiles(&self) -> (Vec<f64>, Vec<f64>) {
        self.timeline
            .iter()
            .map(|s| {
                let mut l = s.latencies_ms.clone();
                (percentile(&mut l, 0.5), percentile(&mut l, 0.99))
            })
            .unzip()
    }

    /// The timeline as CSV (one row per second), for plotting.
    pub fn csv(&self) -> String {
        let mut out = String::from(
            "second,ok,errors,p50_ms,p99_ms,uncovered,expired,pods,queued,vault_signs\n",
        );
        let (p50, p99) = self.latency_percentiles();
        for (i, s) in self.timeline.iter().enumerate() {
            let (p50, p99) = (p50[i], p99[i]);
            let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v}"));
            out.push_str(&format!(
                "{i},{},{},{p50:.1},{p99:.1},{},{},{},{},{}\n",
                s.ok,
                s.errors.values().sum::<usize>(),
                s.uncovered,
                s.expired,
                s.pods,
                opt(s.queued),
                opt(s.vault_signs)
            ));
        }
        out
    }
}

fn percentile(v: &mut [f32], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable_by(f32::total_cmp);
    let idx = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
    f64::from(v[idx])
}

pub(super) fn phase_reports(
    phases: &[(Duration, String)],
    timeline: &[Second],
) -> Vec<PhaseReport> {
    let mut out = Vec::new();
    for (k, (from, name)) in phases.iter().enumerate() {
        let from_s = from.as_secs() as usize;
        let to_s = phases
            .get(k + 1)
            .map_or(timeline.len(), |(t, _)| t.as_secs() as usize)
            .min(timeline.len());
        let seconds = timeline.get(from_s..to_s).unwrap_or(&[]);
        let mut lat: Vec<f32> = seconds
            .iter()
            .flat_map(|s| s.latencies_ms.iter().copied())
            .collect();
        let mut errors = BTreeMap::new();
        for s in seconds {
            for (c, n) in &s.errors {
                *errors.entry(c.clone()).or_default() += n;
            }
        }
        let ok: usize = seconds.iter().map(|s| s.ok).sum();
        let max = |f: fn(&Second) -> Option<f64>| {
            seconds
                .iter()
                .filter_map(f)
                .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
        };
        out.push(PhaseReport {
            name: name.clone(),
            from_s,
            to_s,
            calls: ok + errors.values().sum::<usize>(),
            ok,
            errors,
            p50_ms: percentile(&mut lat, 0.5),
            p99_ms: percentile(&mut lat, 0.99),
            max_ms: lat.last().map_or(0.0, |v| f64::from(*v)),
            uncovered_workload_seconds: seconds.iter().map(|s| s.uncovered).sum(),
            expired_workload_seconds: seconds.iter().map(|s| s.expired).sum(),
            max_queued: max(|s| s.queued),
            max_vault_signs_per_s: max(|s| s.vault_signs),
        });
    }
    out
}
