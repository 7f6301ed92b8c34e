//! The promise of a 200 (gRPC OK), as a property: every span of a request either goes on, into
//! what is spooled for MLflow, or is counted in `partial_success.rejected_spans`; a request is
//! refused whole only when nothing in it is usable. Requests of odd shapes are generated as a
//! model, written as protobuf and as OTLP/JSON (either spelling of each field name, enums as
//! names or numbers, integers as strings or numbers, ids in hex or base64), compressed or not,
//! and read by the receivers' decoder and the ingest path (screening and mapping) in process.
//! An oracle, from the model alone, says which spans MLflow would refuse; the gateway must agree,
//! and what it spools must be something MLflow reads.
//!
//! `PROPTEST_CASES` sets the number of cases (the default keeps the suite quick); a longer pass
//! by hand: `PROPTEST_CASES=20000 cargo test --release --test properties`.

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use mlflow_otlp_gateway::auth::Tenants;
use mlflow_otlp_gateway::config::Config;
use mlflow_otlp_gateway::map::traces::TraceTracker;
use mlflow_otlp_gateway::mlflow::experiments::Experiments;
use mlflow_otlp_gateway::mlflow::{Identities, MlflowClient};
use mlflow_otlp_gateway::pipeline::ingest::{Ingest, IngestError, Parts, RequestContext};
use mlflow_otlp_gateway::pipeline::request_ids::RequestIdIndex;
use mlflow_otlp_gateway::receive::budget::DecodeBudget;
use mlflow_otlp_gateway::receive::decode::{self, DecodeLimits, Encoding, Format};
use mlflow_otlp_gateway::spool::Spool;
use mlflow_otlp_gateway::vocab::Transport;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyKind;
use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, KeyValue, KeyValueList};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use proptest::prelude::*;
use prost::Message;

/// Text written into a string that becomes invalid UTF-8 in protobuf (its first byte replaced
/// with 0xff) and an escaped lone surrogate in JSON: either way the gateway repairs it.
const BROKEN: &str = "~BROKEN~";

#[derive(Debug, Clone)]
enum Val {
    Str(String),
    Int(i64),
    Double(f64),
    Bool(bool),
    Bytes(Vec<u8>),
    Array(Vec<Val>),
    Kv(Vec<(String, Val)>),
    Empty,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum End {
    Fine,
    Unfinished,
    BeforeStart,
    Past2To63,
}

#[derive(Debug, Clone)]
struct Sp {
    trace: u8,
    id: u8,
    short_id: bool,
    root: bool,
    end: End,
    name: String,
    kind: i32,
    status: i32,
    attrs: Vec<(String, Val)>,
    /// Kvlist levels of an attribute (a span attribute takes 31).
    deep: Option<usize>,
    /// `mlflow.llm.cost`: well formed or not.
    cost: Option<bool>,
    /// A field of the wrong type.
    wrong_type: bool,
    unknown_field: bool,
    /// Sent again, the same, right after.
    twice: bool,
}

#[derive(Debug, Clone)]
struct Scope {
    name: String,
    spans: Vec<Sp>,
}

#[derive(Debug, Clone)]
struct Res {
    service: String,
    bytes_attr: bool,
    /// Kvlist levels of a resource attribute (a resource attribute takes 32).
    deep: Option<usize>,
    unknown_field: bool,
    scopes: Vec<Scope>,
}

#[derive(Debug, Clone)]
struct Req {
    resources: Vec<Res>,
    unknown_field: bool,
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{0,8}",
        "\\PC{0,12}",
        Just(format!("caf\u{e9} {BROKEN}")),
        Just(String::new()),
        Just("\u{1f600}\u{0}\n\"\\".to_string()),
    ]
}

fn val() -> impl Strategy<Value = Val> {
    let leaf = prop_oneof![
        text().prop_map(Val::Str),
        any::<i64>().prop_map(Val::Int),
        (-1e12f64..1e12).prop_map(Val::Double),
        any::<bool>().prop_map(Val::Bool),
        proptest::collection::vec(any::<u8>(), 0..6).prop_map(Val::Bytes),
        Just(Val::Empty),
    ];
    leaf.prop_recursive(3, 12, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Val::Array),
            proptest::collection::vec(("[a-z]{1,4}", inner), 0..4).prop_map(Val::Kv),
        ]
    })
}

