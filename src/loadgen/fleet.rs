//! Fleet simulation: a mesh's workloads holding certificates over time, not a request count.
//!
//! Every workload requests a certificate when it starts, keeps it, and renews it at a fraction
//! of its lifetime with jitter (pilot-agent and ztunnel renew at ~50 %), retrying failures as
//! the clients do (pilot-agent: five quick retries from 100 ms, then, like ztunnel, backoff
//! from 1 s doubling with ±20 % jitter up to a cap). Lifetimes are real but short: a 24 h
//! certificate compressed 144× lasts 10 minutes. New pods arrive at a rate; a drain restarts
//! many pods at once (each then holds no certificate until it gets one). Events outside the
//! simulator (Vault killed or cut off, a signer restarted) are scripted by the caller, which
//! names the phases so the report splits at them.
//!
//! The report says, per phase: calls, latency p50/p99/max, refusals by code, the largest
//! queue and Vault sign rate seen on the signer's metrics, and the workload-seconds without a
//! valid certificate (a certificate that expired before its renewal succeeded, or a new pod
//! still waiting after [`NEW_POD_GRACE`]). Every chain is checked as the clients check it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rcgen::KeyPair;
use tokio::sync::Notify;
use tonic::transport::Channel;

use crate::client::{self, CallOptions, Shape};
use crate::dev::{DevIssuer, TokenSpec};
use crate::identity::{SpiffeId, TrustDomain};
use crate::pb::istio_certificate_service_client::IstioCertificateServiceClient;

pub mod cli;
mod placement;
pub mod plot;
mod report;

pub use placement::{Placement, placement, placements, ztunnel_placement};
use report::phase_reports;
pub use report::{FleetReport, PhaseReport, Second};

/// A new pod without a certificate this long after it started counts as uncovered.
pub const NEW_POD_GRACE: Duration = Duration::from_secs(5);

/// Codes pilot-agent's interceptor retries at once (`pkg/security/retry.go`).
const QUICK_RETRY: [tonic::Code; 6] = [
    tonic::Code::Cancelled,
    tonic::Code::DeadlineExceeded,
    tonic::Code::ResourceExhausted,
    tonic::Code::Aborted,
    tonic::Code::Internal,
    tonic::Code::Unavailable,
];

/// What to simulate.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// Pods at the start.
    pub workloads: usize,
    /// Pods per service account (they share its SPIFFE identity).
    pub pods_per_identity: usize,
    /// Nodes; each has its own connection to the signer, shared by its pods.
    pub nodes: usize,
    /// Share of pods asking in ztunnel's shape (P-256, no quick retries); the rest are
    /// pilot-agent's (RSA-2048).
    pub ztunnel_fraction: f64,
    /// ztunnel-shaped pods ask through their node's ztunnel (its pod-bound token, the pod's
    /// identity in `ImpersonatedIdentity`), as ambient mode does; the signer must authorize
    /// nodes against a pod API listing [`placements`] and [`ztunnel_placement`]s.
    pub impersonate: bool,
    /// The pods present at the start join evenly over this time (a cluster coming up); zero
    /// starts them all at once.
    pub ramp: Duration,
    /// Requested certificate lifetime (real time).
    pub lifetime: Duration,
    /// Renewal point as a fraction of the lifetime, and its jitter (± this fraction).
    pub renew_at: f64,
    pub jitter: f64,
    /// Longest wait between two attempts after failures.
    pub max_backoff: Duration,
    pub duration: Duration,
    /// New pods per second (each a new pod of an existing identity).
    pub new_pods_per_second: f64,
    pub drain: Option<Drain>,
    /// Phase names and start offsets, in order (the first should start at zero).
    pub phases: Vec<(Duration, String)>,
    /// The signer's `/metrics` URL, read every second for queue depth and Vault sign calls.
    pub metrics_url: Option<String>,
    /// The signer's pid, for RSS and CPU (a separate process).
    pub signer_pid: Option<u32>,
    pub trust_domain: String,
    pub cluster_id: String,
}

