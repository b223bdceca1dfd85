//! `istio-vault-ca fleet`: the fleet simulator against a signer that is already running (in a
//! cluster, or one started by hand), with the report, CSV timeline and plot written to a
//! directory. Events outside the simulator (a Vault node killed, a signer restarted) are the
//! operator's to cause; `--phase` names the seconds at which they happen, so the report
//! splits there.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use super::{Drain, Fleet, FleetOptions, FleetReport, plot};
use crate::dev::DevIssuer;

/// What `istio-vault-ca fleet` takes.
#[derive(Debug, Clone, clap::Args)]
pub struct FleetArgs {
    /// The signer's gRPC address; several, comma-separated, are given to nodes in turn (each
    /// node has its own connection, shared by its pods).
    #[arg(long, default_value = "127.0.0.1:15012")]
    pub addr: String,
    /// CA bundle that verifies the signer's serving certificate.
    #[arg(long)]
    pub ca_file: PathBuf,
    /// The name the signer's certificate is checked against (default: the host of `--addr`).
    #[arg(long)]
    pub server_name: Option<String>,
    /// Private key that signs the pods' service-account tokens (`dev-issuer init`'s
    /// `jwt-key.pem`); the signer must trust its JWKS.
    #[arg(long)]
    pub jwt_key: PathBuf,
    #[arg(long, default_value = crate::dev::DEFAULT_ISSUER)]
    pub jwt_issuer: String,
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// The `clusterid` the pods send.
    #[arg(long, default_value = "Kubernetes")]
    pub cluster_id: String,
    /// Pods at the start.
    #[arg(long, default_value_t = 300)]
    pub workloads: usize,
    /// Pods per service account (they share its SPIFFE identity).
    #[arg(long, default_value_t = 3)]
    pub pods_per_identity: usize,
    #[arg(long, default_value_t = 8)]
    pub nodes: usize,
    /// Share of pods in ztunnel's shape (P-256); the rest are pilot-agent's (RSA-2048).
    #[arg(long, default_value_t = 0.5)]
    pub ztunnel_fraction: f64,
    /// ztunnel-shaped pods ask through their node's ztunnel (`ImpersonatedIdentity`); the
    /// signer must find the pods (`fleet-N` namespaces, `node-NNN` nodes) in its pod API.
    #[arg(long)]
    pub impersonate: bool,
    /// The starting pods join evenly over this time (zero: all at once).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub ramp: Duration,
    /// Certificate lifetime each pod asks for (real time: compress a day into minutes).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub lifetime: Duration,
    /// Renewal at this fraction of the lifetime, ± `--jitter` (pilot-agent and ztunnel: 0.5).
    #[arg(long, default_value_t = 0.5)]
    pub renew_at: f64,
    #[arg(long, default_value_t = 0.1)]
    pub jitter: f64,
    /// Longest wait between two attempts after failures.
    #[arg(long, default_value = "8s", value_parser = humantime::parse_duration)]
    pub max_backoff: Duration,
    /// How long the run lasts.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// New pods per second (each a new pod of an existing identity).
    #[arg(long, default_value_t = 1.0)]
    pub new_pods_per_second: f64,
    /// A node drain: `AT,PODS,OVER`, e.g. `60s,5000,30s` restarts 5,000 pods evenly over 30 s
    /// from second 60 (each holds no certificate until it gets a new one).
    #[arg(long, value_parser = parse_drain)]
    pub drain: Option<Drain>,
    /// A phase of the report: `AT=NAME`, e.g. `120s=vault active killed`; repeat for each.
    /// The run starts in a phase named `steady`.
    #[arg(long = "phase", value_parser = parse_phase)]
    pub phases: Vec<(Duration, String)>,
    /// The signer's `/metrics`, read every second (queue depth, Vault sign calls).
    #[arg(long)]
    pub metrics_url: Option<String>,
    /// The signer's pid on this machine, for its RSS and CPU.
    #[arg(long)]
    pub signer_pid: Option<u32>,
    /// Vault sign calls per second the plot marks as the limit (`vault.max_requests_per_second`).
    #[arg(long)]
    pub vault_limit: Option<f64>,
    /// Where the report goes: `report.txt`, `report.json`, `timeline.csv`, `fleet.png`.
    #[arg(long, default_value = "target/fleet")]
    pub out: PathBuf,
}

fn parse_drain(s: &str) -> Result<Drain, String> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    let [at, pods, over] = parts.as_slice() else {
        return Err("expected AT,PODS,OVER such as 60s,5000,30s".into());
    };
    let duration = |v: &str| humantime::parse_duration(v).map_err(|e| format!("{v:?}: {e}"));
    Ok(Drain {
        at: duration(at)?,
        pods: pods
            .parse()
            .map_err(|_| format!("{pods:?} is not a number of pods"))?,
        over: duration(over)?,
    })
}

