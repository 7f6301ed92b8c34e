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
