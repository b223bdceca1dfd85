//! Logging and the audit trail.
//!
//! - The operational log: `tracing` to stderr as text or JSON; `RUST_LOG` overrides
//!   `log.level`. It carries one line per request on target `istio_vault_ca::request`.
//! - The audit trail: one JSON line per decision on target `istio_vault_ca::audit`, always
//!   JSON whatever the log format, to stdout or a file (`audit.output`). With Vault's
//!   `no_store=true` it is the issuance record. It never appears in the operational log.
//! - Traces (optional): the request spans on target `istio_vault_ca::span`, exported over
//!   OTLP/gRPC when `tracing.otlp_endpoint` is set. Without it no layer enables that target,
//!   so the spans are disabled at their call sites and cost one cached check each.

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::{AuditConfig, LogConfig, LogFormat, TracingConfig};

/// The target of audit events.
pub const AUDIT_TARGET: &str = "istio_vault_ca::audit";

/// The target of the one-line-per-call request log (`log.level` directives can name it).
pub const REQUEST_TARGET: &str = "istio_vault_ca::request";

/// The target of the request spans exported by OTLP (never shown in the log).
pub const SPAN_TARGET: &str = "istio_vault_ca::span";

/// Why trace export could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TracingError {
    #[error("tracing.ca_file {path}: {source}")]
    CaFile {
        path: String,
        source: std::io::Error,
    },
    #[error("tracing.otlp_endpoint: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// OTLP trace export: the tracer provider behind the span layer. Flush it before exit.
#[derive(Clone)]
pub struct Tracing {
    provider: opentelemetry_sdk::trace::SdkTracerProvider,
}

impl Tracing {
    /// Builds the exporter when `config.otlp_endpoint` is set; `None` when tracing is off.
    /// Must run inside the tokio runtime (the gRPC exporter's channel lives on it).
    pub fn start(config: &TracingConfig) -> Result<Option<Self>, TracingError> {
        use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};

        let Some(endpoint) = config.otlp_endpoint.as_deref() else {
            return Ok(None);
        };
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(config.timeout);
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path).map_err(|source| TracingError::CaFile {
                path: path.display().to_string(),
                source,
            })?;
            exporter = exporter.with_tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
            );
        }
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(config.service_name.clone())
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            ))
            .build();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(exporter.build()?)
            .with_sampler(CallerCannotForce {
                ratio: config.sample_ratio,
            })
            .with_resource(resource)
            .build();
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        Ok(Some(Self { provider }))
    }

    /// Exports every finished span now.
    pub fn flush(&self) {
        if let Err(e) = self.provider.force_flush() {
            tracing::warn!(error = %e, "OTLP trace export: flush failed");
        }
    }

    /// Flushes and stops the exporter (blocks until the last batch is sent or times out).
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "OTLP trace export: shutdown failed");
        }
    }

    fn layer<S>(&self) -> impl Layer<S>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        use opentelemetry::trace::TracerProvider;
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("istio-vault-ca"))
            .with_filter(
                // The request spans, plus warnings and errors as events on them.
                Targets::new()
                    .with_target(SPAN_TARGET, LevelFilter::INFO)
                    .with_target(AUDIT_TARGET, LevelFilter::OFF)
                    .with_target("istio_vault_ca", LevelFilter::WARN),
            )
    }
}

/// Which spans are exported: a span under a local parent follows it; a request's span is
/// sampled at `tracing.sample_ratio` by the signer's own random draw, also when the call
/// carried a sampled `traceparent` (which still links the span into the caller's trace); a
/// caller's trace flagged not sampled is not exported. A caller flagging its trace as sampled,
/// or choosing trace IDs that a ratio-by-trace-ID sampler would keep, cannot make the signer
/// export more than the configured share of its calls.
#[derive(Debug, Clone)]
struct CallerCannotForce {
    ratio: f64,
}

