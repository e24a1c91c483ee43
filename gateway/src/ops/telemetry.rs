//! Logging and OpenTelemetry.
//!
//! Logs: `WARD_LOG` (an EnvFilter, default `info`) and `WARD_LOG_FORMAT`
//! (`text` or `json`), to stderr (the journal under systemd).
//!
//! OTLP: when `[telemetry] otlp_endpoint` is set (e.g.
//! `http://127.0.0.1:4318`), spans (every `tunnel{flow, peer, src, leg}`
//! among them) and metrics go to that collector over OTLP/HTTP (protobuf),
//! exported from background threads with the blocking client. Without a
//! collector, exports fail quietly and `wardd` runs as usual.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::Otlp;

/// One OTLP export (spans or metrics) may take this long; a collector that
/// does not answer must not hold up the exporting thread for longer.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(3);
/// Spans are batched for this long: tunnels show up in the collector within
/// about a second, without one request per span.
const SPAN_BATCH_DELAY: Duration = Duration::from_secs(1);
use crate::proxy::registry::Registry;

/// Keeps the OTLP pipelines alive; flushes them on drop.
#[derive(Default)]
pub struct Guard {
    tracer: Option<SdkTracerProvider>,
    meter: Option<SdkMeterProvider>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(t) = self.tracer.take() {
            let _ = t.shutdown_with_timeout(EXPORT_TIMEOUT);
        }
        if let Some(m) = self.meter.take() {
            let _ = m.shutdown();
        }
    }
}

impl Guard {
    /// The meter provider, to register instruments on.
    pub fn meter(&self) -> Option<&SdkMeterProvider> {
        self.meter.as_ref()
    }
}

fn filter() -> Result<EnvFilter, String> {
    EnvFilter::try_from_env("WARD_LOG")
        .or_else(|_| EnvFilter::try_new("info"))
        .map_err(|e| format!("WARD_LOG: {e}"))
}

/// Initialise logging, and OTLP export when `otlp` is given. Once per process.
pub fn init(otlp: Option<&Otlp>) -> Result<Guard, String> {
    let json = match std::env::var("WARD_LOG_FORMAT").as_deref() {
        Err(_) | Ok("text") => false,
        Ok("json") => true,
        Ok(other) => return Err(format!("WARD_LOG_FORMAT: {other:?} is not text or json")),
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt_text = (!json).then(|| {
        tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
    });
    let fmt_json = json.then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
    });
    let mut guard = Guard::default();
    let otel = match otlp {
        Some(o) => {
            let resource = Resource::builder()
                .with_service_name("wardd")
                .with_attribute(KeyValue::new("ward.gateway", o.gateway.clone()))
                .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                .build();
            let base = o.endpoint.trim_end_matches('/');
            let spans = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(format!("{base}/v1/traces"))
                .with_timeout(EXPORT_TIMEOUT)
                .build()
                .map_err(|e| format!("telemetry.otlp_endpoint: {e}"))?;
            let processor = BatchSpanProcessor::builder(spans)
                .with_batch_config(
                    BatchConfigBuilder::default()
                        .with_scheduled_delay(SPAN_BATCH_DELAY)
                        .build(),
                )
                .build();
            let tracer = SdkTracerProvider::builder()
                .with_span_processor(processor)
                .with_resource(resource.clone())
                .build();
            let metrics = opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .with_endpoint(format!("{base}/v1/metrics"))
                .with_timeout(EXPORT_TIMEOUT)
                .build()
                .map_err(|e| format!("telemetry.otlp_endpoint: {e}"))?;
            let meter = SdkMeterProvider::builder()
                .with_reader(
                    PeriodicReader::builder(metrics)
                        .with_interval(o.metrics_interval)
                        .build(),
                )
                .with_resource(resource)
                .build();
            let layer = tracing_opentelemetry::layer().with_tracer(tracer.tracer("wardd"));
            guard.tracer = Some(tracer);
            guard.meter = Some(meter);
            Some(layer)
        }
        None => None,
    };
    tracing_subscriber::registry()
        .with(filter()?)
        .with(fmt_text)
        .with(fmt_json)
        .with(otel)
        .try_init()
        .map_err(|e| format!("tracing: {e}"))?;
    Ok(guard)
}

/// Register the gateway's counters as OTLP metrics, read from the registry
/// at each export.
pub fn register_metrics(guard: &Guard, registry: Arc<Registry>) {
    let Some(provider) = guard.meter() else {
        return;
    };
    let meter = provider.meter("wardd");
    let r = registry.clone();
    let _ = meter
        .u64_observable_counter("ward.tunnels.opened")
        .with_description("Connections accepted per flow")
        .with_callback(move |o| {
            for (flow, s) in r.flow_stats() {
                o.observe(
                    s.opened.load(std::sync::atomic::Ordering::Relaxed),
                    &[KeyValue::new("flow", flow)],
                );
            }
        })
        .build();
    let r = registry.clone();
    let _ = meter
        .u64_observable_counter("ward.tunnels.denied")
        .with_description("Connections refused per flow")
        .with_callback(move |o| {
            for (flow, s) in r.flow_stats() {
                o.observe(
                    s.denied.load(std::sync::atomic::Ordering::Relaxed),
                    &[KeyValue::new("flow", flow)],
                );
            }
        })
        .build();
    let r = registry;
    let _ = meter
        .u64_observable_counter("ward.flow.bytes")
        .with_description("Bytes per flow and direction")
        .with_unit("By")
        .with_callback(move |o| {
            for (flow, s) in r.flow_stats() {
                o.observe(
                    s.bytes.up.load(std::sync::atomic::Ordering::Relaxed),
                    &[
                        KeyValue::new("flow", flow.clone()),
                        KeyValue::new("direction", "up"),
                    ],
                );
                o.observe(
                    s.bytes.down.load(std::sync::atomic::Ordering::Relaxed),
                    &[
                        KeyValue::new("flow", flow),
                        KeyValue::new("direction", "down"),
                    ],
                );
            }
        })
        .build();
}
