use super::*;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, KeyValue};
use prost::Message;

const MAX: usize = MLFLOW_MAX_NESTING;

/// The shortcut for plain attributes takes the shapes SDKs send, and on every input gives
/// what the schema walk gives (and prost agrees on which are valid).
#[test]
fn the_attribute_shortcut_agrees_with_the_schema_walk() {
    let kv = |key: &str, value: Option<Value>| {
        KeyValue {
            key: key.into(),
            value: value.map(|v| AnyValue { value: Some(v) }),
            ..Default::default()
        }
        .encode_to_vec()
    };
    let plain = [
        kv(
            "gen_ai.request.model",
            Some(Value::StringValue("gpt-4o".into())),
        ),
        kv("llm.streaming", Some(Value::BoolValue(true))),
        kv("gen_ai.usage.input_tokens", Some(Value::IntValue(-1234))),
        kv("gen_ai.request.temperature", Some(Value::DoubleValue(0.7))),
        kv("kein_wert", None),
        kv(
            "プロンプト",
            Some(Value::StringValue("こんにちは".repeat(40))),
        ),
        kv(&"k".repeat(200), Some(Value::StringValue("v".repeat(300)))),
        [0x0a, 0x01, b'e', 0x12, 0x00].to_vec(), // an empty AnyValue
    ];
    let mut walked_only = vec![
        kv(
            "list",
            Some(Value::ArrayValue(ArrayValue { values: vec![] })),
        ),
        kv("bytes", Some(Value::BytesValue(vec![0xff, 0x00]))),
        [0x12, 0x02, 0x10, 0x01, 0x0a, 0x01, b'k'].to_vec(), // value before key
        [0x0a, 0x01, b'a', 0x0a, 0x01, b'b'].to_vec(),       // a repeated key: the last wins
        [0x0a, 0x01, b'a', 0x18, 0x07].to_vec(),             // key_strindex beside the key
        [0x0a, 0x01, b'a', 0x78, 0x01].to_vec(),             // an unknown field
        Vec::new(),
    ];
    let not_utf8 = [
        [0x0a, 0x01, 0xff].to_vec(),                               // key
        [0x0a, 0x01, b'k', 0x12, 0x03, 0x0a, 0x01, 0xff].to_vec(), // value
    ];
    let invalid = [
        [0x0a, 0x05, b'k'].to_vec(),                         // truncated key
        [0x0a, 0x01, b'k', 0x12, 0x05, 0x10].to_vec(),       // truncated value
        [0x0a, 0x01, b'k', 0x12, 0x02, 0x21, 0x00].to_vec(), // truncated double
        [0x0a, 0x01, b'k', 0x12, 0x02, 0x0a, 0x05].to_vec(), // string past its value
        [0x0a, 0x01, b'k', 0x10, 0x01].to_vec(),             // value as a varint
        [0x0a, 0x01, b'k', 0x12, 0x01, 0x11].to_vec(),       // bool as a double
    ];
    for buf in &plain {
        let key = plain_key_value(buf).expect("a plain attribute takes the shortcut");
        let decoded = KeyValue::decode(&buf[..]).expect("prost takes it");
        assert_eq!(&buf[key.clone()], decoded.key.as_bytes());
        walked_only.push(buf.clone());
    }
    for buf in &walked_only {
        let mut walked = 0..0;
        let utf8 = check_noting(buf, &KEY_VALUE, 4, MAX, |field| {
            if let (1, FieldValue::Len(r)) = (field.number, &field.value) {
                walked = r.clone();
            }
        })
        .expect("the schema walk takes it");
        assert_eq!(utf8, Utf8::Valid);
        assert!(KeyValue::decode(&buf[..]).is_ok(), "{buf:?}");
        assert_eq!(
            check_key_value(buf, 4, MAX).unwrap(),
            (walked.clone(), Utf8::Valid),
            "{buf:?}"
        );
        if let Some(key) = plain_key_value(buf) {
            assert_eq!(key, walked, "{buf:?}");
        }
    }
    for buf in &not_utf8 {
        assert_eq!(plain_key_value(buf), None, "{buf:?}");
        assert_eq!(
            check_key_value(buf, 4, MAX).unwrap().1,
            Utf8::Invalid,
            "{buf:?}"
        );
        assert!(KeyValue::decode(&buf[..]).is_err(), "{buf:?}");
        let fixed = repaired(buf, &KEY_VALUE);
        let decoded = KeyValue::decode(&fixed[..]).expect("repaired");
        assert!(format!("{decoded:?}").contains('\u{fffd}'));
    }
    for buf in &invalid {
        assert_eq!(plain_key_value(buf), None, "{buf:?}");
        assert!(
            matches!(check_key_value(buf, 4, MAX), Err(Fault::Malformed(_))),
            "{buf:?}"
        );
        assert!(KeyValue::decode(&buf[..]).is_err(), "{buf:?}");
    }
}

/// Every message counts, an empty one too: a value at the limit passes, one level more not.
#[test]
fn depth_counts_each_message_from_the_request() {
    let empty_any = AnyValue::default().encode_to_vec();
    assert_eq!(check(&empty_any, &ANY_VALUE, MAX, MAX), Ok(Utf8::Valid));
    assert_eq!(
        check(&empty_any, &ANY_VALUE, MAX + 1, MAX),
        Err(Fault::TooDeep { limit: MAX })
    );
    // An array holding an empty AnyValue: the inner one is one level down.
    let array = AnyValue {
        value: Some(Value::ArrayValue(ArrayValue {
            values: vec![AnyValue::default()],
        })),
    }
    .encode_to_vec();
    assert!(check(&array, &ANY_VALUE, MAX - 2, MAX).is_ok());
    assert!(check(&array, &ANY_VALUE, MAX - 1, MAX).is_err());
    // The shortcut never hides a value past the limit.
    let kv = [0x0a, 0x01, b'k', 0x12, 0x02, 0x10, 0x01];
    assert!(check_key_value(&kv, MAX - 1, MAX).is_ok());
    assert!(check_key_value(&kv, MAX, MAX).is_err());
}

#[test]
fn repair_leaves_valid_messages_borrowed_and_fixes_only_broken_strings() {
    let good = KeyValue {
        key: "k".into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue("v".into())),
        }),
        ..Default::default()
    }
    .encode_to_vec();
    assert!(matches!(repaired(&good, &KEY_VALUE), Cow::Borrowed(_)));
    // Bytes values may hold anything; only strings are repaired.
    let bytes = KeyValue {
        key: "k".into(),
        value: Some(AnyValue {
            value: Some(Value::BytesValue(vec![0xff, 0xfe])),
        }),
        ..Default::default()
    }
    .encode_to_vec();
    assert_eq!(check(&bytes, &KEY_VALUE, 4, MAX), Ok(Utf8::Valid));
    assert!(matches!(repaired(&bytes, &KEY_VALUE), Cow::Borrowed(_)));
}
