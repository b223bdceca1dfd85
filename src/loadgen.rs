//! The load generator: N distinct identities (pilot-agent RSA-2048 and ztunnel P-256 shapes),
//! keys, CSRs and tokens generated before the clock starts, then CreateCertificate over TLS at a
//! fixed concurrency for a duration or a count. `--direct-vault` sends the same CSRs straight
//! to Vault's `sign/<role>` at the same concurrency, so the signer's overhead is the ratio of
//! two runs on one machine.

pub mod fleet;
mod proc_stats;

pub use proc_stats::{cpu_seconds, peak_rss_mib, proc_status_kib, proc_status_mib};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use rcgen::{KeyPair, PublicKeyData};
use serde::Serialize;
use tonic::transport::Channel;

use crate::client::{self, CallOptions, Shape};
use crate::dev::{DevIssuer, TokenSpec};
use crate::identity::{SpiffeId, TrustDomain};
use crate::pb::istio_certificate_service_client::IstioCertificateServiceClient;

/// What to run.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadOptions {
    /// Signer address, `host:port`; several, comma-separated, spread the connections over
    /// them as a Kubernetes Service spreads clients over replicas.
    #[arg(long, default_value = "127.0.0.1:15012")]
    pub addr: String,
    /// Roots that validate the signer's serving certificate.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// TLS server name (default: the host of --addr).
    #[arg(long)]
    pub server_name: Option<String>,
    /// Development issuer key (`dev-issuer init`) used to mint one token per identity.
    #[arg(long)]
    pub jwt_key: Option<PathBuf>,
    #[arg(long, default_value = crate::dev::DEFAULT_ISSUER)]
    pub jwt_issuer: String,
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// Distinct identities (`ns/load-<i/100>`, `sa/sa-<i>`).
    #[arg(long, default_value_t = 1000)]
    pub identities: usize,
    /// Share of identities using pilot-agent's RSA-2048 shape; the rest use ztunnel's P-256.
    #[arg(long, default_value_t = 0.5)]
    pub rsa_fraction: f64,
    /// Keys generated per key type and shared round-robin by the identities' CSRs
    /// (RSA key generation is slow; the CSRs and SANs stay distinct).
    #[arg(long, default_value_t = 16)]
    pub key_pool: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// HTTP/2 connections to the signer (streams are spread over them).
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Leave Nagle's algorithm on (no TCP_NODELAY), as ztunnel's CA client does: shows what
    /// delayed ACKs on the signer's side cost such a client (`server.tcp_quickack`).
    #[arg(long)]
    pub client_nagle: bool,
    /// Pause each worker this long after each answer (callers that are not back to back:
    /// what an idle gap between calls costs either side). Timer granularity is ~1 ms.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub think_time: Duration,
    /// Stop after this many requests (default: one per identity).
    #[arg(long)]
    pub requests: Option<usize>,
    /// Or run for this long, cycling through the identities.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Requested lifetime.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// Send the same CSRs straight to Vault's sign endpoint instead.
    #[arg(long)]
    pub direct_vault: bool,
    #[arg(long, default_value = "http://127.0.0.1:8200")]
    pub vault_addr: String,
    #[arg(long)]
    pub vault_token_file: Option<PathBuf>,
    /// PEM CA that validates an `https` Vault address (direct mode).
    #[arg(long)]
    pub vault_ca_file: Option<PathBuf>,
    #[arg(long, default_value = "pki-istio")]
    pub vault_mount: String,
    #[arg(long, default_value = "istio-workload")]
    pub vault_role: String,
    /// Check every answer as a workload would (the chain verifies to its last element's roots
    /// for server and client use, the only SAN is the identity asked for, the leaf holds the
    /// CSR's key) and that the last element holds exactly the roots in this file; an answer
    /// that does not is counted as `WrongChain`.
    #[arg(long)]
    pub verify_roots: Option<PathBuf>,
    /// Retry a request that failed with `Unavailable`, a broken connection (`Unknown`) or a
    /// stream the server refused with its GOAWAY while shutting down (`Cancelled`) up to this
    /// many times on the next connection, as pilot-agent (grpc-go retries refused streams
    /// transparently) and ztunnel (retries any failed fetch) do; the report counts requests,
    /// not attempts, and `retried` counts the retries.
    #[arg(long, default_value_t = 0)]
    pub retries: usize,
    /// Report this process's peak RSS (VmHWM), e.g. the signer's pid.
    #[arg(long)]
    pub rss_pid: Option<u32>,
    /// Report Vault's CPU per request too (the OpenBao/Vault server's pid, same machine).
    #[arg(long)]
    pub vault_pid: Option<u32>,
    /// Print progress every this often (0 = never).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub progress: Duration,
}