impl Default for FleetOptions {
    fn default() -> Self {
        Self {
            workloads: 300,
            pods_per_identity: 3,
            nodes: 8,
            ztunnel_fraction: 0.5,
            impersonate: false,
            ramp: Duration::ZERO,
            lifetime: Duration::from_secs(30),
            renew_at: 0.5,
            jitter: 0.1,
            max_backoff: Duration::from_secs(8),
            duration: Duration::from_secs(30),
            new_pods_per_second: 1.0,
            drain: None,
            phases: vec![(Duration::ZERO, "steady".into())],
            metrics_url: None,
            signer_pid: None,
            trust_domain: "cluster.local".into(),
            cluster_id: "Kubernetes".into(),
        }
    }
}

/// A drain: `pods` pods restarted, spread evenly over `over`, starting `at`.
#[derive(Debug, Clone, Copy)]
pub struct Drain {
    pub at: Duration,
    pub pods: usize,
    pub over: Duration,
}

/// One pod: what it asks for and what it holds.
struct Pod {
    shape: Shape,
    identity: SpiffeId,
    csr_pem: String,
    token: Arc<str>,
    /// Asks as its node's ztunnel, for its own identity.
    impersonate: bool,
    node: usize,
    /// NotAfter of the certificate it holds (unix ms), 0 for none.
    not_after_ms: AtomicI64,
    /// When it (re)started: milliseconds since the run began, on the monotonic clock (a step
    /// of the wall clock must not make pods that have not started look uncovered).
    born_ms: AtomicI64,
    restart: Notify,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Calls and their latencies by second.
struct Recorder {
    start: Instant,
    seconds: std::sync::Mutex<Vec<Second>>,
}

impl Recorder {
    fn record(&self, took: Duration, result: Result<(), String>) {
        let at = (self.start.elapsed().as_secs()) as usize;
        let mut s = self.seconds.lock().unwrap_or_else(|e| e.into_inner());
        if s.len() <= at {
            s.resize_with(at + 1, Second::default);
        }
        let second = &mut s[at];
        second.latencies_ms.push(took.as_secs_f32() * 1000.0);
        match result {
            Ok(()) => second.ok += 1,
            Err(code) => *second.errors.entry(code).or_default() += 1,
        }
    }

    fn sample(&self, at: usize, f: impl FnOnce(&mut Second)) {
        let mut s = self.seconds.lock().unwrap_or_else(|e| e.into_inner());
        if s.len() <= at {
            s.resize_with(at + 1, Second::default);
        }
        f(&mut s[at]);
    }
}

/// A fleet ready to run: its pods' keys, CSRs and tokens made (the slow part, done before the
/// clock starts so that a caller's scripted events line up with the report's seconds).
pub struct Fleet {
    opts: FleetOptions,
    pods: Arc<Vec<Pod>>,
}

impl Fleet {
    /// Prepares every pod of `opts`, minting tokens with `issuer`.
    pub fn prepare(opts: FleetOptions, issuer: &DevIssuer) -> anyhow::Result<Self> {
        anyhow::ensure!(opts.workloads > 0 && opts.nodes > 0, "an empty fleet");
        let td = TrustDomain::new(&opts.trust_domain)?;
        let pods = Arc::new(prepare(
            &opts,
            &td,
            issuer,
            opts.workloads + new_pods(&opts),
        )?);
        Ok(Self { opts, pods })
    }