impl opentelemetry_sdk::trace::ShouldSample for CallerCannotForce {
    fn should_sample(
        &self,
        parent: Option<&opentelemetry::Context>,
        _trace_id: opentelemetry::trace::TraceId,
        _name: &str,
        _kind: &opentelemetry::trace::SpanKind,
        _attributes: &[opentelemetry::KeyValue],
        _links: &[opentelemetry::trace::Link],
    ) -> opentelemetry_sdk::trace::SamplingResult {
        use opentelemetry::trace::TraceContextExt;
        use opentelemetry_sdk::trace::SamplingDecision;
        let parent_span = parent
            .filter(|cx| cx.has_active_span())
            .map(|cx| cx.span().span_context().clone());
        let sampled = match &parent_span {
            Some(p) if !p.is_remote() || !p.is_sampled() => p.is_sampled(),
            _ => local_draw() < self.ratio,
        };
        opentelemetry_sdk::trace::SamplingResult {
            decision: if sampled {
                SamplingDecision::RecordAndSample
            } else {
                SamplingDecision::Drop
            },
            attributes: Vec::new(),
            trace_state: parent_span
                .map(|p| p.trace_state().clone())
                .unwrap_or_default(),
        }
    }
}

/// A uniform number in [0, 1) the caller has no say in.
fn local_draw() -> f64 {
    let mut bytes = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        return 0.0;
    }
    (u64::from_be_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// Sets the W3C `traceparent` of an incoming call as the parent of `span`, when tracing is on.
pub fn set_remote_parent(span: &tracing::Span, headers: &http::HeaderMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if span.is_disabled() || !headers.contains_key(TRACEPARENT) {
        return;
    }
    let cx =
        opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    let _ = span.set_parent(cx);
}

const TRACEPARENT: &str = "traceparent";

/// W3C trace context from the call's headers (`traceparent`, `tracestate`).
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        [TRACEPARENT, "tracestate"]
            .into_iter()
            .filter(|k| self.0.contains_key(*k))
            .collect()
    }
}

/// Installs the global subscriber: operational log to stderr, audit trail per `audit`, spans
/// to `tracing` if given. Later calls are ignored.
pub fn init(
    config: &LogConfig,
    audit: &AuditConfig,
    tracing: Option<&Tracing>,
) -> std::io::Result<()> {
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let audit_writer = match audit.output.as_str() {
        _ if !audit.enabled => None,
        "stdout" => Some(BoxMakeWriter::new(std::io::stdout)),
        "stderr" => Some(BoxMakeWriter::new(std::io::stderr)),
        path => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            Some(BoxMakeWriter::new(std::sync::Mutex::new(file)))
        }
    };
    init_with_writers(config, std::io::stderr, ansi, audit_writer, tracing);
    Ok(())
}

/// Installs the global subscriber with explicit writers (tests capture both this way).
pub fn init_with_writers<W, A>(
    config: &LogConfig,
    writer: W,
    ansi: bool,
    audit: Option<A>,
    tracing: Option<&Tracing>,
) where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
    A: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let _ = subscriber(config, writer, ansi, audit, tracing).try_init();
}

/// The subscriber [`init_with_writers`] installs: the operational log filtered by
/// `log.level` (never the audit or span targets), the audit trail, the span exporter.
fn subscriber<W, A>(
    config: &LogConfig,
    writer: W,
    ansi: bool,
    audit: Option<A>,
    tracing: Option<&Tracing>,
) -> impl tracing::Subscriber + Send + Sync + 'static
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
        )
        .add_directive(
            format!("{SPAN_TARGET}=off")
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
    // A Vec, not `Option` layers: a `None` layer would enable every call site.
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> =
        vec![log.with_filter(filter).boxed()];
    if let Some(w) = audit {
        layers.push(
            tracing_subscriber::fmt::layer()
                .event_format(AuditLine)
                .with_writer(w)
                .with_filter(Targets::new().with_target(AUDIT_TARGET, LevelFilter::INFO))
                .boxed(),
        );
    }
    if let Some(t) = tracing {
        layers.push(t.layer().boxed());
    }
    tracing_subscriber::registry().with(layers)
}