fn parse_phase(s: &str) -> Result<(Duration, String), String> {
    let (at, name) = s
        .split_once('=')
        .ok_or("expected AT=NAME such as 120s=vault down")?;
    let at = humantime::parse_duration(at.trim()).map_err(|e| format!("{at:?}: {e}"))?;
    let name = name.trim();
    if name.is_empty() {
        return Err("the phase needs a name".into());
    }
    Ok((at, name.to_owned()))
}

impl FleetArgs {
    /// The simulator's options: the phases in time order after `steady` at zero.
    pub fn options(&self) -> FleetOptions {
        let mut phases = self.phases.clone();
        phases.sort_by_key(|(at, _)| *at);
        if phases.first().is_none_or(|(at, _)| !at.is_zero()) {
            phases.insert(0, (Duration::ZERO, "steady".into()));
        }
        FleetOptions {
            workloads: self.workloads,
            pods_per_identity: self.pods_per_identity,
            nodes: self.nodes,
            ztunnel_fraction: self.ztunnel_fraction.clamp(0.0, 1.0),
            impersonate: self.impersonate,
            ramp: self.ramp,
            lifetime: self.lifetime,
            renew_at: self.renew_at,
            jitter: self.jitter,
            max_backoff: self.max_backoff,
            duration: self.duration,
            new_pods_per_second: self.new_pods_per_second,
            drain: self.drain,
            phases,
            metrics_url: self.metrics_url.clone(),
            signer_pid: self.signer_pid,
            trust_domain: self.trust_domain.clone(),
            cluster_id: self.cluster_id.clone(),
        }
    }
}

/// Prepares the fleet, runs it against `args.addr` and writes the report files.
pub async fn run(args: &FleetArgs) -> anyhow::Result<FleetReport> {
    let key = std::fs::read_to_string(&args.jwt_key)
        .with_context(|| format!("--jwt-key {}", args.jwt_key.display()))?;
    let issuer = DevIssuer::load(&args.jwt_issuer, &key)?;
    let ca_pem = std::fs::read(&args.ca_file)
        .with_context(|| format!("--ca-file {}", args.ca_file.display()))?;
    let addrs: Vec<&str> = args
        .addr
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .collect();
    anyhow::ensure!(!addrs.is_empty(), "--addr names no signer");
    std::fs::create_dir_all(&args.out).with_context(|| format!("--out {}", args.out.display()))?;
    eprintln!(
        "fleet: preparing {} pods (keys, CSRs, tokens)...",
        args.workloads
    );
    let fleet = Fleet::prepare(args.options(), &issuer)?;
    let mut clients = Vec::with_capacity(args.nodes);
    for node in 0..args.nodes {
        let addr = addrs[node % addrs.len()];
        let client = crate::client::connect(addr, &ca_pem, args.server_name.as_deref())
            .await
            .with_context(|| format!("connecting node {node} to {addr}"))?;
        clients.push(client);
    }
    eprintln!(
        "fleet: running for {} on {} nodes",
        humantime::format_duration(args.duration),
        args.nodes
    );
    let report = fleet.run(clients).await?;
    let write = |name: &str, bytes: &[u8]| {
        let path = args.out.join(name);
        std::fs::write(&path, bytes).with_context(|| path.display().to_string())
    };
    write("report.txt", report.text().as_bytes())?;
    write("report.json", &serde_json::to_vec_pretty(&report)?)?;
    write("timeline.csv", report.csv().as_bytes())?;
    let title = format!(
        "{} pods on {} nodes, {} lifetime",
        args.workloads,
        args.nodes,
        humantime::format_duration(args.lifetime)
    );
    plot::write_png(
        &report,
        &title,
        args.vault_limit,
        &args.out.join("fleet.png"),
    )?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drains_and_phases_parse_as_written() {
        let d = parse_drain("60s, 5000, 30s").unwrap();
        assert_eq!(
            (d.at, d.pods, d.over),
            (Duration::from_secs(60), 5000, Duration::from_secs(30))
        );
        assert!(parse_drain("60s,5000").is_err());
        assert!(parse_drain("60s,many,30s").unwrap_err().contains("many"));
        assert_eq!(
            parse_phase("2m=vault down").unwrap(),
            (Duration::from_secs(120), "vault down".into())
        );
        assert!(parse_phase("2m").is_err());
        assert!(parse_phase("2m= ").is_err());
    }
}