/// Error labels `--retries` retries (see [`LoadOptions::retries`]).
const RETRYABLE: [&str; 3] = ["Unavailable", "Unknown", "Cancelled"];

/// The outcome of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub mode: &'static str,
    pub identities: usize,
    pub concurrency: usize,
    pub requests: usize,
    pub ok: usize,
    /// Extra attempts made by `--retries`.
    pub retried: usize,
    /// Failures by gRPC code (or HTTP status in direct mode).
    /// `WrongChain`: an answer that `--verify-roots` refused.
    pub errors: BTreeMap<String, usize>,
    pub seconds: f64,
    pub throughput_per_s: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Peak RSS of `--rss-pid`, MiB.
    pub peak_rss_mib: Option<f64>,
    /// CPU time `--rss-pid` used during the run, per request, microseconds.
    pub cpu_us_per_request: Option<f64>,
    /// CPU time `--vault-pid` used during the run, per request, microseconds.
    pub vault_cpu_us_per_request: Option<f64>,
    /// CPU time of the load generator itself, per request, microseconds (measured after the
    /// CSRs and tokens are prepared).
    pub loadgen_cpu_us_per_request: Option<f64>,
}

impl Report {
    pub fn text(&self) -> String {
        let errors = if self.errors.is_empty() {
            "none".to_owned()
        } else {
            self.errors
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let mut s = format!(
            "{mode}: {req} requests ({ok} ok) in {secs:.2}s at concurrency {c} over {ids} identities\n\
             throughput {tp:.0}/s  latency p50 {p50:.2} ms  p90 {p90:.2} ms  p99 {p99:.2} ms  max {max:.2} ms\n\
             errors {errors}",
            mode = self.mode,
            req = self.requests,
            ok = self.ok,
            secs = self.seconds,
            c = self.concurrency,
            ids = self.identities,
            tp = self.throughput_per_s,
            p50 = self.p50_ms,
            p90 = self.p90_ms,
            p99 = self.p99_ms,
            max = self.max_ms,
        );
        if let Some(rss) = self.peak_rss_mib {
            s.push_str(&format!("\npeak RSS of pid {rss:.1} MiB"));
        }
        if self.retried > 0 {
            s.push_str(&format!("\nretried {} time(s)", self.retried));
        }
        if let Some(cpu) = self.cpu_us_per_request {
            s.push_str(&format!("\nCPU of pid {cpu:.0} µs per request"));
        }
        if let Some(cpu) = self.vault_cpu_us_per_request {
            s.push_str(&format!("\nCPU of Vault {cpu:.0} µs per request"));
        }
        if let Some(cpu) = self.loadgen_cpu_us_per_request {
            s.push_str(&format!(
                "\nCPU of the load generator {cpu:.0} µs per request"
            ));
        }
        s
    }
}

/// One pre-built request.
struct Prepared {
    shape: Shape,
    identity: SpiffeId,
    csr_pem: String,
    token: String,
    /// The CSR key's SubjectPublicKeyInfo (DER), for `--verify-roots`.
    spki: Vec<u8>,
}

/// Generates keys, CSRs and tokens for every identity (in parallel on all cores).
fn prepare(opts: &LoadOptions) -> anyhow::Result<Vec<Prepared>> {
    let td = TrustDomain::new(&opts.trust_domain)?;
    let issuer = match &opts.jwt_key {
        Some(path) => Some(DevIssuer::load(
            &opts.jwt_issuer,
            &std::fs::read_to_string(path).with_context(|| path.display().to_string())?,
        )?),
        None => None,
    };
    let pool = opts.key_pool.max(1);
    let gen_keys = |alg: &'static rcgen::SignatureAlgorithm| -> anyhow::Result<Vec<KeyPair>> {
        (0..pool).map(|_| Ok(KeyPair::generate_for(alg)?)).collect()
    };
    let rsa_count = (opts.identities as f64 * opts.rsa_fraction.clamp(0.0, 1.0)).round() as usize;
    let rsa = if rsa_count > 0 {
        gen_keys(&rcgen::PKCS_RSA_SHA256)?
    } else {
        Vec::new()
    };
    let ec = gen_keys(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunk = opts.identities.div_ceil(threads).max(1);
    let indices: Vec<usize> = (0..opts.identities).collect();
    let results: Vec<anyhow::Result<Vec<Prepared>>> = std::thread::scope(|s| {
        let handles: Vec<_> = indices
            .chunks(chunk)
            .map(|part| {
                let (td, issuer, rsa, ec) = (&td, &issuer, &rsa, &ec);
                s.spawn(move || {
                    part.iter()
                        .map(|&i| {
                            let (ns, sa) = (format!("load-{}", i / 100), format!("sa-{i}"));
                            let identity = SpiffeId::new(td.clone(), &ns, &sa)?;
                            // Spread RSA identities evenly through the list.
                            let is_rsa = rsa_count > 0
                                && (i * rsa_count) / opts.identities
                                    != ((i + 1) * rsa_count) / opts.identities;
                            let (shape, key) = if is_rsa {
                                (Shape::PilotAgent, &rsa[i % rsa.len()])
                            } else {
                                (Shape::Ztunnel, &ec[i % ec.len()])
                            };
                            let csr_pem = client::csr_for_key(shape, &identity, key)?;
                            let token = match issuer {
                                Some(iss) => iss.token(&TokenSpec::new(&ns, &sa))?,
                                None => String::new(),
                            };
                            Ok(Prepared {
                                shape,
                                identity,
                                csr_pem,
                                token,
                                spki: key.subject_public_key_info(),
                            })
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("prepare thread"))
            .collect()
    });
    let mut out = Vec::with_capacity(opts.identities);
    for r in results {
        out.extend(r?);
    }
    Ok(out)
}

/// Where the requests go.
enum Target {
    Signer {
        clients: Vec<IstioCertificateServiceClient<Channel>>,
        /// `--verify-roots`: the PEM the last chain element must equal, as a set of roots.
        roots: Option<Vec<Vec<u8>>>,
    },
    Vault {
        http: reqwest::Client,
        url: String,
        token: String,
    },
}

impl Target {
    /// Sends one prepared request over connection `conn`; returns the error label on failure.
    async fn send(&self, conn: usize, p: &Prepared, ttl: Duration) -> Result<(), String> {
        match self {
            Self::Signer { clients, roots } => {
                let mut grpc = clients[conn % clients.len()].clone();
                let opts = CallOptions {
                    token: Some(p.token.clone()).filter(|t| !t.is_empty()),
                    cluster_id: Some("Kubernetes".into()),
                    ttl_seconds: ttl.as_secs() as i64,
                    impersonate: None,
                    cert_signer: None,
                };
                let req = client::build_request(p.shape, &p.csr_pem, &p.identity, &opts)
                    .map_err(|e| format!("build: {e}"))?;
                match grpc.create_certificate(req).await {
                    Ok(resp) if resp.get_ref().cert_chain.len() < 2 => Err("ShortChain".into()),
                    Ok(resp) => match roots {
                        Some(roots) => check_chain(&resp.get_ref().cert_chain, p, roots),
                        None => Ok(()),
                    },
                    Err(s) => Err(format!("{:?}", s.code())),
                }
            }
            Self::Vault { http, url, token } => {
                let body = serde_json::json!({
                    "csr": p.csr_pem,
                    "uri_sans": p.identity.to_string(),
                    "ttl": format!("{}s", ttl.as_secs()),
                    "format": "pem",
                });
                match http
                    .post(url)
                    .header("X-Vault-Token", token)
                    .json(&body)
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => {
                        r.bytes().await.map(drop).map_err(|_| "Body".to_owned())
                    }
                    Ok(r) => Err(format!("HTTP{}", r.status().as_u16())),
                    Err(e) if e.is_timeout() => Err("Timeout".into()),
                    Err(_) => Err("Connect".into()),
                }
            }
        }
    }
}

/// Runs the load described by `opts` and reports.
pub async fn run(opts: &LoadOptions) -> anyhow::Result<Report> {
    anyhow::ensure!(opts.identities > 0, "--identities must be positive");
    anyhow::ensure!(opts.concurrency > 0, "--concurrency must be positive");
    let started_prep = Instant::now();
    let prepared = {
        let opts = opts.clone();
        tokio::task::spawn_blocking(move || prepare(&opts)).await??
    };
    eprintln!(
        "prepared {} identities in {:.1}s",
        prepared.len(),
        started_prep.elapsed().as_secs_f64()
    );
    let target = if opts.direct_vault {
        let token = match &opts.vault_token_file {
            Some(p) => std::fs::read_to_string(p)?.trim().to_owned(),
            None => std::env::var("VAULT_TOKEN").context("--vault-token-file or $VAULT_TOKEN")?,
        };
        let roots = match &opts.vault_ca_file {
            Some(p) => {
                let pem = std::fs::read(p).with_context(|| p.display().to_string())?;
                reqwest::Certificate::from_pem_bundle(&pem)?
            }
            None => Vec::new(),
        };
        let http = crate::http_client()
            .tls_certs_only(roots)
            .pool_max_idle_per_host(opts.concurrency)
            .timeout(Duration::from_secs(30))
            .build()?;
        let url = format!(
            "{}/v1/{}/sign/{}",
            opts.vault_addr.trim_end_matches('/'),
            opts.vault_mount,
            opts.vault_role
        );
        Target::Vault { http, url, token }
    } else {
        let ca_file = opts.ca_file.as_ref().context("--ca-file is required")?;
        let ca = std::fs::read(ca_file).with_context(|| ca_file.display().to_string())?;
        let addrs: Vec<&str> = opts.addr.split(',').map(str::trim).collect();
        let mut clients = Vec::new();
        for i in 0..opts.connections.max(addrs.len()) {
            let c = client::connect_with(
                addrs[i % addrs.len()],
                &ca,
                opts.server_name.as_deref(),
                !opts.client_nagle,
            )
            .await?;
            clients.push(c.max_decoding_message_size(1 << 20));
        }
        let roots = match &opts.verify_roots {
            Some(path) => {
                let pem = std::fs::read(path).with_context(|| path.display().to_string())?;
                Some(root_set(&pem).context("--verify-roots")?)
            }
            None => None,
        };
        Target::Signer { clients, roots }
    };

    let total = match (opts.requests, opts.duration) {
        (Some(n), _) => n,
        (None, Some(_)) => usize::MAX,
        (None, None) => prepared.len(),
    };
    let prepared = Arc::new(prepared);
    let target = Arc::new(target);
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let cpu_before = opts.rss_pid.and_then(cpu_seconds);
    let vault_cpu_before = opts.vault_pid.and_then(cpu_seconds);
    let own_cpu_before = cpu_seconds(std::process::id());
    let start = Instant::now();
    let deadline = opts.duration.map(|d| start + d);
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..opts.concurrency {
        let (prepared, target, next, done, stop) = (
            prepared.clone(),
            target.clone(),
            next.clone(),
            done.clone(),
            stop.clone(),
        );
        let (ttl, retries, think) = (opts.ttl, opts.retries, opts.think_time);
        workers.spawn(async move {
            let mut latencies = Vec::new();
            let mut errors: BTreeMap<String, usize> = BTreeMap::new();
            let mut retried = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total
                    || stop.load(Ordering::Relaxed)
                    || deadline.is_some_and(|d| Instant::now() >= d)
                {
                    break;
                }
                let p = &prepared[i % prepared.len()];
                let t = Instant::now();
                let mut r = target.send(w, p, ttl).await;
                for attempt in 1..=retries {
                    match &r {
                        Err(label) if RETRYABLE.contains(&label.as_str()) => {
                            retried += 1;
                            r = target.send(w + attempt, p, ttl).await;
                        }
                        _ => break,
                    }
                }
                latencies.push(t.elapsed());
                if let Err(label) = r {
                    *errors.entry(label).or_default() += 1;
                }
                done.fetch_add(1, Ordering::Relaxed);
                if !think.is_zero() {
                    tokio::time::sleep(think).await;
                }
            }
            (latencies, errors, retried)
        });
    }
    let progress = (!opts.progress.is_zero()).then(|| {
        let (done, every) = (done.clone(), opts.progress);
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(every).await;
                let now = done.load(Ordering::Relaxed);
                eprintln!(
                    "  {:>7.1}s  {now} done  {:.0}/s",
                    start.elapsed().as_secs_f64(),
                    (now - last) as f64 / every.as_secs_f64()
                );
                last = now;
            }
        })
    });
    let mut latencies = Vec::new();
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    let mut retried = 0;
    while let Some(r) = workers.join_next().await {
        let (l, e, n) = r?;
        retried += n;
        latencies.extend(l);
        for (k, v) in e {
            *errors.entry(k).or_default() += v;
        }
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        p.abort();
    }
    let seconds = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |q: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let idx = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[idx].as_secs_f64() * 1000.0
    };
    let requests = latencies.len();
    let failed: usize = errors.values().sum();
    let per_request = |before: Option<f64>, after: Option<f64>| match (before, after) {
        (Some(a), Some(b)) if requests > 0 => Some((b - a) * 1e6 / requests as f64),
        _ => None,
    };
    let cpu_us_per_request = per_request(cpu_before, opts.rss_pid.and_then(cpu_seconds));
    let vault_cpu_us_per_request =
        per_request(vault_cpu_before, opts.vault_pid.and_then(cpu_seconds));
    let loadgen_cpu_us_per_request = per_request(own_cpu_before, cpu_seconds(std::process::id()));
    Ok(Report {
        mode: if opts.direct_vault {
            "direct-vault"
        } else {
            "signer"
        },
        identities: prepared.len(),
        concurrency: opts.concurrency,
        requests,
        ok: requests - failed,
        retried,
        errors,
        seconds,
        throughput_per_s: requests as f64 / seconds.max(1e-9),
        p50_ms: pct(0.50),
        p90_ms: pct(0.90),
        p99_ms: pct(0.99),
        max_ms: latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        peak_rss_mib: opts.rss_pid.and_then(peak_rss_mib),
        cpu_us_per_request,
        vault_cpu_us_per_request,
        loadgen_cpu_us_per_request,
    })
}