    /// Runs the fleet against the signer behind `clients` (one per node, reused round-robin
    /// when fewer); second 0 of the report is when this is called.
    pub async fn run(
        self,
        clients: Vec<IstioCertificateServiceClient<Channel>>,
    ) -> anyhow::Result<FleetReport> {
        run(&self.opts, self.pods, clients).await
    }
}

async fn run(
    opts: &FleetOptions,
    pods: Arc<Vec<Pod>>,
    clients: Vec<IstioCertificateServiceClient<Channel>>,
) -> anyhow::Result<FleetReport> {
    anyhow::ensure!(!clients.is_empty(), "no connection to the signer");
    let extra = new_pods(opts);
    let active = Arc::new(AtomicUsize::new(opts.workloads));
    let stop = Arc::new(AtomicBool::new(false));
    let recorder = Arc::new(Recorder {
        start: Instant::now(),
        seconds: Default::default(),
    });
    let clients = Arc::new(clients);
    let mut tasks = tokio::task::JoinSet::new();
    let spawn_pod = |tasks: &mut tokio::task::JoinSet<()>, i: usize, delay: Duration| {
        let (pods, clients, recorder, stop, opts) = (
            pods.clone(),
            clients.clone(),
            recorder.clone(),
            stop.clone(),
            opts.clone(),
        );
        tasks.spawn(async move {
            tokio::time::sleep(delay).await;
            live(i, &pods, &clients, &recorder, &stop, &opts).await
        });
    };
    let run_ms = || recorder.start.elapsed().as_millis() as i64;
    for i in 0..opts.workloads {
        // A pod that has not started yet is born in the future: not yet counted as waiting.
        let delay = opts.ramp.mul_f64(i as f64 / opts.workloads as f64);
        pods[i]
            .born_ms
            .store(run_ms() + delay.as_millis() as i64, Ordering::Relaxed);
        spawn_pod(&mut tasks, i, delay);
    }
    let cpu_start = opts.signer_pid.and_then(super::cpu_seconds);
    let http = reqwest::Client::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let start = recorder.start;
    let mut drained = 0;
    let mut born = 0usize;
    // What the signer had sent Vault at the previous scrape, and when that scrape was answered.
    let mut last_signs: Option<(f64, Instant)> = None;
    tick.tick().await;
    while start.elapsed() < opts.duration {
        // Each tick: new pods, the drain's share, then a sample of the second that ended.
        let elapsed = start.elapsed();
        let due_new = (opts.new_pods_per_second * elapsed.as_secs_f64()) as usize;
        while born < due_new.min(extra) {
            let i = opts.workloads + born;
            pods[i].born_ms.store(run_ms(), Ordering::Relaxed);
            active.fetch_add(1, Ordering::Relaxed);
            spawn_pod(&mut tasks, i, Duration::ZERO);
            born += 1;
        }
        if let Some(d) = opts.drain.filter(|d| elapsed >= d.at) {
            let progress =
                ((elapsed - d.at).as_secs_f64() / d.over.as_secs_f64().max(1e-3)).min(1.0);
            let due = ((d.pods as f64 * progress).ceil() as usize).min(d.pods);
            while drained < due {
                let pod = &pods[drained % opts.workloads];
                pod.not_after_ms.store(0, Ordering::Relaxed);
                pod.born_ms.store(run_ms(), Ordering::Relaxed);
                pod.restart.notify_one();
                drained += 1;
            }
        }
        let second = elapsed.as_secs().saturating_sub(1) as usize;
        // NotAfter is on the wall clock; a pod's start on the run's own.
        let (now, run_now) = (now_ms(), run_ms());
        let grace = NEW_POD_GRACE.as_millis() as i64;
        let (mut expired, mut waiting) = (0, 0);
        let n = active.load(Ordering::Relaxed);
        for pod in &pods[..n] {
            match pod.not_after_ms.load(Ordering::Relaxed) {
                0 if run_now - pod.born_ms.load(Ordering::Relaxed) > grace => waiting += 1,
                0 => {}
                t if t <= now => expired += 1,
                _ => {}
            }
        }
        let metrics = match &opts.metrics_url {
            Some(url) => match http.get(url).send().await {
                Ok(r) => r.text().await.ok(),
                Err(_) => None,
            },
            None => None,
        };
        // Scrapes are a second apart only on average (the tick waits for the work above and
        // the answer): a rate is the count's change over the time between them.
        let scraped_at = Instant::now();
        // What Vault was sent: with an outbound limit, the calls that took a turn (counted as
        // they start, which is what the limit bounds); else sign calls answered, not those the
        // breaker stopped.
        let signs = metrics.as_deref().map(|m| {
            if m.contains(OUTBOUND_TURNS) {
                return series_sum(m, OUTBOUND_TURNS, "");
            }
            series_sum(
                m,
                "istio_vault_ca_vault_request_duration_seconds_count",
                "op=\"sign\"",
            ) - series_sum(
                m,
                "istio_vault_ca_vault_errors_total",
                "op=\"sign\",kind=\"circuit_open\"",
            ) - series_sum(
                m,
                "istio_vault_ca_vault_errors_total",
                "op=\"sign\",kind=\"throttled\"",
            )
        });
        let queued = metrics
            .as_deref()
            .map(|m| series_sum(m, "istio_vault_ca_queued_requests", ""));
        let rate = match (last_signs, signs) {
            (Some((a, at)), Some(b)) => {
                let secs = scraped_at.duration_since(at).as_secs_f64().max(1e-3);
                Some(f64::max(b - a, 0.0) / secs)
            }
            _ => None,
        };
        if let Some(b) = signs {
            last_signs = Some((b, scraped_at));
        }
        let rss = opts
            .signer_pid
            .and_then(|p| super::proc_status_mib(p, "VmRSS:"));
        let cpu = opts.signer_pid.and_then(super::cpu_seconds);
        recorder.sample(second, |s| {
            s.uncovered = expired + waiting;
            s.expired = expired;
            s.pods = n;
            s.queued = queued;
            s.vault_signs = rate;
            s.signer_rss_mib = rss;
            s.signer_cpu_s = cpu;
        });
        tick.tick().await;
    }
    stop.store(true, Ordering::Relaxed);
    for pod in pods.iter() {
        pod.restart.notify_one();
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    let mut timeline =
        std::mem::take(&mut *recorder.seconds.lock().unwrap_or_else(|e| e.into_inner()));
    timeline.truncate(opts.duration.as_secs() as usize);
    let phases = phase_reports(&opts.phases, &timeline);
    Ok(FleetReport {
        phases,
        pods_at_end: active.load(Ordering::Relaxed),
        peak_rss_mib: opts.signer_pid.and_then(super::peak_rss_mib),
        signer_cpu_s: match (cpu_start, opts.signer_pid.and_then(super::cpu_seconds)) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        },
        timeline,
    })
}

/// Sum of the samples of `name` whose labels contain `labels` in Prometheus text.
fn series_sum(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?;
            (rest.is_empty() || rest.starts_with('{') && rest.contains(labels))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// The signer's count of calls sent to Vault under its outbound limit.
const OUTBOUND_TURNS: &str = "istio_vault_ca_vault_outbound_turns_total";

/// New pods over the whole run.
fn new_pods(opts: &FleetOptions) -> usize {
    (opts.new_pods_per_second * opts.duration.as_secs_f64()).ceil() as usize
}

/// Keys (a pool per shape), CSRs and tokens for `total` pods.
fn prepare(
    opts: &FleetOptions,
    td: &TrustDomain,
    issuer: &DevIssuer,
    total: usize,
) -> anyhow::Result<Vec<Pod>> {
    let rsa: Vec<KeyPair> = (0..4)
        .map(|_| KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256))
        .collect::<Result<_, _>>()?;
    let ec: Vec<KeyPair> = (0..4)
        .map(|_| KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256))
        .collect::<Result<_, _>>()?;
    let mut tokens: BTreeMap<String, Arc<str>> = BTreeMap::new();
    let mut out = Vec::with_capacity(total);
    for i in 0..total {
        let place = placement(opts, i);
        let identity = SpiffeId::new(td.clone(), &place.namespace, &place.service_account)?;
        let (shape, key) = if place.ztunnel {
            (Shape::Ztunnel, &ec[i % ec.len()])
        } else {
            (Shape::PilotAgent, &rsa[i % rsa.len()])
        };
        let impersonate = place.ztunnel && opts.impersonate;
        // An impersonating ztunnel presents its own pod-bound token; a sidecar its pod's (the
        // projected token pilot-agent reads is bound to its pod, as the workload's would be).
        let spec = if impersonate {
            let zt = ztunnel_placement(place.node_index);
            let mut spec = TokenSpec::new(&zt.namespace, &zt.service_account);
            spec.pod = Some((zt.pod, zt.uid, zt.node));
            spec
        } else {
            let mut spec = TokenSpec::new(&place.namespace, &place.service_account);
            spec.pod = Some((place.pod, place.uid, place.node));
            spec
        };
        let key_of = format!("{}/{}/{:?}", spec.namespace, spec.service_account, spec.pod);
        let token = match tokens.get(&key_of) {
            Some(t) => t.clone(),
            None => {
                let t: Arc<str> = issuer.token(&spec)?.into();
                tokens.insert(key_of, t.clone());
                t
            }
        };
        out.push(Pod {
            shape,
            csr_pem: client::csr_for_key(shape, &identity, key)?,
            identity,
            token,
            impersonate,
            node: place.node_index,
            not_after_ms: AtomicI64::new(0),
            born_ms: AtomicI64::new(0),
            restart: Notify::new(),
        });
    }
    Ok(out)
}

