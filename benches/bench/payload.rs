//! Realistic GenAI traces, encoded once as a template and stamped with fresh trace ids per
//! request, so the load generator spends its CPU on sending rather than on protobuf encoding.

use std::sync::OnceLock;

use mlflow_otlp_gateway::config::MappingConfig;
use mlflow_otlp_gateway::map::rules::{CollectedAttrs, MappingTable};
use mlflow_otlp_gateway::map::trace_info::{TraceInfoJob, TraceState};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;

/// Spans per trace: an HTTP root and nine children (retrievals, LLM calls, tool calls), one agent
/// turn; the same shape as the MLflow probes in benches/probes.
pub const SPANS_PER_TRACE: usize = 10;

/// Spans per trace for the steady load and `--load`: `BENCH_TRACE_SPANS`, else
/// [`SPANS_PER_TRACE`].
pub fn trace_spans_from_env() -> usize {
    std::env::var("BENCH_TRACE_SPANS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(SPANS_PER_TRACE)
}
/// Marks a template trace id; the last two bytes hold the trace's index in the request.
const TRACE_MARK: &[u8; 14] = b"\xfe\xedTRACEIDMARKS";
/// Marks a template client request id (hex of the trace id is written over it).
const REQUEST_MARK: &str = "RQMARK";

/// One request shape (`spans` spans in `traces` traces) encoded once.
pub struct Template {
    bytes: Vec<u8>,
    /// (offset, trace index) of every trace id occurrence.
    id_slots: Vec<(usize, usize)>,
    /// (offset, trace index) of every 32-character client request id.
    request_id_slots: Vec<(usize, usize)>,
    pub spans: usize,
    /// Distinct trace ids the request carries (stamped fresh each time).
    pub traces: usize,
    /// Root spans in the request: traces that are complete once it is acknowledged.
    pub roots: usize,
}

impl Template {
    /// `spans` spans per request, grouped into traces of up to [`SPANS_PER_TRACE`] spans.
    pub fn new(spans: usize) -> Self {
        Self::with_trace_spans(spans, SPANS_PER_TRACE)
    }

    /// `spans` spans per request, in traces of up to `per_trace` spans (a root and the first
    /// `per_trace - 1` of the ten-span trace's children).
    pub fn with_trace_spans(spans: usize, per_trace: usize) -> Self {
        assert!(spans > 0);
        let per_trace = per_trace.clamp(1, SPANS_PER_TRACE);
        let mut all = Vec::with_capacity(spans);
        let mut traces = 0;
        while all.len() < spans {
            let n = per_trace.min(spans - all.len());
            all.extend(trace_spans(traces, n, now_nanos()));
            traces += 1;
        }
        Self::encode(all, traces)
    }

    /// One trace sent a span per request, as an SDK with a simple (unbatched) span processor
    /// does: the children as they end, then the root.
    pub fn span_by_span() -> Vec<Self> {
        let mut spans = trace_spans(0, SPANS_PER_TRACE, now_nanos());
        spans.rotate_left(1);
        spans
            .into_iter()
            .map(|s| Self::encode(vec![s], 1))
            .collect()
    }

    fn encode(all: Vec<Span>, traces: usize) -> Self {
        let spans = all.len();
        let roots = all.iter().filter(|s| s.parent_span_id.is_empty()).count();
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: resource_attributes(),
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "chat-api.instrumentation".into(),
                        version: "1.0.0".into(),
                        ..Default::default()
                    }),
                    spans: all,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        let bytes = req.encode_to_vec();
        let mut id_slots = Vec::new();
        let mut request_id_slots = Vec::new();
        for i in 0..bytes.len().saturating_sub(16) {
            if bytes[i..].starts_with(TRACE_MARK) {
                let t = u16::from_be_bytes([bytes[i + 14], bytes[i + 15]]) as usize;
                id_slots.push((i, t));
            }
            if bytes[i..].starts_with(REQUEST_MARK.as_bytes()) {
                let digits = std::str::from_utf8(&bytes[i + 6..i + 32]).unwrap_or("");
                let t = digits.trim_start_matches('0').parse().unwrap_or(0);
                request_id_slots.push((i, t));
            }
        }
        assert_eq!(
            id_slots.len(),
            spans,
            "every span carries its trace id once"
        );
        Self {
            bytes,
            id_slots,
            request_id_slots,
            spans,
            traces,
            roots,
        }
    }

    /// The encoded request with fresh, random trace ids (and matching client request ids).
    pub fn stamp(&self) -> (Vec<u8>, Vec<[u8; 16]>) {
        let ids = fresh_ids(self.traces);
        (self.stamp_with(&ids), ids)
    }

    /// The encoded request with the given trace ids (one per trace of the template).
    pub fn stamp_with(&self, ids: &[[u8; 16]]) -> Vec<u8> {
        let mut out = self.bytes.clone();
        for &(at, t) in &self.id_slots {
            out[at..at + 16].copy_from_slice(&ids[t]);
        }
        for &(at, t) in &self.request_id_slots {
            let hex = hex(&ids[t]);
            out[at..at + 32].copy_from_slice(hex.as_bytes());
        }
        out
    }
}