fn span() -> impl Strategy<Value = Sp> {
    (
        (
            prop_oneof![9 => 1u8..=40, 1 => Just(0u8)],
            0u8..=40,
            prop::bool::weighted(0.05),
        ),
        (
            any::<bool>(),
            prop_oneof![
                17 => Just(End::Fine),
                1 => Just(End::Unfinished),
                1 => Just(End::BeforeStart),
                1 => Just(End::Past2To63),
            ],
        ),
        (text(), prop_oneof![0i32..=5, Just(99)], 0i32..=2),
        proptest::collection::vec(("[a-z.]{1,12}", val()), 0..4),
        proptest::option::weighted(0.1, 28usize..=34),
        proptest::option::weighted(0.1, any::<bool>()),
        (
            prop::bool::weighted(0.05),
            prop::bool::weighted(0.1),
            prop::bool::weighted(0.05),
        ),
    )
        .prop_map(
            |(
                (trace, id, short_id),
                (root, end),
                (name, kind, status),
                attrs,
                deep,
                cost,
                (wrong_type, unknown_field, twice),
            )| Sp {
                trace,
                id,
                short_id,
                root,
                end,
                name,
                kind,
                status,
                attrs,
                deep,
                cost,
                wrong_type,
                unknown_field,
                twice,
            },
        )
}

fn request() -> impl Strategy<Value = Req> {
    let scope = (text(), proptest::collection::vec(span(), 0..5))
        .prop_map(|(name, spans)| Scope { name, spans });
    let resource = (
        text(),
        prop::bool::weighted(0.05),
        proptest::option::weighted(0.05, 30usize..=34),
        prop::bool::weighted(0.1),
        proptest::collection::vec(scope, 0..3),
    )
        .prop_map(|(service, bytes_attr, deep, unknown_field, scopes)| Res {
            service,
            bytes_attr,
            deep,
            unknown_field,
            scopes,
        });
    (
        proptest::collection::vec(resource, 0..3),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(resources, unknown_field)| Req {
            resources,
            unknown_field,
        })
}

// ---- the oracle ----

impl Sp {
    fn trace_id(&self) -> Vec<u8> {
        vec![self.trace; 16]
    }

    fn span_id(&self) -> Vec<u8> {
        if self.short_id {
            vec![self.id; 4]
        } else {
            vec![self.id; 8]
        }
    }

    fn times(&self) -> (u64, u64) {
        let start = 1_700_000_000_000_000_000;
        let end = match self.end {
            End::Fine => start + 5_000_000,
            End::Unfinished => 0,
            End::BeforeStart => start - 1,
            End::Past2To63 => u64::MAX - 7,
        };
        (start, end)
    }

    /// What MLflow (or OTLP) would refuse in the span itself.
    fn bad(&self) -> bool {
        self.trace == 0
            || self.id == 0
            || self.short_id
            || self.end != End::Fine
            || self.deep.is_some_and(|n| n > 31)
            || self.cost == Some(false)
            || self.wrong_type
    }

    fn broken(&self) -> bool {
        self.name.contains(BROKEN) || self.attrs.iter().any(|(_, v)| v.broken())
    }
}

impl Val {
    fn broken(&self) -> bool {
        match self {
            Val::Str(s) => s.contains(BROKEN),
            Val::Array(vs) => vs.iter().any(Val::broken),
            Val::Kv(kvs) => kvs.iter().any(|(_, v)| v.broken()),
            _ => false,
        }
    }
}

impl Res {
    fn bad(&self) -> bool {
        self.bytes_attr || self.deep.is_some_and(|n| n > 32)
    }

    fn broken(&self) -> bool {
        self.service.contains(BROKEN)
    }
}

/// Each span as sent (a span sent twice appears twice), with whether it must be rejected and
/// whether its text is repaired.
fn sent(req: &Req) -> Vec<(&Sp, bool, bool)> {
    let mut out = Vec::new();
    for r in &req.resources {
        for scope in &r.scopes {
            for sp in &scope.spans {
                let bad = r.bad() || sp.bad();
                let broken = r.broken() || scope.name.contains(BROKEN) || sp.broken();
                for _ in 0..(1 + usize::from(sp.twice)) {
                    out.push((sp, bad, broken));
                }
            }
        }
    }
    out
}

struct Expected {
    received: usize,
    rejected: usize,
    /// (trace id, span id) of what goes on.
    accepted: BTreeSet<(Vec<u8>, Vec<u8>)>,
    repaired: bool,
    unknown: bool,
}

