//! A trace's `mlflow.traceInputs` / `mlflow.traceOutputs` metadata: its root's inputs and
//! outputs as MLflow stores them, cut as MLflow's SDK cuts them (`_truncate_metadata` in
//! `mlflow/tracing/processor/base_mlflow.py`: 250 characters, the last three "...").

use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use serde_json::Value as Json;

pub const TRACE_INPUTS: &str = "mlflow.traceInputs";
pub const TRACE_OUTPUTS: &str = "mlflow.traceOutputs";

/// MLflow's `MAX_CHARS_IN_TRACE_INFO_METADATA` and `TRUNCATION_SUFFIX`.
const MAX_CHARS: usize = 250;
const TRUNCATION_SUFFIX: &str = "...";

/// Where a span's inputs are, in the order MLflow's store looks (`mlflow.spanInputs`, then its
/// translators' keys). Keys read by pattern or rewrapped (Traceloop's `gen_ai.prompt.N.*`,
/// Vercel AI's `ai.prompt.*`, Gemini CLI) are not followed.
const INPUT_KEYS: [&str; 16] = [
    "mlflow.spanInputs",
    "input.value",
    "gen_ai.input.messages",
    "gen_ai.tool.call.arguments",
    "traceloop.entity.input",
    "gcp.vertex.agent.llm_request",
    "gcp.vertex.agent.tool_call_args",
    "agent.messages",
    "llm.messages",
    "input",
    "lk.user_input",
    "lk.user_transcript",
    "lk.chat_ctx",
    "lk.input_text",
    "lmnr.span.input",
    "langfuse.observation.input",
];

const OUTPUT_KEYS: [&str; 11] = [
    "mlflow.spanOutputs",
    "output.value",
    "gen_ai.output.messages",
    "gen_ai.tool.call.result",
    "traceloop.entity.output",
    "gcp.vertex.agent.llm_response",
    "gcp.vertex.agent.tool_response",
    "output",
    "lk.response.text",
    "lmnr.span.output",
    "langfuse.observation.output",
];

/// Whether the root's attribute with this key is read.
pub fn reads(key: &[u8]) -> bool {
    INPUT_KEYS
        .iter()
        .chain(OUTPUT_KEYS.iter())
        .any(|k| k.as_bytes() == key)
}

/// The two metadata entries for a root with these attributes ("" when it has none, as the SDK
/// writes them).
pub fn metadata(root: &[KeyValue]) -> [(&'static str, String); 2] {
    [
        (TRACE_INPUTS, truncated(first_value(root, &INPUT_KEYS))),
        (TRACE_OUTPUTS, truncated(first_value(root, &OUTPUT_KEYS))),
    ]
}

/// The first key holding a value MLflow counts (not empty, null, `{}` or `[]`), as MLflow
/// stores it.
fn first_value(root: &[KeyValue], keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|key| {
        // MLflow reads the last of repeated keys.
        let kv = root.iter().rev().find(|kv| kv.key == *key)?;
        let (stored, parsed) = as_stored(kv.value.as_ref()?)?;
        is_truthy(&parsed).then_some(stored)
    })
}

/// An attribute value as MLflow stores it for an OTLP span (JSON text, with a string that is
/// already a JSON string, object or array, as MLflow's SDK writes every value, kept as it is),
/// and that text's value. One parse of the string serves both.
fn as_stored(value: &AnyValue) -> Option<(String, Json)> {
    match value.value.as_ref()? {
        Value::StringValue(s) => Some(match serde_json::from_str::<Json>(s) {
            Ok(parsed @ (Json::String(_) | Json::Object(_) | Json::Array(_))) => {
                (s.clone(), parsed)
            }
            _ => (Json::String(s.clone()).to_string(), Json::String(s.clone())),
        }),
        other => {
            let parsed = to_json(other);
            Some((parsed.to_string(), parsed))
        }
    }
}

fn to_json(value: &Value) -> Json {
    match value {
        Value::StringValue(s) => Json::String(s.clone()),
        Value::BoolValue(b) => Json::Bool(*b),
        Value::IntValue(i) => Json::from(*i),
        Value::DoubleValue(d) => Json::from(*d),
        Value::ArrayValue(a) => Json::Array(
            a.values
                .iter()
                .map(|v| v.value.as_ref().map_or(Json::Null, to_json))
                .collect(),
        ),
        Value::KvlistValue(kvs) => Json::Object(
            kvs.values
                .iter()
                .map(|kv| {
                    let v = kv.value.as_ref().and_then(|v| v.value.as_ref());
                    (kv.key.clone(), v.map_or(Json::Null, to_json))
                })
                .collect(),
        ),
        Value::BytesValue(_) | Value::StringValueStrindex(_) => Json::Null,
    }
}

/// Python's truth value of a JSON value, which MLflow's translators test.
fn is_truthy(v: &Json) -> bool {
    match v {
        Json::Null => false,
        Json::Bool(b) => *b,
        Json::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Json::String(s) => !s.is_empty(),
        Json::Array(a) => !a.is_empty(),
        Json::Object(o) => !o.is_empty(),
    }
}

/// Cut to MLflow's metadata limit in characters, ending in "..." when cut.
fn truncated(value: Option<String>) -> String {
    let Some(value) = value else {
        return String::new();
    };
    if value.chars().count() <= MAX_CHARS {
        return value;
    }
    let keep = MAX_CHARS - TRUNCATION_SUFFIX.len();
    let mut out: String = value.chars().take(keep).collect();
    out.push_str(TRUNCATION_SUFFIX);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::attrs::{kv_str, kv_value};

    #[test]
    fn sdk_inputs_are_kept_as_json_and_plain_text_is_json_encoded() {
        let sdk = [kv_str("mlflow.spanInputs", r#"{"question": "hi"}"#)];
        assert_eq!(metadata(&sdk)[0].1, r#"{"question": "hi"}"#);
        let quoted = [kv_str("mlflow.spanOutputs", r#""the answer""#)];
        assert_eq!(metadata(&quoted)[1].1, r#""the answer""#);
        let plain = [kv_str("input.value", "hello \"you\"")];
        assert_eq!(metadata(&plain)[0].1, r#""hello \"you\"""#);
        let number = [kv_value("output", Value::IntValue(42))];
        assert_eq!(metadata(&number)[1].1, "42");
    }

    #[test]
    fn keys_are_tried_in_mlflow_order_and_empty_values_skipped() {
        let attrs = [
            kv_str("gen_ai.input.messages", r#"[{"role":"user"}]"#),
            kv_str("input.value", ""),
            kv_str("mlflow.spanInputs", "{}"),
        ];
        assert_eq!(metadata(&attrs)[0].1, r#"[{"role":"user"}]"#);
        assert_eq!(metadata(&[])[0].1, "");
        assert_eq!(metadata(&[])[1].1, "");
    }

    #[test]
    fn long_values_are_cut_to_250_characters_with_the_suffix() {
        let long = "é".repeat(300);
        let attrs = [kv_str("mlflow.spanInputs", &format!("\"{long}\""))];
        let cut = &metadata(&attrs)[0].1;
        assert_eq!(cut.chars().count(), 250);
        assert!(cut.starts_with("\"éé"));
        assert!(cut.ends_with("é..."));
        let exact = [kv_str(
            "mlflow.spanInputs",
            &format!("\"{}\"", "a".repeat(248)),
        )];
        assert_eq!(metadata(&exact)[0].1.chars().count(), 250);
        assert!(!metadata(&exact)[0].1.ends_with("..."));
    }
}