pub fn fresh_ids(n: usize) -> Vec<[u8; 16]> {
    (0..n)
        .map(|_| {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&fastrand::u64(..).to_be_bytes());
            id[8..].copy_from_slice(&fastrand::u64(1..).to_be_bytes());
            id
        })
        .collect()
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn trace_spans(index: usize, n: usize, now: u64) -> Vec<Span> {
    let mut trace_id = [0u8; 16];
    trace_id[..14].copy_from_slice(TRACE_MARK);
    trace_id[14..].copy_from_slice(&(index as u16).to_be_bytes());
    let request_id = format!("{REQUEST_MARK}{index:026}");
    let ms = 1_000_000u64;
    let root_id = span_id(1);
    let root = Span {
        trace_id: trace_id.to_vec(),
        span_id: root_id.clone(),
        name: "POST /v1/chat".into(),
        kind: SpanKind::Server as i32,
        start_time_unix_nano: now,
        end_time_unix_nano: now + 1450 * ms,
        attributes: vec![
            kv("http.request.method", "POST"),
            kv("http.route", "/v1/chat"),
            kv("url.path", "/v1/chat"),
            int("http.response.status_code", 200),
            kv("session.id", "session-4f2a9c7e1b3d"),
            kv("user.id", "user-82731"),
            kv("client_request_id", &request_id),
            kv("mlflow.traceTag.feature", "support-chat"),
            kv(
                "mlflow.spanInputs",
                r#"{"question": "How do I rotate my API key?"}"#,
            ),
            kv(
                "mlflow.spanOutputs",
                r#"{"answer": "Open Settings, then API keys, and choose Rotate."}"#,
            ),
        ],
        status: Some(Status {
            code: 1,
            message: String::new(),
        }),
        ..Default::default()
    };
    let children = [
        (
            "retrieve knowledge_base",
            SpanKind::Client,
            retriever_attrs(),
        ),
        ("chat gpt-4o", SpanKind::Client, llm_attrs(812, 96)),
        (
            "execute_tool lookup_account",
            SpanKind::Internal,
            tool_attrs(),
        ),
        ("chat gpt-4o", SpanKind::Client, llm_attrs(1304, 142)),
        ("retrieve billing_faq", SpanKind::Client, retriever_attrs()),
        ("execute_tool rotate_key", SpanKind::Internal, tool_attrs()),
        ("chat gpt-4o", SpanKind::Client, llm_attrs(1710, 88)),
        ("execute_tool send_email", SpanKind::Internal, tool_attrs()),
        ("chat gpt-4o", SpanKind::Client, llm_attrs(1955, 120)),
    ];
    let mut spans = vec![root];
    for (i, (name, kind, attributes)) in children.into_iter().take(n - 1).enumerate() {
        let start = now + (20 + 150 * i as u64) * ms;
        spans.push(Span {
            trace_id: trace_id.to_vec(),
            span_id: span_id(i as u64 + 2),
            parent_span_id: root_id.clone(),
            name: name.into(),
            kind: kind as i32,
            start_time_unix_nano: start,
            end_time_unix_nano: start + 140 * ms,
            attributes,
            status: Some(Status::default()),
            ..Default::default()
        });
    }
    spans
}

fn llm_attrs(input_tokens: i64, output_tokens: i64) -> Vec<KeyValue> {
    vec![
        kv("gen_ai.operation.name", "chat"),
        kv("gen_ai.system", "openai"),
        kv("gen_ai.request.model", "gpt-4o"),
        kv("gen_ai.response.model", "gpt-4o-2024-08-06"),
        kv("gen_ai.response.id", "chatcmpl-AXyZ12345abcdef"),
        int("gen_ai.usage.input_tokens", input_tokens),
        int("gen_ai.usage.output_tokens", output_tokens),
        double("gen_ai.request.temperature", 0.2),
        int("gen_ai.request.max_tokens", 512),
        kv("gen_ai.response.finish_reasons", "stop"),
    ]
}

fn retriever_attrs() -> Vec<KeyValue> {
    vec![
        kv("gen_ai.operation.name", "retrieve"),
        kv("db.system.name", "qdrant"),
        kv("db.collection.name", "support_articles"),
        int("retrieval.top_k", 5),
        kv("retrieval.query", "rotate API key"),
        kv("mlflow.spanType", "RETRIEVER"),
        double("retrieval.min_score", 0.72),
        int("retrieval.documents", 5),
        kv("server.address", "qdrant.internal"),
        int("server.port", 6333),
    ]
}