/// The audit trail's line: one JSON object per event, its fields flat beside `timestamp`,
/// `level` and `message`, `target` last (the shape `tracing_subscriber`'s JSON format with
/// `flatten_event` gives), written straight into the line's buffer. The generic JSON format
/// builds a map of owned values per event first: ~35,000 instructions per audit line against
/// ~18,000 here (docs/benchmarks.md), on every call the signer answers.
struct AuditLine;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for AuditLine
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        use tracing_subscriber::fmt::time::FormatTime;
        writer.write_str("{\"timestamp\":\"")?;
        tracing_subscriber::fmt::time::SystemTime.format_time(&mut writer)?;
        write!(writer, "\",\"level\":\"{}\"", event.metadata().level())?;
        let mut fields = AuditFields {
            out: &mut writer,
            scratch: String::new(),
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_str(",\"target\":")?;
        json_string(&mut writer, event.metadata().target())?;
        writer.write_str("}\n")
    }
}

/// Writes each field of an audit event as `,"name":value`.
struct AuditFields<'a, 'w> {
    out: &'a mut tracing_subscriber::fmt::format::Writer<'w>,
    /// Reused for values formatted by `Debug` or `Display` before they are escaped.
    scratch: String,
    result: std::fmt::Result,
}

impl AuditFields<'_, '_> {
    /// Writes `,"name":` and then the value by `value`, unless an earlier write failed.
    fn field(
        &mut self,
        field: &tracing::field::Field,
        value: impl FnOnce(&mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result,
    ) {
        if self.result.is_err() {
            return;
        }
        let out = &mut *self.out;
        self.result = (|| {
            out.write_char(',')?;
            json_string(out, field.name())?;
            out.write_char(':')?;
            value(out)
        })();
    }
}

impl tracing::field::Visit for AuditFields<'_, '_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.field(field, |out| json_string(out, value));
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        // `Display` values (`%x`) arrive here wrapped so that `Debug` prints them plainly.
        let _ = write!(scratch, "{value:?}");
        self.record_str(field, &scratch);
        self.scratch = scratch;
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.field(field, |out| write!(out, "{value}"));
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.field(field, |out| write!(out, "{value}"));
    }

    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.field(field, |out| write!(out, "{value}"));
    }

    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        // JSON has no NaN or infinity; serde_json writes them as null.
        if value.is_finite() {
            self.field(field, |out| write!(out, "{value}"));
        } else {
            self.field(field, |out| out.write_str("null"));
        }
    }
}

