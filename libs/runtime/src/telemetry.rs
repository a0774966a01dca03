//! Telemetry: `tracing` spans and JSON logs, OpenTelemetry trace ids on every span, OTLP export
//! when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, and W3C trace-context propagation across gRPC
//! calls (headers) and events (the `traceparent` an event carries).
//!
//! Every span gets an OpenTelemetry trace id even without an exporter, so the id that a log line
//! carries (the `trace_id` field of its RPC or consumer span) is the one a collector would show.

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, global};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

const DEFAULT_FILTER: &str = "info,sqlx=warn,h2=warn,tower=warn,hyper=warn";

/// Keeps the tracer provider alive; [`Telemetry::shutdown`] flushes pending spans.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Flushes and stops span export. Call once, after the server has drained.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "telemetry shutdown failed");
        }
    }
}

/// Installs the global subscriber for a service process: JSON logs on stdout, OpenTelemetry
/// spans exported over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Must run inside a
/// Tokio runtime (the OTLP exporter is built on tonic).
pub fn init(service_name: &'static str) -> anyhow::Result<Telemetry> {
    let mut builder = SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name(service_name).build());
    if crate::config::var("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    install(&provider, service_name, true)?;
    Ok(Telemetry { provider })
}

/// Installs `provider` as the span pipeline behind a `tracing` subscriber with logs in JSON
/// (or plain text for tests) filtered by `RUST_LOG`. Also installs the W3C propagator.
pub fn install(
    provider: &SdkTracerProvider,
    scope: &'static str,
    json: bool,
) -> anyhow::Result<()> {
    global::set_text_map_propagator(TraceContextPropagator::new());
    global::set_tracer_provider(provider.clone());
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer(scope));
    let logs = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer().with_test_writer().boxed()
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(otel)
        .with(logs)
        .try_init()?;
    Ok(())
}

/// The current span's trace id (32 hex digits), or `-` outside any trace.
pub fn current_trace_id() -> String {
    let cx = tracing::Span::current().context();
    let span_context = cx.span().span_context().clone();
    if span_context.is_valid() {
        span_context.trace_id().to_string()
    } else {
        "-".to_owned()
    }
}

/// Makes `cx` the parent of `span` and records its trace id on the span's `trace_id` field,
/// which the span must declare (`trace_id = tracing::field::Empty`), and its own span id on
/// `span_id` when declared, so every log line inside it names both.
pub fn adopt_parent(span: &tracing::Span, cx: Context) {
    if cx.span().span_context().is_valid() {
        // Only fails when the span is disabled, and then there is nothing to adopt into.
        let _ = span.set_parent(cx);
    }
    let context = span.context().span().span_context().clone();
    span.record("trace_id", tracing::field::display(context.trace_id()));
    span.record("span_id", tracing::field::display(context.span_id()));
}

/// The trace context carried by incoming HTTP/2 headers (gRPC metadata).
pub fn extract_from_headers(headers: &http::HeaderMap) -> Context {
    global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)))
}

/// Writes the current span's trace context into outgoing gRPC metadata.
pub fn inject_into_metadata(metadata: &mut tonic::metadata::MetadataMap) {
    let cx = tracing::Span::current().context();
    global::get_text_map_propagator(|p| p.inject_context(&cx, &mut MetadataInjector(metadata)));
}

/// The current span's W3C `traceparent` and `tracestate`, for an event to carry.
pub fn current_trace_headers() -> (String, String) {
    let cx = tracing::Span::current().context();
    let mut carrier = HashMap::new();
    global::get_text_map_propagator(|p| p.inject_context(&cx, &mut carrier));
    (
        carrier.remove("traceparent").unwrap_or_default(),
        carrier.remove("tracestate").unwrap_or_default(),
    )
}

/// The context an event's `traceparent`/`tracestate` describe.
pub fn context_from_trace_headers(traceparent: &str, tracestate: &str) -> Context {
    let mut carrier = HashMap::new();
    if !traceparent.is_empty() {
        carrier.insert("traceparent".to_owned(), traceparent.to_owned());
    }
    if !tracestate.is_empty() {
        carrier.insert("tracestate".to_owned(), tracestate.to_owned());
    }
    TraceContextPropagator::new().extract(&carrier)
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing_subscriber::layer::Context as LayerContext;

    use super::*;

    /// Keeps the values recorded on spans, by field name.
    #[derive(Clone, Default)]
    struct Recorded(Arc<Mutex<Vec<(String, String)>>>);

    impl Visit for Recorded {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            if let Ok(mut seen) = self.0.lock() {
                seen.push((field.name().to_owned(), format!("{value:?}")));
            }
        }
    }

    impl<S: tracing::Subscriber> Layer<S> for Recorded {
        fn on_record(
            &self,
            _span: &tracing::span::Id,
            values: &tracing::span::Record<'_>,
            _ctx: LayerContext<'_, S>,
        ) {
            values.record(&mut self.clone());
        }
    }

    #[test]
    fn spans_carry_their_trace_and_span_ids_for_the_logs() {
        let provider = SdkTracerProvider::builder().build();
        let recorded = Recorded::default();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .with(recorded.clone());
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "grpc.request",
                trace_id = tracing::field::Empty,
                span_id = tracing::field::Empty,
            );
            adopt_parent(&span, Context::new());
            let context = span.context().span().span_context().clone();
            let seen = recorded.0.lock().map(|s| s.clone()).unwrap_or_default();
            let value = |name: &str| {
                seen.iter()
                    .find(|(field, _)| field == name)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            assert_eq!(value("trace_id"), context.trace_id().to_string());
            assert_eq!(value("span_id"), context.span_id().to_string());
            assert_eq!(value("trace_id").len(), 32);
            assert_eq!(value("span_id").len(), 16);
        });
    }
}