/// The roots in `pem`, as sorted DER, for comparing bundles as sets.
fn root_set(pem: &[u8]) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut roots: Vec<Vec<u8>> = crate::pem_text::certificates(pem)?
        .into_iter()
        .map(|c| c.to_vec())
        .collect();
    anyhow::ensure!(!roots.is_empty(), "no certificate");
    roots.sort();
    roots.dedup();
    Ok(roots)
}

/// `--verify-roots`: the answer is a chain a workload accepts, for the identity and key it
/// asked for, ending with exactly the expected roots.
fn check_chain(chain: &[String], p: &Prepared, roots: &[Vec<u8>]) -> Result<(), String> {
    let wrong = |why: String| {
        tracing::warn!(identity = %p.identity, "wrong chain: {why}");
        Err("WrongChain".to_owned())
    };
    let summary = match client::inspect_chain(chain) {
        Ok(s) => s,
        Err(e) => return wrong(format!("{e:#}")),
    };
    if summary.identity != p.identity.to_string() {
        return wrong(format!("issued for {}", summary.identity));
    }
    if summary.leaf_spki != p.spki {
        return wrong("the leaf does not hold the CSR's key".into());
    }
    match chain.last().map(|last| root_set(last.as_bytes())) {
        Some(Ok(got)) if got == roots => Ok(()),
        _ => wrong("the last element is not the expected root bundle".into()),
    }
}