/// `s` as a JSON string literal (quotes, backslashes and control characters escaped).
fn json_string(out: &mut impl std::fmt::Write, s: &str) -> std::fmt::Result {
    out.write_char('"')?;
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.write_str(&s[start..i])?;
        if escape.is_empty() {
            write!(out, "\\u{b:04x}")?;
        } else {
            out.write_str(escape)?;
        }
        start = i + 1;
    }
    out.write_str(&s[start..])?;
    out.write_char('"')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A caller's sampled flag does not raise sampling above the ratio; its unsampled flag and
    /// a local parent's decision are followed.
    #[test]
    fn callers_cannot_force_sampling() {
        use opentelemetry::trace::{
            SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
        };
        use opentelemetry_sdk::trace::{SamplingDecision, ShouldSample};
        let parent = |remote: bool, sampled: bool| {
            let flags = if sampled {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            };
            let sc = SpanContext::new(
                TraceId::from_bytes([7; 16]),
                SpanId::from_bytes([1; 8]),
                flags,
                remote,
                TraceState::default(),
            );
            opentelemetry::Context::new().with_remote_span_context(sc)
        };
        let decide = |ratio: f64, cx: Option<&opentelemetry::Context>| {
            (0..200)
                .filter(|_| {
                    CallerCannotForce { ratio }
                        .should_sample(
                            cx,
                            TraceId::from_bytes([7; 16]),
                            "call",
                            &SpanKind::Server,
                            &[],
                            &[],
                        )
                        .decision
                        == SamplingDecision::RecordAndSample
                })
                .count()
        };
        assert_eq!(
            decide(0.0, Some(&parent(true, true))),
            0,
            "a sampled traceparent"
        );
        assert_eq!(decide(1.0, Some(&parent(true, true))), 200);
        let some = decide(0.5, Some(&parent(true, true)));
        assert!((50..150).contains(&some), "{some} of 200 at 0.5");
        assert_eq!(
            decide(1.0, Some(&parent(true, false))),
            0,
            "an unsampled traceparent"
        );
        assert_eq!(decide(0.0, None), 0);
        assert_eq!(decide(1.0, None), 200);
    }

    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Capture {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    /// The audit line says what `tracing_subscriber`'s JSON format (flattened, no spans) says
    /// for the same event, field for field and value for value, with the hostile characters a
    /// caller may put in a field (quotes, backslashes, newlines, control and non-ASCII
    /// characters), and is one line of valid JSON.
    #[test]
    fn the_audit_line_is_the_json_format_written_directly() {
        use tracing_subscriber::layer::SubscriberExt;
        let (ours, reference) = (Capture::default(), Capture::default());
        let (o, r) = (ours.clone(), reference.clone());
        let sub = tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .event_format(AuditLine)
                    .with_writer(move || o.clone()),
            )
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_writer(move || r.clone()),
            );
        let hostile = "a\"b\\c\nd\re\tf\u{1}g\u{1f}h\u{7f}i é \u{2028} 🙂";
        tracing::subscriber::with_default(sub, || {
            tracing::info!(
                target: AUDIT_TARGET,
                outcome = "refused",
                code = ?tonic::Code::PermissionDenied,
                caller = hostile,
                error = %hostile,
                requested = ?hostile,
                not_after = 1_796_676_041_i64,
                serial = 7_u64,
                clamped = false,
                took = 1.5_f64,
                "certificate refused"
            );
            tracing::warn!(target: AUDIT_TARGET, "plain {}", "message");
        });
        let (ours, reference) = (ours.text(), reference.text());
        assert_eq!(ours.lines().count(), 2, "{ours}");
        for (a, b) in ours.lines().zip(reference.lines()) {
            let mut a: serde_json::Value =
                serde_json::from_str(a).unwrap_or_else(|e| panic!("{e}: {a}"));
            let mut b: serde_json::Value = serde_json::from_str(b).unwrap();
            assert!(
                a["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
                "{a}"
            );
            a.as_object_mut().unwrap().remove("timestamp");
            b.as_object_mut().unwrap().remove("timestamp");
            assert_eq!(a, b);
        }
        assert!(
            ours.contains(r#""caller":"a\"b\\c\nd\re\tf\u0001g\u001fh"#),
            "{ours}"
        );
    }

    /// With the audit trail on, `log.level = "info,istio_vault_ca::request=off"` leaves one
    /// line per call (the README's advice): the request line's call site is disabled, so it is
    /// not even formatted, while the audit line and other logs stay.
    #[test]
    fn the_request_line_can_be_turned_off_and_the_audit_line_stays() {
        let (log, audit) = (Capture::default(), Capture::default());
        let config = LogConfig {
            level: "info,istio_vault_ca::request=off".into(),
            ..LogConfig::default()
        };
        let (l, a) = (log.clone(), audit.clone());
        let sub = subscriber(
            &config,
            move || l.clone(),
            false,
            Some(move || a.clone()),
            None,
        );
        tracing::subscriber::with_default(sub, || {
            assert!(!tracing::enabled!(target: REQUEST_TARGET, tracing::Level::INFO));
            assert!(tracing::enabled!(target: AUDIT_TARGET, tracing::Level::INFO));
            tracing::info!(target: REQUEST_TARGET, outcome = "issued", "CreateCertificate");
            tracing::info!(target: AUDIT_TARGET, outcome = "issued", "certificate issued");
            tracing::warn!("something else");
        });
        let (log, audit) = (log.text(), audit.text());
        assert!(!log.contains("CreateCertificate"), "{log}");
        assert!(log.contains("something else"), "{log}");
        assert!(
            !log.contains("certificate issued"),
            "audit never in the log: {log}"
        );
        assert_eq!(audit.lines().count(), 1, "{audit}");
        assert!(audit.contains("\"outcome\":\"issued\""), "{audit}");
    }
}