fn expected(req: &Req) -> Expected {
    let spans = sent(req);
    Expected {
        received: spans.len(),
        rejected: spans.iter().filter(|(_, bad, _)| *bad).count(),
        accepted: spans
            .iter()
            .filter(|(_, bad, _)| !bad)
            .map(|(sp, ..)| (sp.trace_id(), sp.span_id()))
            .collect(),
        repaired: spans.iter().any(|(_, _, broken)| *broken),
        unknown: req.unknown_field || req.resources.iter().any(|r| r.unknown_field),
    }
}

// ---- protobuf ----

fn any_value(v: &Val) -> AnyValue {
    let kind = match v {
        Val::Str(s) => Some(AnyKind::StringValue(s.clone())),
        Val::Int(i) => Some(AnyKind::IntValue(*i)),
        Val::Double(d) => Some(AnyKind::DoubleValue(*d)),
        Val::Bool(b) => Some(AnyKind::BoolValue(*b)),
        Val::Bytes(b) => Some(AnyKind::BytesValue(b.clone())),
        Val::Array(vs) => Some(AnyKind::ArrayValue(ArrayValue {
            values: vs.iter().map(any_value).collect(),
        })),
        Val::Kv(kvs) => Some(AnyKind::KvlistValue(KeyValueList {
            values: kvs.iter().map(|(k, v)| kv(k, v)).collect(),
        })),
        Val::Empty => None,
    };
    AnyValue { value: kind }
}

fn kv(key: &str, v: &Val) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(any_value(v)),
        ..Default::default()
    }
}

fn nested(levels: usize) -> Val {
    let mut v = Val::Str("leaf".into());
    for _ in 0..levels {
        v = Val::Kv(vec![("k".into(), v)]);
    }
    v
}

impl Sp {
    /// Every attribute of the span, the generated ones and those its flags ask for.
    fn all_attrs(&self) -> Vec<(String, Val)> {
        let mut attrs = self.attrs.clone();
        if let Some(levels) = self.deep {
            attrs.push(("deep".into(), nested(levels)));
        }
        match self.cost {
            Some(true) => attrs.push((
                "mlflow.llm.cost".into(),
                Val::Str(r#"{"input_cost": 0.5}"#.into()),
            )),
            Some(false) => attrs.push(("mlflow.llm.cost".into(), Val::Str("{oops".into()))),
            None => {}
        }
        attrs
    }

    fn proto(&self) -> Vec<u8> {
        let (start, end) = self.times();
        let span = Span {
            trace_id: self.trace_id(),
            span_id: self.span_id(),
            parent_span_id: if self.root {
                vec![]
            } else {
                vec![self.trace; 8]
            },
            name: self.name.clone(),
            kind: self.kind,
            start_time_unix_nano: start,
            end_time_unix_nano: end,
            attributes: self.all_attrs().iter().map(|(k, v)| kv(k, v)).collect(),
            status: Some(Status {
                message: String::new(),
                code: self.status,
            }),
            ..Default::default()
        };
        let mut bytes = span.encode_to_vec();
        if self.wrong_type {
            bytes.extend_from_slice(&[7 << 3 | 2, 0]); // start time as bytes
        }
        if self.unknown_field {
            bytes.extend_from_slice(&[0x90, 0x03, 0x01]); // field 50
        }
        bytes
    }
}

fn framed(out: &mut Vec<u8>, field: u32, payload: &[u8]) {
    prost::encoding::encode_key(field, prost::encoding::WireType::LengthDelimited, out);
    prost::encoding::encode_varint(payload.len() as u64, out);
    out.extend_from_slice(payload);
}

impl Res {
    fn resource(&self) -> Resource {
        let mut attrs = vec![kv("service.name", &Val::Str(self.service.clone()))];
        if self.bytes_attr {
            attrs.push(kv("blob", &Val::Bytes(vec![0xff])));
        }
        if let Some(levels) = self.deep {
            attrs.push(kv("deep", &nested(levels)));
        }
        Resource {
            attributes: attrs,
            ..Default::default()
        }
    }
}

fn protobuf(req: &Req) -> Vec<u8> {
    let mut body = Vec::new();
    for r in &req.resources {
        let mut rs = ResourceSpans {
            resource: Some(r.resource()),
            ..Default::default()
        }
        .encode_to_vec();
        for scope in &r.scopes {
            let mut ss = ScopeSpans {
                scope: Some(
                    opentelemetry_proto::tonic::common::v1::InstrumentationScope {
                        name: scope.name.clone(),
                        ..Default::default()
                    },
                ),
                ..Default::default()
            }
            .encode_to_vec();
            for sp in &scope.spans {
                for _ in 0..(1 + usize::from(sp.twice)) {
                    framed(&mut ss, 2, &sp.proto());
                }
            }
            framed(&mut rs, 2, &ss);
        }
        if r.unknown_field {
            rs.extend_from_slice(&[9 << 3, 0x01]);
        }
        framed(&mut body, 1, &rs);
    }
    if req.unknown_field {
        body.extend_from_slice(&[2 << 3, 0x01]);
    }
    // Each marker's first byte becomes one that is never UTF-8.
    let mut at = 0;
    while let Some(i) = body[at..]
        .windows(BROKEN.len())
        .position(|w| w == BROKEN.as_bytes())
    {
        body[at + i] = 0xff;
        at += i + 1;
    }
    body
}

// ---- JSON ----

/// Picks the spelling of each field name and the form of each value.
struct Style(u64);

impl Style {
    fn coin(&mut self) -> bool {
        // xorshift: deterministic per case, from a proptest-chosen seed.
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 & 1 == 1
    }