fn tool_attrs() -> Vec<KeyValue> {
    vec![
        kv("gen_ai.operation.name", "execute_tool"),
        kv("gen_ai.tool.name", "lookup_account"),
        kv("gen_ai.tool.call.id", "call_9b2c1d"),
        kv("gen_ai.tool.type", "function"),
        kv("mlflow.spanType", "TOOL"),
        kv("tool.arguments", r#"{"user": "user-82731"}"#),
        kv("tool.result", r#"{"plan": "pro", "keys": 2}"#),
        int("tool.attempt", 1),
        kv("code.function.name", "lookup_account"),
        kv("code.namespace", "chat_api.tools"),
    ]
}

fn span_id(n: u64) -> Vec<u8> {
    (0x5eed_0000_0000_0000u64 + n).to_be_bytes().to_vec()
}

fn value(v: any_value::Value) -> Option<AnyValue> {
    Some(AnyValue { value: Some(v) })
}

fn kv(key: &str, v: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        key_strindex: 0,
        value: value(any_value::Value::StringValue(v.into())),
    }
}

fn int(key: &str, v: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        key_strindex: 0,
        value: value(any_value::Value::IntValue(v)),
    }
}

fn double(key: &str, v: f64) -> KeyValue {
    KeyValue {
        key: key.into(),
        key_strindex: 0,
        value: value(any_value::Value::DoubleValue(v)),
    }
}

/// Counts the spans in an encoded `ExportTraceServiceRequest` without decoding it: walks
/// resource_spans (1) -> scope_spans (2) -> spans (2) by their length prefixes.
pub fn count_spans(buf: &[u8]) -> Option<u64> {
    let mut n = 0;
    for (field, rs) in fields(buf)? {
        if field != 1 {
            continue;
        }
        for (field, ss) in fields(rs)? {
            if field != 2 {
                continue;
            }
            n += fields(ss)?.iter().filter(|(f, _)| *f == 2).count() as u64;
        }
    }
    Some(n)
}

/// Length-delimited fields of one message (other wire types are skipped).
fn fields(mut buf: &[u8]) -> Option<Vec<(u64, &[u8])>> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        match key & 7 {
            0 => {
                varint(&mut buf)?;
            }
            1 => buf = buf.get(8..)?,
            5 => buf = buf.get(4..)?,
            2 => {
                let len = varint(&mut buf)? as usize;
                out.push((key >> 3, buf.get(..len)?));
                buf = &buf[len..];
            }
            _ => return None,
        }
    }
    Some(out)
}

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

/// The StartTraceV3 body the gateway writes for one of these traces, serialized as it serializes
/// it: its default mapping table evaluated on the template trace (root, resource, children),
/// with the trace's own id and client request id. Scenario 5's ceiling is read on this call, so
/// it cannot drift from what the gateway sends (a hand-written body had fallen to 6 of the
/// gateway's 13 metadata and tags).
pub fn start_trace_body(experiment_id: &str, trace_id: &[u8; 16]) -> Vec<u8> {
    static TEMPLATE: OnceLock<TraceInfoJob> = OnceLock::new();
    let mut job = TEMPLATE.get_or_init(trace_info_template).clone();
    job.trace_id = *trace_id;
    job.facts.client_request_id = Some(hex(trace_id));
    job.body_bytes(experiment_id)
}

fn trace_info_template() -> TraceInfoJob {
    let table = MappingTable::new(&MappingConfig::default());
    let spans = trace_spans(0, SPANS_PER_TRACE, now_nanos());
    let (root, children) = spans.split_first().expect("a trace has a root");
    let resource = resource_attributes();
    let mut others = CollectedAttrs::new();
    for child in children {
        table.collect(&child.attributes, &mut others);
    }
    table.collect(&resource, &mut others);
    TraceInfoJob {
        trace_id: [0; 16],
        root_span_id: root.span_id.as_slice().try_into().unwrap_or_default(),
        root_name: root.name.clone(),
        start_unix_nano: root.start_time_unix_nano,
        end_unix_nano: root.end_time_unix_nano,
        state: TraceState::Ok,
        facts: table.evaluate(&root.attributes, &resource, &others),
        from_mlflow_sdk: false,
    }
}

fn resource_attributes() -> Vec<KeyValue> {
    vec![
        kv("service.name", "chat-api"),
        kv("service.version", "1.4.2"),
        kv("deployment.environment.name", "production"),
        kv("cloud.region", "eu-west-1"),
        kv("host.name", "chat-api-7f9c6d5b8-x2x9q"),
        kv("telemetry.sdk.language", "python"),
        kv("telemetry.sdk.name", "opentelemetry"),
        kv("telemetry.sdk.version", "1.45.2"),
    ]
}
