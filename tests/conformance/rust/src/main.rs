//! The conformance chat service exported with the Rust `opentelemetry-otlp` crate.
//! Usage: conformance-rust-app <grpc|http> <case-id>

use opentelemetry::trace::{Span, SpanKind, Status, TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry::{Array, Context, KeyValue, StringValue, Value};
use opentelemetry_otlp::SpanExporter;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args: Vec<String> = std::env::args().collect();
    let (kind, case) = (args[1].as_str(), args[2].clone());
    let exporter = match kind {
        "grpc" => SpanExporter::builder().with_tonic().build()?,
        "http" => SpanExporter::builder().with_http().build()?,
        other => return Err(format!("unknown exporter {other}").into()),
    };
    let processor =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(Resource::builder().build())
        .build();
    let tracer = provider.tracer("conformance.chat");
    for turn in 1..=3 {
        let header = |name: &str, v: String| {
            KeyValue::new(
                format!("http.request.header.{name}"),
                Value::Array(Array::String(vec![StringValue::from(v)])),
            )
        };
        let root = tracer
            .span_builder("POST /chat")
            .with_kind(SpanKind::Server)
            .with_attributes(vec![
                header("x-request-id", format!("{case}-req-{turn}")),
                header("x-session-id", format!("{case}-session")),
                header("x-user-id", format!("{case}-user")),
                KeyValue::new("http.request.method", "POST"),
                KeyValue::new("mlflow.traceTag.team", "conformance"),
            ])
            .start(&tracer);
        let cx = Context::current_with_span(root);
        let mut llm = tracer
            .span_builder("chat gpt-4o-mini")
            .with_kind(SpanKind::Client)
            .with_attributes(vec![
                KeyValue::new("gen_ai.operation.name", "chat"),
                KeyValue::new("gen_ai.system", "openai"),
                KeyValue::new("gen_ai.request.model", "gpt-4o-mini"),
                KeyValue::new("gen_ai.usage.input_tokens", 42 + turn as i64),
                KeyValue::new("gen_ai.usage.output_tokens", 7 + turn as i64),
            ])
            .start_with_context(&tracer, &cx);
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        llm.end();
        let span = cx.span();
        span.set_status(Status::Ok);
        span.end();
    }
    provider.force_flush()?;
    provider.shutdown()?;
    Ok(())
}