    fn key(&mut self, camel: &str) -> String {
        let name = if self.coin() {
            camel.to_string()
        } else {
            let mut snake = String::new();
            for c in camel.chars() {
                if c.is_ascii_uppercase() {
                    snake.push('_');
                    snake.push(c.to_ascii_lowercase());
                } else {
                    snake.push(c);
                }
            }
            snake
        };
        format!("{name:?}")
    }

    fn int(&mut self, v: impl std::fmt::Display) -> String {
        if self.coin() {
            format!("\"{v}\"")
        } else {
            v.to_string()
        }
    }

    fn id(&mut self, bytes: &[u8]) -> String {
        if self.coin() {
            format!(
                "\"{}\"",
                bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
            )
        } else {
            format!(
                "\"{}\"",
                base64::engine::general_purpose::STANDARD.encode(bytes)
            )
        }
    }

    fn text(&mut self, s: &str) -> String {
        serde_json::to_string(s)
            .expect("a string")
            .replace(BROKEN, "\\ud800ROKEN~")
    }

    fn value(&mut self, v: &Val) -> String {
        let body = match v {
            Val::Str(s) => format!("{}:{}", self.key("stringValue"), self.text(s)),
            Val::Int(i) => format!("{}:{}", self.key("intValue"), self.int(i)),
            Val::Double(d) => format!("{}:{}", self.key("doubleValue"), self.int(d)),
            Val::Bool(b) => format!("{}:{b}", self.key("boolValue")),
            Val::Bytes(b) => format!(
                "{}:\"{}\"",
                self.key("bytesValue"),
                base64::engine::general_purpose::STANDARD.encode(b)
            ),
            Val::Array(vs) => {
                let items: Vec<String> = vs.iter().map(|v| self.value(v)).collect();
                format!(
                    "{}:{{\"values\":[{}]}}",
                    self.key("arrayValue"),
                    items.join(",")
                )
            }
            Val::Kv(kvs) => {
                let items: Vec<String> = kvs.iter().map(|(k, v)| self.kv(k, v)).collect();
                format!(
                    "{}:{{\"values\":[{}]}}",
                    self.key("kvlistValue"),
                    items.join(",")
                )
            }
            Val::Empty => String::new(),
        };
        format!("{{{body}}}")
    }

    fn kv(&mut self, key: &str, v: &Val) -> String {
        format!("{{\"key\":{},\"value\":{}}}", self.text(key), self.value(v))
    }

    fn enum_(&mut self, names: &[&str], n: i32) -> String {
        match names.get(n as usize) {
            Some(name) if self.coin() => format!("\"{name}\""),
            _ => self.int(n),
        }
    }

