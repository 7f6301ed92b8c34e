//! What makes MLflow 3.17.2 refuse a whole `/v1/traces` request, found span by span at ingest so
//! that only the offending span is rejected (its siblings would otherwise share its fate, and
//! MLflow's 500s and 422s for some of these are retried without end). Each rule follows MLflow's
//! own ingestion code (`Span.from_otel_proto`, `SqlAlchemyStore.log_spans`) and was confirmed
//! against a real server, SQLite and PostgreSQL: benches/probes/mlflow_refusals.py.

use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use serde_json::Value as Json;

use crate::otlp::{AttributeAt, SpanView};

/// Span attributes MLflow parses when it stores a span.
const TOKEN_USAGE: &str = "mlflow.chat.tokenUsage";
const COST: &str = "mlflow.llm.cost";
const SPAN_TYPE: &str = "mlflow.spanType";
const USER_ID: &str = "user.id";
/// Token counts MLflow adds up per trace (`TokenUsageKey.all_keys()`).
const TOKEN_KEYS: [&str; 6] = [
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "cache_creation_input_tokens_above_1hr",
];
/// Costs MLflow adds up per trace (`CostKey`).
const COST_KEYS: [&str; 3] = ["input_cost", "output_cost", "total_cost"];
/// MLflow's `spans.type` column is `VARCHAR(500)`; PostgreSQL refuses longer values.
const MAX_SPAN_TYPE_CHARS: usize = 500;
/// `user.id` becomes trace metadata, a `VARCHAR(8000)` column; PostgreSQL refuses longer.
const MAX_USER_ID_CHARS: usize = 8000;
/// Resource attributes MLflow does not turn into trace tags, so does not serialize.
const UNSERIALIZED_RESOURCE_PREFIXES: [&str; 2] = ["telemetry.sdk.", "mlflow."];

/// Why MLflow would refuse a span (and with it, the whole request that carries it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("start or end time is past 2^63 ns, which MLflow cannot store")]
    TimeOutOfRange,
    #[error("{TOKEN_USAGE} holds a count that is not a number ('{0}')")]
    BadTokenUsage(String),
    #[error("{COST} must be a JSON object of numbers ({0})")]
    BadCost(String),
    #[error("{SPAN_TYPE} must be a string of at most {MAX_SPAN_TYPE_CHARS} characters")]
    BadSpanType,
    #[error("{USER_ID} is longer than {MAX_USER_ID_CHARS} characters")]
    UserIdTooLong,
    #[error("resource attribute '{0}' holds bytes, which MLflow cannot turn into a trace tag")]
    ResourceBytes(String),
}

impl Refusal {
    /// Metric label (`gateway_receiver_spans_rejected_total{reason}`).
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::TimeOutOfRange => "time_out_of_range",
            Refusal::BadTokenUsage(_) => "bad_token_usage",
            Refusal::BadCost(_) => "bad_cost",
            Refusal::BadSpanType => "bad_span_type",
            Refusal::UserIdTooLong => "bad_user_id",
            Refusal::ResourceBytes(_) => "bad_resource",
        }
    }
}

/// Whether `check_span` reads an attribute of this name.
fn is_checked(key: &[u8]) -> bool {
    [TOKEN_USAGE, COST, SPAN_TYPE, USER_ID]
        .iter()
        .any(|k| k.as_bytes() == key)
}

/// Checks one span. `attributes` is its scope's list (`ScopeSpansView::attributes`).
pub fn check_span(span: &SpanView, attributes: &[AttributeAt]) -> Result<(), Refusal> {
    // MLflow stores both times as signed 64-bit integers (SQLite answers 500, PostgreSQL 400).
    if span.start_time_unix_nano > i64::MAX as u64 || span.end_time_unix_nano > i64::MAX as u64 {
        return Err(Refusal::TimeOutOfRange);
    }
    for kv in span.attributes_where(attributes, is_checked) {
        check_attribute(&kv)?;
    }
    Ok(())
}

fn check_attribute(kv: &KeyValue) -> Result<(), Refusal> {
    let value = kv.value.as_ref();
    match kv.key.as_str() {
        TOKEN_USAGE => match as_stored(value) {
            // Any other shape is ignored; in an object, every count must add up.
            Some(Json::Object(usage)) => match TOKEN_KEYS
                .iter()
                .find(|k| usage.get(**k).is_some_and(|v| !is_number(v)))
            {
                Some(key) => Err(Refusal::BadTokenUsage((*key).into())),
                None => Ok(()),
            },
            _ => Ok(()),
        },
        // MLflow calls `.get` on the stored cost whatever its shape.
        COST => match as_stored(value) {
            None => Ok(()),
            Some(Json::Object(cost)) => match COST_KEYS
                .iter()
                .find(|k| cost.get(**k).is_some_and(|v| !is_number(v)))
            {
                Some(key) => Err(Refusal::BadCost(format!("'{key}' is not a number"))),
                None => Ok(()),
            },
            Some(other) => Err(Refusal::BadCost(format!("got {}", kind(&other)))),
        },
        SPAN_TYPE => match value.and_then(|v| v.value.as_ref()) {
            Some(Value::ArrayValue(_) | Value::KvlistValue(_)) => Err(Refusal::BadSpanType),
            Some(Value::StringValue(s)) if s.chars().nth(MAX_SPAN_TYPE_CHARS).is_some() => {
                Err(Refusal::BadSpanType)
            }
            _ => Ok(()),
        },
        USER_ID => {
            let chars = match value.and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.chars().count(),
                _ => python_dump_len(&to_json(value)),
            };
            if chars > MAX_USER_ID_CHARS {
                Err(Refusal::UserIdTooLong)
            } else {
                Ok(())
            }
        }
        _ => Ok(()),
    }
}

