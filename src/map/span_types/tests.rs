use super::*;
use crate::map::attrs::{kv_str, kv_value};

/// Attributes of a golden case as an OTLP exporter sends them.
fn attributes(case: &[serde_json::Value]) -> Vec<KeyValue> {
    case.iter()
        .map(|pair| (pair[0].as_str().expect("key"), &pair[1]))
        .map(|(key, value)| match value {
            serde_json::Value::String(s) => kv_str(key, s),
            serde_json::Value::Bool(b) => kv_value(key, Value::BoolValue(*b)),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => kv_value(key, Value::IntValue(i)),
                None => kv_value(key, Value::DoubleValue(n.as_f64().unwrap_or_default())),
            },
            other => panic!("no golden case has {other}"),
        })
        .collect()
}

#[test]
fn types_are_those_mlflow_derives() {
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(include_str!("cases.json")).expect("cases.json");
    assert!(cases.len() > 100, "{} golden cases", cases.len());
    let mut wrong = Vec::new();
    for case in &cases {
        let attrs = case["attributes"].as_array().expect("attributes");
        let expected = case["type"].as_str().unwrap_or(UNKNOWN);
        let got = settle(&attributes(attrs), false).span_type;
        if !matches!(got, SpanTypeChange::Add(t) if t == expected) {
            wrong.push(format!("{attrs:?}: expected {expected}, got {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn a_set_type_is_kept_and_unknown_gives_way() {
    let llm = [kv_str(SPAN_TYPE_ATTR, "LLM"), kv_str(OPENINFERENCE, "TOOL")];
    assert_eq!(settle(&llm, false).span_type, SpanTypeChange::Keep);
    let custom = [kv_str(SPAN_TYPE_ATTR, "MY_TYPE")];
    assert_eq!(settle(&custom, false).span_type, SpanTypeChange::Keep);
    let unknown = [
        kv_str(SPAN_TYPE_ATTR, "UNKNOWN"),
        kv_str(OPENINFERENCE, "TOOL"),
    ];
    assert_eq!(
        settle(&unknown, false).span_type,
        SpanTypeChange::Replace("TOOL".into())
    );
    let unknown_alone = [kv_str(SPAN_TYPE_ATTR, "UNKNOWN")];
    assert_eq!(
        settle(&unknown_alone, false).span_type,
        SpanTypeChange::Keep
    );
    // Not a string: MLflow keeps it too (lists and maps are refused at ingest).
    let number = [kv_value(SPAN_TYPE_ATTR, Value::IntValue(3))];
    assert_eq!(settle(&number, false).span_type, SpanTypeChange::Keep);
}

#[test]
fn json_quoted_types_from_mlflow_sdk_lose_their_quotes() {
    let quoted = [kv_str(SPAN_TYPE_ATTR, "\"CHAT_MODEL\"")];
    assert_eq!(
        settle(&quoted, false).span_type,
        SpanTypeChange::Replace("CHAT_MODEL".into())
    );
    let quoted_unknown = [kv_str(SPAN_TYPE_ATTR, "\"UNKNOWN\"")];
    assert_eq!(
        settle(&quoted_unknown, false).span_type,
        SpanTypeChange::Replace("UNKNOWN".into())
    );
    let quoted_unknown_kind = [
        kv_str(SPAN_TYPE_ATTR, "\"UNKNOWN\""),
        kv_str(GENAI_OPERATION, "\"chat\""),
    ];
    assert_eq!(
        settle(&quoted_unknown_kind, false).span_type,
        SpanTypeChange::Replace("CHAT_MODEL".into())
    );
}

#[test]
fn the_last_of_repeated_keys_counts() {
    let repeated = [kv_str(OPENINFERENCE, "TOOL"), kv_str(OPENINFERENCE, "LLM")];
    assert_eq!(
        settle(&repeated, false).span_type,
        SpanTypeChange::Add("LLM")
    );
}

#[test]
fn only_the_keys_read_are_picked() {
    for key in KEYS {
        assert!(reads(key.as_bytes()), "{key}");
    }
    assert!(reads(b"lk.agent_name"));
    assert!(!reads(b"http.route"));
    assert!(!reads(b"gen_ai.usage.input_tokens"));
}

#[test]
fn log_levels_are_those_mlflow_sdk_ends_spans_with() {
    let level = |attrs: &[KeyValue], exception| settle(attrs, exception).log_level;
    assert_eq!(level(&[kv_str(GENAI_OPERATION, "chat")], false), Some(INFO));
    assert_eq!(level(&[kv_str(TRACELOOP, "task")], false), Some(DEBUG));
    assert_eq!(level(&[], false), Some(DEBUG));
    assert_eq!(
        level(&[kv_str(SPAN_TYPE_ATTR, "\"TOOL\"")], false),
        Some(INFO)
    );
    assert_eq!(level(&[kv_str(SPAN_TYPE_ATTR, "TOOL")], false), Some(INFO));
    assert_eq!(level(&[kv_str(GENAI_OPERATION, "chat")], true), Some(ERROR));
    let set = [kv_value(LOG_LEVEL_ATTR, Value::IntValue(30))];
    assert_eq!(level(&set, true), None, "a level set is kept");
}