/// One pod's life: obtain, hold, renew; start over when restarted.
async fn live(
    i: usize,
    pods: &[Pod],
    clients: &[IstioCertificateServiceClient<Channel>],
    recorder: &Recorder,
    stop: &AtomicBool,
    opts: &FleetOptions,
) {
    let pod = &pods[i];
    let mut client = clients[pod.node % clients.len()].clone();
    let request_opts = CallOptions {
        token: Some(pod.token.to_string()),
        cluster_id: Some(opts.cluster_id.clone()),
        ttl_seconds: opts.lifetime.as_secs().max(1) as i64,
        impersonate: pod.impersonate.then(|| pod.identity.to_string()),
        cert_signer: None,
    };
    let mut rng_state = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut random = move || {
        // xorshift: jitter only, no security use.
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        (rng_state >> 11) as f64 / (1u64 << 53) as f64
    };
    while !stop.load(Ordering::Relaxed) {
        // Obtain (with the clients' retries), then hold until the renewal point or a restart.
        let mut backoff = Duration::from_secs(1);
        let mut quick = 0;
        let not_after = loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let Ok(req) =
                client::build_request(pod.shape, &pod.csr_pem, &pod.identity, &request_opts)
            else {
                return;
            };
            let t = Instant::now();
            let result = client.create_certificate(req).await;
            let took = t.elapsed();
            let checked = result.map_err(|s| s.code()).and_then(|r| {
                client::inspect_chain(&r.into_inner().cert_chain).map_err(|_| tonic::Code::DataLoss)
            });
            match checked {
                Ok(summary) => {
                    recorder.record(took, Ok(()));
                    break summary.not_after * 1000;
                }
                Err(code) => {
                    recorder.record(took, Err(format!("{code:?}")));
                    let wait = if pod.shape == Shape::PilotAgent
                        && quick < 5
                        && QUICK_RETRY.contains(&code)
                    {
                        quick += 1;
                        Duration::from_millis(100 << (quick - 1))
                    } else {
                        let w = backoff.mul_f64(0.8 + 0.4 * random());
                        backoff = (backoff * 2).min(opts.max_backoff);
                        w
                    };
                    tokio::time::sleep(wait).await;
                }
            }
        };
        pod.not_after_ms.store(not_after, Ordering::Relaxed);
        let fraction = opts.renew_at + opts.jitter * (2.0 * random() - 1.0);
        let hold = opts.lifetime.mul_f64(fraction.clamp(0.05, 0.95));
        tokio::select! {
            () = tokio::time::sleep(hold) => {}
            () = pod.restart.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_summed_by_name_and_labels() {
        let text = "# HELP x\n\
            istio_vault_ca_queued_requests 3\n\
            istio_vault_ca_vault_request_duration_seconds_count{op=\"sign\"} 10\n\
            istio_vault_ca_vault_request_duration_seconds_count{op=\"sign\",vault=\"b\"} 5\n\
            istio_vault_ca_vault_request_duration_seconds_count{op=\"login\"} 7\n\
            istio_vault_ca_vault_request_duration_seconds_sum{op=\"sign\"} 99\n";
        let count = "istio_vault_ca_vault_request_duration_seconds_count";
        assert_eq!(series_sum(text, count, "op=\"sign\""), 15.0);
        assert_eq!(series_sum(text, "istio_vault_ca_queued_requests", ""), 3.0);
        assert_eq!(series_sum(text, "absent", ""), 0.0);
    }

    #[test]
    fn phases_split_the_timeline() {
        let mut timeline = vec![Second::default(); 4];
        timeline[0].ok = 2;
        timeline[0].latencies_ms = vec![1.0, 3.0];
        timeline[3].errors.insert("Unavailable".into(), 1);
        timeline[3].latencies_ms = vec![5.0];
        timeline[3].uncovered = 2;
        let phases = vec![
            (Duration::ZERO, "a".to_owned()),
            (Duration::from_secs(3), "b".to_owned()),
        ];
        let r = phase_reports(&phases, &timeline);
        assert_eq!((r[0].calls, r[0].ok, r[0].max_ms), (2, 2, 3.0));
        assert_eq!((r[1].from_s, r[1].to_s, r[1].calls), (3, 4, 1));
        assert_eq!(r[1].uncovered_workload_seconds, 2);
    }
}
