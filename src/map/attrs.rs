//! Small helpers over OTLP attribute lists.

use std::borrow::Cow;

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};

/// A string attribute as MLflow's ingestion reads it: a JSON string literal (MLflow's SDK
/// JSON-encodes every attribute value) gives its content, anything else is itself. MLflow's
/// store strips that one layer before it reads session, user, tags and types.
pub fn unquoted(s: &str) -> Cow<'_, str> {
    let trimmed = s.trim();
    if trimmed.len() >= 2
        && trimmed.starts_with('"')
        && trimmed.ends_with('"')
        && let Ok(inner) = serde_json::from_str::<String>(trimmed)
    {
        return Cow::Owned(inner);
    }
    Cow::Borrowed(s)
}

/// A string attribute as MLflow's translators compare it with a name: `unquoted`, and none
/// for a JSON object or array (which names nothing).
pub fn as_mlflow_reads(s: &str) -> Option<Cow<'_, str>> {
    let trimmed = s.trim_start();
    if (trimmed.starts_with('{') || trimmed.starts_with('['))
        && serde_json::from_str::<serde::de::IgnoredAny>(s).is_ok()
    {
        return None;
    }
    Some(unquoted(s))
}

/// Decodes string values that are JSON text, as MLflow's SDK writes every attribute value:
/// strings, numbers and booleans become their OTLP kind; objects, arrays and null stay text
/// (MLflow reads those from their JSON).
pub fn decode_json(attrs: &mut [KeyValue]) {
    use serde_json::Value as Json;
    for kv in attrs {
        let Some(AnyValue {
            value: Some(value @ Value::StringValue(_)),
        }) = kv.value.as_mut()
        else {
            continue;
        };
        let Value::StringValue(text) = &*value else {
            continue;
        };
        *value = match serde_json::from_str::<Json>(text) {
            Ok(Json::String(s)) => Value::StringValue(s),
            Ok(Json::Bool(b)) => Value::BoolValue(b),
            Ok(Json::Number(n)) => match n.as_i64() {
                Some(i) => Value::IntValue(i),
                None => Value::DoubleValue(n.as_f64().unwrap_or_default()),
            },
            _ => continue,
        };
    }
}

/// The value as MLflow would show it: strings `unquoted`, scalars stringified, an array by its first
/// element (captured HTTP headers are string arrays). Empty values count as absent.
pub fn value_to_string(v: &AnyValue) -> Option<String> {
    let s = match v.value.as_ref()? {
        Value::StringValue(s) => unquoted(s).into_owned(),
        Value::BoolValue(b) => b.to_string(),
        Value::IntValue(i) => i.to_string(),
        Value::DoubleValue(d) => d.to_string(),
        Value::ArrayValue(a) => return a.values.iter().find_map(value_to_string),
        // String-table references only occur in profiles, never in traces.
        Value::KvlistValue(_) | Value::BytesValue(_) | Value::StringValueStrindex(_) => {
            return None;
        }
    };
    (!s.trim().is_empty()).then_some(s)
}

/// The stringified value of the first attribute named `key`.
pub fn find_str(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(value_to_string)
}

/// Sets `key` to a string value, replacing an existing attribute of that name.
pub fn set_str(attrs: &mut Vec<KeyValue>, key: &str, value: &str) {
    let value = Some(AnyValue {
        value: Some(Value::StringValue(value.to_string())),
    });
    match attrs.iter_mut().find(|kv| kv.key == key) {
        Some(kv) => kv.value = value,
        None => attrs.push(KeyValue {
            key: key.to_string(),
            value,
            ..Default::default()
        }),
    }
}

pub fn kv_str(key: &str, value: &str) -> KeyValue {
    kv_value(key, Value::StringValue(value.to_string()))
}

pub fn kv_value(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_text_from_mlflow_sdk_is_decoded_to_its_kind() {
        let mut attrs = vec![
            kv_str("s", "\"req-1\""),
            kv_str("i", "10"),
            kv_str("f", "1.5"),
            kv_str("b", "true"),
            kv_str("o", r#"{"a": 1}"#),
            kv_str("l", "[1, 2]"),
            kv_str("n", "null"),
            kv_str("plain", "not json"),
            kv_value("already", Value::IntValue(3)),
        ];
        decode_json(&mut attrs);
        let value = |key: &str| {
            attrs
                .iter()
                .find(|kv| kv.key == key)
                .and_then(|kv| kv.value.clone()?.value)
        };
        assert_eq!(value("s"), Some(Value::StringValue("req-1".into())));
        assert_eq!(value("i"), Some(Value::IntValue(10)));
        assert_eq!(value("f"), Some(Value::DoubleValue(1.5)));
        assert_eq!(value("b"), Some(Value::BoolValue(true)));
        assert_eq!(value("o"), Some(Value::StringValue(r#"{"a": 1}"#.into())));
        assert_eq!(value("l"), Some(Value::StringValue("[1, 2]".into())));
        assert_eq!(value("n"), Some(Value::StringValue("null".into())));
        assert_eq!(value("plain"), Some(Value::StringValue("not json".into())));
        assert_eq!(value("already"), Some(Value::IntValue(3)));
    }

    #[test]
    fn unquoted_reads_json_string_literals_only() {
        assert_eq!(unquoted("\"a\""), "a");
        assert_eq!(unquoted(" \"a\\\"b\" "), "a\"b");
        assert_eq!(unquoted("a"), "a");
        assert_eq!(unquoted("\"unterminated"), "\"unterminated");
        assert_eq!(as_mlflow_reads(r#"{"a": 1}"#), None);
        assert_eq!(as_mlflow_reads("{not json").as_deref(), Some("{not json"));
    }
}