    fn span(&mut self, sp: &Sp) -> String {
        let (start, end) = sp.times();
        let attrs: Vec<String> = sp.all_attrs().iter().map(|(k, v)| self.kv(k, v)).collect();
        let mut fields = vec![
            format!("{}:{}", self.key("traceId"), self.id(&sp.trace_id())),
            format!("{}:{}", self.key("spanId"), self.id(&sp.span_id())),
            format!("\"name\":{}", self.text(&sp.name)),
            format!(
                "\"kind\":{}",
                self.enum_(
                    &[
                        "SPAN_KIND_UNSPECIFIED",
                        "SPAN_KIND_INTERNAL",
                        "SPAN_KIND_SERVER",
                        "SPAN_KIND_CLIENT",
                        "SPAN_KIND_PRODUCER",
                        "SPAN_KIND_CONSUMER"
                    ],
                    sp.kind
                )
            ),
            format!("{}:{}", self.key("startTimeUnixNano"), self.int(start)),
            format!("{}:{}", self.key("endTimeUnixNano"), self.int(end)),
            format!("\"attributes\":[{}]", attrs.join(",")),
            format!(
                "\"status\":{{\"code\":{}}}",
                self.enum_(
                    &["STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR"],
                    sp.status
                )
            ),
        ];
        if !sp.root {
            fields.push(format!(
                "{}:{}",
                self.key("parentSpanId"),
                self.id(&[sp.trace; 8])
            ));
        }
        if sp.wrong_type {
            fields.push(format!("{}:\"soon\"", self.key("startTimeUnixNano")));
        }
        if sp.unknown_field {
            fields.push(r#""futureField":{"a":[1,{"b":null}],"c":"d"}"#.into());
        }
        format!("{{{}}}", fields.join(","))
    }
}

fn json(req: &Req, seed: u64) -> Vec<u8> {
    let mut style = Style(seed | 1);
    let mut resources = Vec::new();
    for r in &req.resources {
        let resource = r.resource();
        let attrs: Vec<String> = resource
            .attributes
            .iter()
            .map(|a| {
                let v = from_any(a.value.as_ref().expect("value"));
                style.kv(&a.key, &v)
            })
            .collect();
        let mut scopes = Vec::new();
        for scope in &r.scopes {
            let mut spans = Vec::new();
            for sp in &scope.spans {
                for _ in 0..(1 + usize::from(sp.twice)) {
                    spans.push(style.span(sp));
                }
            }
            scopes.push(format!(
                "{{\"scope\":{{\"name\":{}}},\"spans\":[{}]}}",
                style.text(&scope.name),
                spans.join(",")
            ));
        }
        let extra = if r.unknown_field {
            ",\"resourceExtra\":1"
        } else {
            ""
        };
        resources.push(format!(
            "{{\"resource\":{{\"attributes\":[{}]}},{}:[{}]{extra}}}",
            attrs.join(","),
            style.key("scopeSpans"),
            scopes.join(",")
        ));
    }
    let extra = if req.unknown_field {
        ",\"extra\":true"
    } else {
        ""
    };
    format!(
        "{{{}:[{}]{extra}}}",
        style.key("resourceSpans"),
        resources.join(",")
    )
    .into_bytes()
}

fn from_any(v: &AnyValue) -> Val {
    match &v.value {
        Some(AnyKind::StringValue(s)) => Val::Str(s.clone()),
        Some(AnyKind::BytesValue(b)) => Val::Bytes(b.clone()),
        Some(AnyKind::KvlistValue(l)) => Val::Kv(
            l.values
                .iter()
                .map(|kv| (kv.key.clone(), from_any(kv.value.as_ref().expect("value"))))
                .collect(),
        ),
        _ => Val::Empty,
    }
}

// ---- the check ----

fn compress(encoding: Encoding, body: &[u8]) -> Vec<u8> {
    match encoding {
        Encoding::Identity => body.to_vec(),
        Encoding::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(body).expect("gzip");
            e.finish().expect("gzip")
        }
        Encoding::Deflate => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(body).expect("deflate");
            e.finish().expect("deflate")
        }
        Encoding::Zstd => zstd::encode_all(body, 1).expect("zstd"),
    }
}

/// The deepest message in an AnyValue, counting it as 1.
fn depth(v: &AnyValue) -> usize {
    1 + match &v.value {
        Some(AnyKind::ArrayValue(a)) => 1 + a.values.iter().map(depth).max().unwrap_or(0),
        Some(AnyKind::KvlistValue(l)) => {
            1 + l
                .values
                .iter()
                .map(|kv| 1 + kv.value.as_ref().map_or(0, depth))
                .max()
                .unwrap_or(0)
        }
        _ => 0,
    }
}

struct Outcome {
    accepted: usize,
    rejected: usize,
    message: Option<String>,
    spooled: BTreeSet<(Vec<u8>, Vec<u8>)>,
}