/// Checks a resource: MLflow writes its attributes as trace tags, JSON-encoded, and fails on
/// bytes anywhere in them (a 500, which is retried).
pub fn check_resource(resource: Option<&Resource>) -> Result<(), Refusal> {
    let Some(resource) = resource else {
        return Ok(());
    };
    for kv in &resource.attributes {
        if kv.key.is_empty()
            || UNSERIALIZED_RESOURCE_PREFIXES
                .iter()
                .any(|p| kv.key.starts_with(p))
        {
            continue;
        }
        if kv.value.as_ref().is_some_and(holds_bytes) {
            return Err(Refusal::ResourceBytes(kv.key.clone()));
        }
    }
    Ok(())
}

fn holds_bytes(value: &AnyValue) -> bool {
    match &value.value {
        Some(Value::BytesValue(_)) => true,
        Some(Value::ArrayValue(a)) => a.values.iter().any(holds_bytes),
        Some(Value::KvlistValue(l)) => l
            .values
            .iter()
            .filter_map(|kv| kv.value.as_ref())
            .any(holds_bytes),
        _ => false,
    }
}

/// The value as MLflow's store reads it back: the attribute decoded, and a string holding a
/// JSON object, array or string unwrapped once (MLflow's `sanitize_attributes`). `None` when
/// only Python can tell: its JSON reader also takes NaN, Infinity and numbers past f64's range,
/// which serde_json does not, so such text is given the benefit of the doubt.
fn as_stored(value: Option<&AnyValue>) -> Option<Json> {
    if let Some(Value::StringValue(s)) = value.and_then(|v| v.value.as_ref()) {
        match serde_json::from_str::<Json>(s) {
            Ok(inner @ (Json::Object(_) | Json::Array(_) | Json::String(_))) => return Some(inner),
            Ok(_) => {}
            Err(e)
                if e.to_string().starts_with("number out of range")
                    || s.contains("NaN")
                    || s.contains("Infinity") =>
            {
                return None;
            }
            Err(_) => {}
        }
    }
    Some(to_json(value))
}

/// An attribute value as JSON, shapes kept: numbers that JSON cannot hold (NaN, infinities)
/// become 0, bytes a string.
fn to_json(value: Option<&AnyValue>) -> Json {
    match value.and_then(|v| v.value.as_ref()) {
        None => Json::Null,
        Some(Value::StringValue(s)) => Json::String(s.clone()),
        Some(Value::BoolValue(b)) => Json::Bool(*b),
        Some(Value::IntValue(i)) => Json::from(*i),
        Some(Value::DoubleValue(d)) => Json::from(if d.is_finite() { *d } else { 0.0 }),
        Some(Value::StringValueStrindex(i)) => Json::from(*i),
        Some(Value::BytesValue(b)) => Json::String(String::from_utf8_lossy(b).into_owned()),
        Some(Value::ArrayValue(a)) => {
            Json::Array(a.values.iter().map(|v| to_json(Some(v))).collect())
        }
        Some(Value::KvlistValue(l)) => Json::Object(
            l.values
                .iter()
                .map(|kv| (kv.key.clone(), to_json(kv.value.as_ref())))
                .collect(),
        ),
    }
}

fn is_number(value: &Json) -> bool {
    matches!(value, Json::Number(_) | Json::Bool(_))
}

fn kind(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// Length in characters of Python's `json.dumps(value, ensure_ascii=False)`, which is what
/// MLflow stores for a `user.id` that is not a string (", " and ": " between items).
fn python_dump_len(value: &Json) -> usize {
    fn string_len(s: &str) -> usize {
        2 + s
            .chars()
            .map(|c| match c {
                '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
                c if (c as u32) < 0x20 => 6,
                _ => 1,
            })
            .sum::<usize>()
    }
    let separators = |n: usize| 2 * n.saturating_sub(1);
    match value {
        Json::Null | Json::Bool(true) => 4,
        Json::Bool(false) => 5,
        Json::Number(n) => n.to_string().len(),
        Json::String(s) => string_len(s),
        Json::Array(items) => {
            2 + items.iter().map(python_dump_len).sum::<usize>() + separators(items.len())
        }
        Json::Object(map) => {
            2 + map
                .iter()
                .map(|(k, v)| string_len(k) + 2 + python_dump_len(v))
                .sum::<usize>()
                + separators(map.len())
        }
    }
}

#[cfg(test)]
mod tests;
