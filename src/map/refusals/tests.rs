//! Each case here was sent to a real MLflow 3.17.2 (benches/probes/mlflow_refusals.py, SQLite
//! and PostgreSQL): "refused" ones sank their whole request there.

use super::*;
use bytes::Bytes;
use opentelemetry_proto::tonic::common::v1::{ArrayValue, KeyValueList};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

fn value(v: Value) -> AnyValue {
    AnyValue { value: Some(v) }
}

fn string(s: &str) -> AnyValue {
    value(Value::StringValue(s.into()))
}

fn kvlist(pairs: &[(&str, AnyValue)]) -> AnyValue {
    value(Value::KvlistValue(KeyValueList {
        values: pairs
            .iter()
            .map(|(k, v)| KeyValue {
                key: (*k).into(),
                value: Some(v.clone()),
                ..Default::default()
            })
            .collect(),
    }))
}

fn check(key: &str, v: Option<AnyValue>) -> Result<(), Refusal> {
    let span = Span {
        trace_id: vec![1; 16],
        span_id: vec![1; 8],
        start_time_unix_nano: 1,
        end_time_unix_nano: 2,
        attributes: vec![KeyValue {
            key: key.into(),
            value: v,
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut attributes = Vec::new();
    let view = SpanView::parse(Bytes::from(span.encode_to_vec()), &mut attributes, 100).unwrap();
    check_span(&view, &attributes)
}

#[test]
fn cost_must_be_an_object_of_numbers() {
    let accepted = [
        kvlist(&[("input_cost", value(Value::DoubleValue(1.0)))]),
        string(r#"{"input_cost": 0.1, "output_cost": 2, "total_cost": 2.1}"#),
        string(r#"{"other": "x"}"#),
        string(r#"{"input_cost": 1e400}"#),
        string(r#"{"total_cost": true}"#),
    ];
    for v in accepted {
        assert_eq!(check(COST, Some(v.clone())), Ok(()), "{v:?}");
    }
    let refused = [
        Some(value(Value::IntValue(5))),
        Some(string("5")),
        None,
        Some(string(r#"{"input_cost": null}"#)),
        Some(string(r#"{"total_cost": "1"}"#)),
        Some(string("[1]")),
        Some(string("{oops")),
        Some(value(Value::DoubleValue(1.5))),
    ];
    for v in refused {
        assert!(
            matches!(check(COST, v.clone()), Err(Refusal::BadCost(_))),
            "{v:?}"
        );
    }
}

#[test]
fn token_usage_counts_must_be_numbers_when_it_is_an_object() {
    let accepted = [
        string("{oops"),
        string(r#"{"input_tokens": 1.5}"#),
        string(r#"{"input_tokens": true}"#),
        string("[1]"),
        value(Value::IntValue(5)),
        string(r#"{"other": "x"}"#),
        string(r#"{"input_tokens": 9223372036854775808, "total_tokens": 1}"#),
    ];
    for v in accepted {
        assert_eq!(check(TOKEN_USAGE, Some(v.clone())), Ok(()), "{v:?}");
    }
    let refused = [
        string(r#"{"input_tokens": "a", "output_tokens": []}"#),
        string(r#"{"input_tokens": null}"#),
        string(r#"{"cache_read_input_tokens": "x"}"#),
        kvlist(&[("input_tokens", string("a"))]),
    ];
    for v in refused {
        assert!(
            matches!(
                check(TOKEN_USAGE, Some(v.clone())),
                Err(Refusal::BadTokenUsage(_))
            ),
            "{v:?}"
        );
    }
}

#[test]
fn span_type_and_user_id_must_fit_mlflows_columns() {
    assert_eq!(check(SPAN_TYPE, Some(string("LLM"))), Ok(()));
    assert_eq!(check(SPAN_TYPE, Some(value(Value::IntValue(3)))), Ok(()));
    assert_eq!(check(SPAN_TYPE, Some(string(&"X".repeat(500)))), Ok(()));
    assert_eq!(
        check(SPAN_TYPE, Some(string(&"X".repeat(501)))),
        Err(Refusal::BadSpanType)
    );
    assert_eq!(
        check(SPAN_TYPE, Some(kvlist(&[]))),
        Err(Refusal::BadSpanType)
    );
    assert_eq!(
        check(
            SPAN_TYPE,
            Some(value(Value::ArrayValue(ArrayValue::default())))
        ),
        Err(Refusal::BadSpanType)
    );
    assert_eq!(check(USER_ID, Some(string(&"é".repeat(8000)))), Ok(()));
    assert_eq!(
        check(USER_ID, Some(string(&"u".repeat(8001)))),
        Err(Refusal::UserIdTooLong)
    );
    assert_eq!(
        check(USER_ID, Some(kvlist(&[("a", value(Value::IntValue(1)))]))),
        Ok(())
    );
    assert_eq!(
        check(USER_ID, Some(kvlist(&[("a", string(&"u".repeat(7995)))]))),
        Err(Refusal::UserIdTooLong),
        "stored as its JSON text, which is longer"
    );
}

#[test]
fn times_past_2_to_the_63_are_refused() {
    let span = |start: u64, end: u64| Span {
        trace_id: vec![1; 16],
        span_id: vec![1; 8],
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        ..Default::default()
    };
    let verdict = |s: Span| {
        let mut attributes = Vec::new();
        let view = SpanView::parse(Bytes::from(s.encode_to_vec()), &mut attributes, 100).unwrap();
        check_span(&view, &attributes)
    };
    let max = i64::MAX as u64;
    assert_eq!(verdict(span(1, max)), Ok(()));
    assert_eq!(verdict(span(1, max + 1)), Err(Refusal::TimeOutOfRange));
    assert_eq!(
        verdict(span(max + 1, max + 1)),
        Err(Refusal::TimeOutOfRange)
    );
}

#[test]
fn resource_attributes_holding_bytes_are_refused() {
    let resource = |key: &str, v: AnyValue| Resource {
        attributes: vec![KeyValue {
            key: key.into(),
            value: Some(v),
            ..Default::default()
        }],
        ..Default::default()
    };
    let bytes = value(Value::BytesValue(vec![0xff]));
    for refused in [
        bytes.clone(),
        value(Value::ArrayValue(ArrayValue {
            values: vec![bytes.clone()],
        })),
        kvlist(&[("a", bytes.clone())]),
    ] {
        assert!(matches!(
            check_resource(Some(&resource("odd", refused))),
            Err(Refusal::ResourceBytes(_))
        ));
    }
    // Keys MLflow does not serialize, and everything that is not bytes.
    for (key, v) in [
        ("telemetry.sdk.x", bytes.clone()),
        ("mlflow.x", bytes.clone()),
        ("", bytes),
        ("nan", value(Value::DoubleValue(f64::NAN))),
        ("map", kvlist(&[("a", value(Value::IntValue(1)))])),
    ] {
        assert_eq!(check_resource(Some(&resource(key, v))), Ok(()), "{key}");
    }
    assert_eq!(check_resource(None), Ok(()));
}

#[test]
fn python_dump_lengths_match_pythons() {
    // json.dumps({"a": [1, "x\n"], "b": None}, ensure_ascii=False) == '{"a": [1, "x\\n"], "b": null}'
    let v: Json = serde_json::json!({"a": [1, "x\n"], "b": null});
    assert_eq!(python_dump_len(&v), r#"{"a": [1, "x\n"], "b": null}"#.len());
    assert_eq!(python_dump_len(&Json::from("é")), 3);
}