async fn ingest(body: Bytes, format: Format, encoding: Encoding) -> Result<Outcome, String> {
    let mut cfg = Config::default();
    // Nothing listens there: experiments resolve later, at delivery, as while MLflow is down.
    cfg.mlflow.tracking_uri = "http://127.0.0.1:9".into();
    let spool = Spool::memory(64 << 20);
    let client = MlflowClient::new(&cfg.mlflow).expect("client");
    let ingest = Ingest::new(
        &cfg,
        Arc::new(TraceTracker::new(1000, Duration::from_secs(60))),
        Parts {
            experiments: Experiments::new(Identities::gateway_only(client), false),
            tenants: Arc::new(Tenants::from_config(&cfg).expect("tenants")),
            spool: spool.clone(),
            request_ids: Arc::new(RequestIdIndex::new(1000)),
            sampler: None,
        },
    );
    let limits = DecodeLimits {
        max_decompressed_bytes: 64 << 20,
        max_nesting_depth: 100,
        budget: DecodeBudget::new(64 << 20),
        retry_after: Duration::from_secs(1),
    };
    let parsed = decode::decode_body(format, encoding, body, &limits).map_err(|e| e.to_string())?;
    let transport = match format {
        Format::Protobuf => Transport::Grpc,
        Format::Json => Transport::HttpJson,
    };
    let ctx = RequestContext {
        transport,
        experiment_header: Some("1".into()),
        tenant: None,
    };
    let accepted = ingest.accept(parsed, ctx).await.map_err(|e| match e {
        IngestError::InvalidArgument(m) => format!("invalid: {m}"),
        other => panic!("only invalid input may be refused here: {other}"),
    })?;
    spool.close().await;
    let mut spooled = BTreeSet::new();
    while let Some(delivery) = spool.next().await {
        let req = ExportTraceServiceRequest::decode(&delivery.record.body[..])
            .expect("what is spooled is valid protobuf, as MLflow's decoder wants it");
        for rs in &req.resource_spans {
            for a in rs.resource.iter().flat_map(|r| &r.attributes) {
                assert!(
                    3 + a.value.as_ref().map_or(0, depth) <= 100,
                    "resource too deep"
                );
            }
            for sp in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
                assert!(sp.end_time_unix_nano <= i64::MAX as u64);
                for a in &sp.attributes {
                    assert!(
                        4 + a.value.as_ref().map_or(0, depth) <= 100,
                        "span too deep"
                    );
                }
                assert!(
                    spooled.insert((sp.trace_id.clone(), sp.span_id.clone())),
                    "a span is spooled once"
                );
            }
        }
        delivery.ack.done();
    }
    Ok(Outcome {
        accepted: accepted.accepted_spans,
        rejected: accepted.rejected_spans,
        message: accepted.message,
        spooled,
    })
}

fn check(req: &Req, outcome: Result<Outcome, String>, how: &str) {
    let want = expected(req);
    match outcome {
        Err(e) => {
            let nothing_usable = want.accepted.is_empty() && (want.received > 0 || want.unknown);
            assert!(
                nothing_usable,
                "{how}: refused a request with usable spans: {e}"
            );
        }
        Ok(got) => {
            assert!(
                !(want.received == 0 && want.unknown),
                "{how}: a request of unknown fields only was answered 200"
            );
            assert_eq!(
                got.rejected, want.rejected,
                "{how}: rejected ({:?})",
                got.message
            );
            assert_eq!(got.spooled, want.accepted, "{how}: what goes on");
            assert_eq!(got.accepted, want.accepted.len(), "{how}: accepted");
            match (&got.message, want.rejected, want.repaired) {
                (Some(m), 0, true) => assert!(m.contains("not UTF-8"), "{how}: {m}"),
                (None, 0, false) => {}
                (Some(m), n, _) if n > 0 => assert!(m.contains("rejected"), "{how}: {m}"),
                (m, n, r) => panic!("{how}: message {m:?} with {n} rejected, repaired {r}"),
            }
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(96),
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_span_goes_on_or_is_counted(
        req in request(),
        seed in any::<u64>(),
        encoding in prop_oneof![
            Just(Encoding::Identity), Just(Encoding::Gzip), Just(Encoding::Zstd), Just(Encoding::Deflate)
        ],
    ) {
        let rt = runtime();
        let protobuf = compress(encoding, &protobuf(&req));
        check(&req, rt.block_on(ingest(protobuf.into(), Format::Protobuf, encoding)), "protobuf");
        let json = compress(encoding, &json(&req, seed));
        check(&req, rt.block_on(ingest(json.into(), Format::Json, encoding)), "JSON");
    }
}
