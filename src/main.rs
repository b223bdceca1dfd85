//! Command-line entry point: parses arguments and wires library pieces together.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use istio_vault_ca::client::{self, Shape};
use istio_vault_ca::config::{Config, LogConfig};
use istio_vault_ca::dev::{DEFAULT_ISSUER, DevIssuer, TokenSpec};
use istio_vault_ca::{app, telemetry};

#[derive(Parser)]
#[command(
    name = "istio-vault-ca",
    version,
    about = "Istio CA backed by Vault / OpenBao PKI"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve IstioCertificateService over gRPC+TLS.
    Serve {
        /// TOML config file; `IVCA_*` environment variables override it.
        #[arg(long, short, env = "IVCA_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Check a configuration as `serve` would read it (the file and the `IVCA_*` variables),
    /// without starting anything or calling Vault.
    ///
    /// Prints every problem, in file order, one per line as `FILE:LINE:COLUMN: KEY: MESSAGE`
    /// (a key set by an `IVCA_*` variable names the variable instead of a position): TOML
    /// syntax, unknown keys (with the nearest key the section takes), values of the wrong type,
    /// bad values and rules between keys. Then, if the values are right, every file the
    /// configuration names is opened and the serving certificate and Vault's client
    /// certificate are checked against their keys. Exit status 1 on any problem.
    ///
    /// On success prints a summary (listen address, caller authentication, Vault servers and
    /// targets, lifetimes, routes, admin port), any notes, and `config OK`.
    CheckConfig {
        #[arg(long, short, env = "IVCA_CONFIG")]
        config: Option<PathBuf>,
        /// Away from where the signer runs (a workstation, CI): files that do not exist here
        /// (mounted only in the pod) are notes, not problems; files that exist are checked.
        #[arg(long)]
        offline: bool,
    },
    /// Request a workload certificate like pilot-agent or ztunnel would, and check it.
    Request(RequestArgs),
    /// Drive CreateCertificate (or, with --direct-vault, Vault's sign endpoint) at a fixed
    /// concurrency and report throughput, latency percentiles and errors by code.
    Loadgen {
        #[command(flatten)]
        options: Box<istio_vault_ca::loadgen::LoadOptions>,
        /// Also write the report as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// The load generator's fleet mode: pods that hold certificates over time (start, renew at
    /// half their lifetime with jitter, retry as pilot-agent and ztunnel do; new pods, a
    /// drain) against a running signer. Writes report.txt, report.json, timeline.csv and
    /// fleet.png to --out; docs/benchmarks.md "Fleet simulation".
    Fleet(Box<istio_vault_ca::loadgen::fleet::cli::FleetArgs>),
    /// List the still-valid certificates the issued-certificate ledger holds (docs/revocation.md):
    /// all of them, or those of one serial, identity, namespace or node. Reads `[ledger]`'s
    /// Vault server with the configured credentials; prints a table, or JSON lines.
    Ledger(LedgerArgs),
    /// Revoke, at Vault, every live certificate the ledger holds for a serial, identity,
    /// namespace or node, and (but for a serial) refuse new ones until `unrevoke`
    /// (docs/revocation.md). `--dry-run` lists them and changes nothing.
    Revoke(RevokeArgs),
    /// Lift the deny-list entry of an identity, namespace or node: it may obtain certificates
    /// again (revoked certificates stay revoked).
    Unrevoke(UnrevokeArgs),
    /// Development JWT issuer (no Kubernetes needed): `init` writes a key and JWKS,
    /// `token` prints a service-account token.
    DevIssuer {
        #[command(subcommand)]
        command: DevCommand,
    },
}

/// Which certificates: one of these (none: all, where a command allows it).
#[derive(clap::Args)]
struct Select {
    /// One certificate, by serial (hex, colons optional).
    #[arg(long, group = "by")]
    serial: Option<String>,
    /// Every certificate of this SPIFFE ID.
    #[arg(long, group = "by")]
    identity: Option<String>,
    /// Every certificate of identities in this namespace.
    #[arg(long, group = "by")]
    namespace: Option<String>,
    /// Every certificate obtained by callers whose pod ran on this node (ztunnel's, for the
    /// workloads on it).
    #[arg(long, group = "by")]
    node: Option<String>,
}

impl Select {
    fn selector(self) -> istio_vault_ca::ledger::Selector {
        use istio_vault_ca::ledger::Selector;
        match (self.serial, self.identity, self.namespace, self.node) {
            (Some(s), ..) => Selector::Serial(s),
            (_, Some(id), ..) => Selector::Identity(id),
            (_, _, Some(ns), _) => Selector::Namespace(ns),
            (.., Some(node)) => Selector::Node(node),
            _ => Selector::All,
        }
    }
}

#[derive(clap::Args)]
struct LedgerArgs {
    #[arg(long, short, env = "IVCA_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    by: Select,
    /// One JSON record per line (with the PEM) instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct RevokeArgs {
    #[arg(long, short, env = "IVCA_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    by: Select,
    /// Why (recorded with the deny-list entry and in the audit trail), e.g. keyCompromise.
    #[arg(long, default_value = "unspecified")]
    reason: String,
    /// List what would be revoked; change nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(clap::Args)]
struct UnrevokeArgs {
    #[arg(long, short, env = "IVCA_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    by: Select,
}

#[derive(clap::Args)]
struct RequestArgs {
    /// Signer address, `host:port`.
    #[arg(long, default_value = "127.0.0.1:15012")]
    addr: String,
    /// PEM roots that validate the signer's serving certificate (istio-ca-root-cert).
    #[arg(long)]
    ca_file: PathBuf,
    /// TLS server name to verify (default: the host of --addr).
    #[arg(long)]
    server_name: Option<String>,
    /// File holding the service-account JWT.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Requested identity, `spiffe://<td>/ns/<ns>/sa/<sa>`.
    #[arg(long)]
    identity: String,
    #[arg(long, value_enum, default_value = "pilot-agent")]
    shape: Shape,
    /// Requested lifetime (validity_duration).
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    #[arg(long, default_value = "Kubernetes")]
    cluster_id: String,
    /// `CertSigner` to ask for (pilot-agent shape): a target's route, as ISTIO_META_CERT_SIGNER.
    #[arg(long)]
    cert_signer: Option<String>,
    /// Write cert-chain.pem, key.pem and root-cert.pem here.
    #[arg(long)]
    out_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum DevCommand {
    /// Generate a signing key (`jwt-key.pem`) and its JWKS (`jwks.json`) in --dir.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// RS256 is what Kubernetes API servers sign service-account tokens with.
        #[arg(long, default_value = "RS256", value_parser = parse_alg)]
        alg: jsonwebtoken::Algorithm,
    },
    /// Print a projected service-account token signed by the key in --dir.
    Token {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        namespace: String,
        #[arg(long)]
        service_account: String,
        #[arg(long, default_value = "istio-ca")]
        audience: String,
        #[arg(long, default_value = DEFAULT_ISSUER)]
        issuer: String,
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

/// mimalloc: the signer allocates many short-lived buffers per request (PEM, DER, JSON,
/// HTTP/2 frames); glibc malloc showed up as ~11% of the CPU profile under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    istio_vault_ca::install_crypto_provider();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: Option<PathBuf>) -> anyhow::Result<Config> {
    let hint = no_file_hint(path.as_deref());
    Config::load(path.as_deref(), std::env::vars()).with_context(|| format!("invalid config{hint}"))
}

/// Said after a config error when no file was given (the defaults alone rarely do).
fn no_file_hint(path: Option<&std::path::Path>) -> &'static str {
    match path {
        None => " (no config file given: --config or IVCA_CONFIG)",
        Some(_) => "",
    }
}

/// `check-config`: every problem of the configuration, then of the files it names.
fn check_config(path: Option<PathBuf>, offline: bool) -> anyhow::Result<()> {
    let checked = istio_vault_ca::config::check(path.as_deref(), std::env::vars());
    let Some(config) = checked.config.as_ref() else {
        eprint!("{checked}");
        let n = checked.problems.len();
        let hint = no_file_hint(path.as_deref());
        anyhow::bail!("{n} problem{} in the configuration{hint}", plural(n));
    };
    let found = app::preflight(config, offline);
    let file = path
        .as_deref()
        .map_or(String::new(), |p| format!("{}: ", p.display()));
    if !found.problems.is_empty() {
        for problem in &found.problems {
            eprintln!("{file}{problem}");
        }
        let n = found.problems.len();
        anyhow::bail!("{n} problem{} with the files it names", plural(n));
    }
    println!("{}", config.summary());
    for note in &found.notes {
        println!("note: {note}");
    }
    println!("config OK");
    Ok(())
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Warnings only, no audit trail: for the commands an operator runs by hand.
fn quiet_logs() -> anyhow::Result<()> {
    telemetry::init(
        &LogConfig {
            level: "warn".into(),
            ..LogConfig::default()
        },
        &istio_vault_ca::config::AuditConfig {
            enabled: false,
            ..Default::default()
        },
        None,
    )?;
    Ok(())
}

/// `ledger`: the selected live records, as a table or JSON lines.
async fn ledger(args: LedgerArgs) -> anyhow::Result<()> {
    let config = load_config(args.config)?;
    let selector = args.by.selector();
    let store = istio_vault_ca::ledger::open(&config, |k| std::env::var(k).ok()).await?;
    let records = store
        .select(&selector, istio_vault_ca::time::now_unix())
        .await
        .context("reading the ledger")?;
    print_records(&records, args.json)
}

/// Records as a table, or JSON lines; their count on stderr.
fn print_records(records: &[istio_vault_ca::ledger::Record], json: bool) -> anyhow::Result<()> {
    if json {
        for r in records {
            println!("{}", serde_json::to_string(r)?);
        }
    } else {
        println!("SERIAL\tIDENTITY\tCALLER\tNODE\tNOT_AFTER\tTARGET");
        for r in records {
            let not_after = std::time::UNIX_EPOCH + Duration::from_secs(r.not_after.max(0) as u64);
            println!(
                "{}\t{}\t{}\t{}\t{}\t{}",
                r.serial,
                r.identity,
                r.caller,
                r.node.as_deref().unwrap_or("-"),
                humantime::format_rfc3339_seconds(not_after),
                r.target
            );
        }
    }
    eprintln!("{} certificate(s)", records.len());
    Ok(())
}

/// Logs for `revoke` and `unrevoke`: warnings, and the configured audit trail (on stderr
/// where it would go to stdout, which carries the command's own output).
fn audited_logs(config: &Config) -> anyhow::Result<()> {
    let mut audit = config.audit.clone();
    if audit.output == "stdout" {
        audit.output = "stderr".into();
    }
    let log = LogConfig {
        level: "warn".into(),
        ..config.log.clone()
    };
    telemetry::init(&log, &audit, None).context("audit.output")?;
    Ok(())
}

/// `revoke`: deny first, then revoke each live certificate at its target's mount.
async fn revoke(args: RevokeArgs) -> anyhow::Result<()> {
    use istio_vault_ca::telemetry::AUDIT_TARGET;
    let config = load_config(args.config)?;
    audited_logs(&config)?;
    let selector = args.by.selector();
    anyhow::ensure!(
        selector != istio_vault_ca::ledger::Selector::All,
        "say what to revoke: --serial, --identity, --namespace or --node"
    );
    let revoker =
        istio_vault_ca::revocation::Revoker::open(&config, |k| std::env::var(k).ok()).await?;
    let now = istio_vault_ca::time::now_unix();
    if args.dry_run {
        let records = revoker.plan(&selector, now).await?;
        if let Some((kind, value)) = istio_vault_ca::revocation::deny_kind(&selector) {
            eprintln!("would deny {} {value:?} and revoke:", kind.as_str());
        }
        return print_records(&records, false);
    }
    let done = revoker.revoke(&selector, &args.reason, now).await?;
    if let Some(entry) = &done.denied {
        tracing::info!(target: AUDIT_TARGET, outcome = "denied", kind = entry.kind.as_str(), value = %entry.value, reason = %entry.reason, "deny-list entry in force");
        println!(
            "denied {} {:?} until unrevoke",
            entry.kind.as_str(),
            entry.value
        );
    }
    for (r, at) in &done.revoked {
        tracing::info!(target: AUDIT_TARGET, outcome = "revoked", serial = %r.serial, identity = %r.identity, node = r.node.as_deref(), sign_target = %r.target, reason = %args.reason, revocation_time = at, "certificate revoked");
        println!("revoked {} {}", r.serial, r.identity);
    }
    for (r, why) in &done.failed {
        tracing::warn!(target: AUDIT_TARGET, outcome = "revoke-failed", serial = %r.serial, identity = %r.identity, error = %why, "certificate NOT revoked");
        eprintln!("NOT revoked {} {}: {why}", r.serial, r.identity);
    }
    for (target, why) in &done.not_rotated {
        eprintln!(
            "target {target}: Vault did not rebuild its CRL now ({why}); it lists the revocations from its next rebuild"
        );
    }
    eprintln!(
        "{} certificate(s) revoked, {} failed",
        done.revoked.len(),
        done.failed.len()
    );
    anyhow::ensure!(
        done.failed.is_empty(),
        "some certificates were not revoked; run again"
    );
    Ok(())
}

/// `unrevoke`: lift a deny-list entry.
async fn unrevoke(args: UnrevokeArgs) -> anyhow::Result<()> {
    use istio_vault_ca::telemetry::AUDIT_TARGET;
    let config = load_config(args.config)?;
    audited_logs(&config)?;
    let selector = args.by.selector();
    let revoker =
        istio_vault_ca::revocation::Revoker::open(&config, |k| std::env::var(k).ok()).await?;
    if revoker.unrevoke(&selector).await? {
        tracing::info!(target: AUDIT_TARGET, outcome = "unrevoked", selector = ?selector, "deny-list entry lifted");
        println!("lifted: it may obtain certificates again");
    } else {
        println!("nothing to lift: no deny-list entry for it");
    }
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => {
            let config = load_config(config)?;
            let tracing = telemetry::Tracing::start(&config.tracing).context("tracing")?;
            telemetry::init(&config.log, &config.audit, tracing.as_ref())
                .context("audit.output")?;
            if let Some(endpoint) = &config.tracing.otlp_endpoint {
                tracing::info!(
                    endpoint,
                    sample_ratio = config.tracing.sample_ratio,
                    "OTLP trace export on"
                );
            }
            let running = app::start(config).await?;
            let result = running.run_until(shutdown_signal()).await;
            if let Some(tracing) = tracing {
                // Sends the last spans; the exporter's own timeout bounds it.
                let _ = tokio::task::spawn_blocking(move || tracing.shutdown()).await;
            }
            result
        }
        Command::CheckConfig { config, offline } => check_config(config, offline),
        Command::Request(args) => {
            quiet_logs()?;
            request(args).await
        }
        Command::DevIssuer { command } => dev_issuer(command),
        Command::Ledger(args) => {
            quiet_logs()?;
            ledger(args).await
        }
        Command::Revoke(args) => revoke(args).await,
        Command::Unrevoke(args) => unrevoke(args).await,
        Command::Fleet(args) => {
            let report = istio_vault_ca::loadgen::fleet::cli::run(&args).await?;
            println!("{}", report.text());
            println!("report written to {}", args.out.display());
            Ok(())
        }
        Command::Loadgen { options, json } => {
            let report = istio_vault_ca::loadgen::run(&options).await?;
            println!("{}", report.text());
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
            }
            Ok(())
        }
    }
}

async fn request(args: RequestArgs) -> anyhow::Result<()> {
    let token = match &args.token_file {
        Some(p) => Some(std::fs::read_to_string(p).with_context(|| p.display().to_string())?),
        None => None,
    };
    let spec = client::RequestSpec {
        identity: args.identity.parse().context("--identity")?,
        ca_pem: std::fs::read(&args.ca_file).with_context(|| args.ca_file.display().to_string())?,
        addr: args.addr,
        server_name: args.server_name,
        token,
        shape: args.shape,
        ttl: args.ttl,
        cluster_id: args.cluster_id,
        cert_signer: args.cert_signer,
    };
    let issued = client::request(&spec).await?;
    println!("{}", issued.report());
    if let Some(dir) = args.out_dir {
        issued.write_to(&dir)?;
        println!(
            "written    {}/{{cert-chain,key,root-cert}}.pem",
            dir.display()
        );
    }
    Ok(())
}

fn dev_issuer(command: DevCommand) -> anyhow::Result<()> {
    match command {
        DevCommand::Init { dir, alg } => {
            DevIssuer::generate_with(DEFAULT_ISSUER, alg)?.write_to(&dir)?;
            eprintln!("wrote {0}/jwt-key.pem and {0}/jwks.json", dir.display());
            Ok(())
        }
        DevCommand::Token {
            dir,
            namespace,
            service_account,
            audience,
            issuer,
            ttl,
        } => {
            let key = std::fs::read_to_string(dir.join("jwt-key.pem"))?;
            let issuer = DevIssuer::load(&issuer, &key)?;
            let mut spec = TokenSpec::new(&namespace, &service_account);
            spec.audiences = vec![audience];
            spec.ttl = ttl;
            println!("{}", issuer.token(&spec)?);
            Ok(())
        }
    }
}

fn parse_alg(s: &str) -> Result<jsonwebtoken::Algorithm, String> {
    s.to_ascii_uppercase()
        .parse()
        .map_err(|_| format!("unknown algorithm {s}"))
}

/// Resolves on SIGTERM (Kubernetes stopping the pod) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
