//! `[tracing]`, `[log]`, `[audit]` and `[admin]`: what the signer reports and where.

use super::*;

/// OpenTelemetry trace export over OTLP/gRPC: one span per CreateCertificate call with
/// children for admission, authentication, CSR checks, the Vault call and leaf verification.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// OTLP/gRPC collector, e.g. `http://otel-collector.observability:4317`. Unset: no
    /// export, and the request spans are disabled at their call sites (no cost).
    pub otlp_endpoint: Option<String>,
    /// PEM roots for an `https://` endpoint (required with `https://`).
    pub ca_file: Option<PathBuf>,
    /// Fraction of new traces sampled, 0.0 to 1.0. A caller's sampled `traceparent` is
    /// always followed.
    pub sample_ratio: f64,
    /// `service.name` of the exported spans (`OTEL_RESOURCE_ATTRIBUTES` adds more).
    pub service_name: String,
    /// Upper bound on one export call.
    #[serde(with = "duration")]
    pub timeout: Duration,
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            ca_file: None,
            sample_ratio: 1.0,
            service_name: "istio-vault-ca".into(),
            timeout: Duration::from_secs(10),
        }
    }
}

impl TracingConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(ConfigError::invalid(
                "tracing.sample_ratio",
                "must be between 0.0 and 1.0",
            ));
        }
        match self.otlp_endpoint.as_deref() {
            None => Ok(()),
            Some(e) if e.starts_with("https://") && self.ca_file.is_none() => Err(
                ConfigError::invalid("tracing.ca_file", "is required with an https:// endpoint"),
            ),
            Some(e) if e.starts_with("http://") || e.starts_with("https://") => Ok(()),
            Some(_) => Err(ConfigError::invalid(
                "tracing.otlp_endpoint",
                "must be an http:// or https:// URL (OTLP/gRPC)",
            )),
        }
    }
}

/// The audit trail: one JSON line per decision (issued or refused).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    pub enabled: bool,
    /// `stdout`, `stderr`, or a file path (appended to).
    pub output: String,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            output: "stdout".into(),
        }
    }
}

/// The admin HTTP port (`/healthz`, `/readyz`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Listen address; empty disables the admin port.
    pub listen: Option<SocketAddr>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: Some(SocketAddr::from(([0, 0, 0, 0], 15014))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `istio_vault_ca=debug,info`. `RUST_LOG` wins if set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

impl LogConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        tracing_subscriber::EnvFilter::try_new(&self.level)
            .map(|_| ())
            .map_err(|e| ConfigError::invalid("log.level", e.to_string()))
    }
}
