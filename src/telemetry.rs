//! Logging and the audit trail.
//!
//! - The operational log: `tracing` to stderr as text or JSON; `RUST_LOG` overrides
//!   `log.level`. It carries one line per request on target `istio_vault_ca::request`.
//! - The audit trail: one JSON line per decision on target `istio_vault_ca::audit`, always
//!   JSON whatever the log format, to stdout or a file (`audit.output`). With Vault's
//!   `no_store=true` it is the issuance record. It never appears in the operational log.

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{AuditConfig, LogConfig, LogFormat};

/// The target of audit events.
pub const AUDIT_TARGET: &str = "istio_vault_ca::audit";

/// Installs the global subscriber: operational log to stderr, audit trail per `audit`.
/// Later calls are ignored.
pub fn init(config: &LogConfig, audit: &AuditConfig) -> std::io::Result<()> {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    match audit.output.as_str() {
        _ if !audit.enabled => {
            init_with_writers(config, std::io::stderr, ansi, None::<fn() -> std::io::Sink>)
        }
        "stdout" => init_with_writers(config, std::io::stderr, ansi, Some(std::io::stdout)),
        "stderr" => init_with_writers(config, std::io::stderr, ansi, Some(std::io::stderr)),
        path => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            init_with_writers(
                config,
                std::io::stderr,
                ansi,
                Some(std::sync::Mutex::new(file)),
            );
        }
    }
    Ok(())
}

/// Installs the global subscriber with explicit writers (tests capture both this way).
pub fn init_with_writers<W, A>(config: &LogConfig, writer: W, ansi: bool, audit: Option<A>)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
    A: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(&config.level))
        .add_directive(
            format!("{AUDIT_TARGET}=off")
                .parse()
                .expect("valid directive"),
        );
    let log = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi);
    let log = match config.format {
        LogFormat::Json => log.json().flatten_event(true).boxed(),
        LogFormat::Text => log.boxed(),
    };
    let audit = audit.map(|w| {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(w)
            .with_filter(Targets::new().with_target(AUDIT_TARGET, LevelFilter::INFO))
    });
    let _ = tracing_subscriber::registry()
        .with(log.with_filter(filter))
        .with(audit)
        .try_init();
}
