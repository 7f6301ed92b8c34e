use super::*;
use crate::otlp::schema::MLFLOW_MAX_NESTING;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode(json: &str) -> (ExportTraceServiceRequest, Transcoded) {
    let t = transcode(json.as_bytes(), MLFLOW_MAX_NESTING).expect("transcodes");
    let req = ExportTraceServiceRequest::decode(&t.body[..]).expect("valid protobuf");
    (req, t)
}

const CAMEL: &str = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"svc"}}],"droppedAttributesCount":1},
  "scopeSpans":[{"scope":{"name":"lib","version":"1"},"schemaUrl":"s",
  "spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","parentSpanId":"eee19b7ec3c1b175",
  "traceState":"a=b","flags":257,"name":"root","kind":"SPAN_KIND_SERVER","startTimeUnixNano":"1544712660000000000",
  "endTimeUnixNano":1544712661000000000,"droppedAttributesCount":2,"droppedEventsCount":3,"droppedLinksCount":4,
  "attributes":[{"key":"i","value":{"intValue":"-7"}},{"key":"d","value":{"doubleValue":"NaN"}},
    {"key":"b","value":{"boolValue":true}},{"key":"x","value":{"bytesValue":"AP8="}},
    {"key":"a","value":{"arrayValue":{"values":[{"stringValue":"1"},{"intValue":2}]}}},
    {"key":"m","value":{"kvlistValue":{"values":[{"key":"k","value":{"doubleValue":1.5}}]}}}],
  "events":[{"timeUnixNano":"5","name":"e","attributes":[{"key":"k","value":{"stringValue":"v"}}]}],
  "links":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b176","flags":1}],
  "status":{"code":"STATUS_CODE_ERROR","message":"boom"}}]}],"schemaUrl":"r"}]}"#;

/// Both spellings the proto3 JSON mapping names, enums as numbers, integers as numbers.
const SNAKE: &str = r#"{"resource_spans":[{"resource":{"attributes":[{"key":"service.name","value":{"string_value":"svc"}}],"dropped_attributes_count":1},
  "scope_spans":[{"scope":{"name":"lib","version":"1"},"schema_url":"s",
  "spans":[{"trace_id":"5b8efff798038103d269b633813fc60c","span_id":"eee19b7ec3c1b174","parent_span_id":"eee19b7ec3c1b175",
  "trace_state":"a=b","flags":"257","name":"root","kind":2,"start_time_unix_nano":1544712660000000000,
  "end_time_unix_nano":"1544712661000000000","dropped_attributes_count":"2","dropped_events_count":3,"dropped_links_count":4,
  "attributes":[{"key":"i","value":{"int_value":-7}},{"key":"d","value":{"double_value":"NaN"}},
    {"key":"b","value":{"bool_value":true}},{"key":"x","value":{"bytes_value":"AP8"}},
    {"key":"a","value":{"array_value":{"values":[{"string_value":"1"},{"int_value":"2"}]}}},
    {"key":"m","value":{"kvlist_value":{"values":[{"key":"k","value":{"double_value":"1.5"}}]}}}],
  "events":[{"time_unix_nano":5,"name":"e","attributes":[{"key":"k","value":{"string_value":"v"}}]}],
  "links":[{"trace_id":"W47/95gDgQPSabYzgT/GDA==","span_id":"7uGbfsPBsXY=","flags":1}],
  "status":{"code":2,"message":"boom"}}]}],"schema_url":"r"}]}"#;

#[test]
fn both_spellings_and_every_scalar_form_give_the_same_request() {
    let (camel, t) = decode(CAMEL);
    assert!(t.rejected.is_empty());
    assert_eq!(t.unknown_field, None);
    let (snake, t) = decode(SNAKE);
    assert!(t.rejected.is_empty(), "{:?}", t.rejected);
    // NaN is not equal to itself: compare the encodings.
    assert_eq!(camel.encode_to_vec(), snake.encode_to_vec());

    let span = &camel.resource_spans[0].scope_spans[0].spans[0];
    assert_eq!(to_hex(&span.trace_id), "5b8efff798038103d269b633813fc60c");
    assert_eq!(span.kind, 2);
    assert_eq!(span.flags, 257);
    assert_eq!(span.start_time_unix_nano, 1544712660000000000);
    assert_eq!(span.end_time_unix_nano, 1544712661000000000);
    assert_eq!(span.status.as_ref().map(|s| s.code), Some(2));
    assert_eq!(
        span.attributes[0].value.as_ref().unwrap().value,
        Some(Value::IntValue(-7))
    );
    assert!(matches!(
        span.attributes[1].value.as_ref().unwrap().value,
        Some(Value::DoubleValue(d)) if d.is_nan()
    ));
    assert_eq!(
        span.attributes[3].value.as_ref().unwrap().value,
        Some(Value::BytesValue(vec![0, 255]))
    );
    assert_eq!(to_hex(&span.links[0].span_id), "eee19b7ec3c1b176");
}

/// The camelCase form, enums as numbers, is what opentelemetry-proto's own serde reads (it
/// takes no enum names); both agree on it.
#[test]
fn agrees_with_opentelemetry_protos_json_reader() {
    let json = CAMEL
        .replace(r#"{"key":"d","value":{"doubleValue":"NaN"}},"#, "")
        .replace(r#""SPAN_KIND_SERVER""#, "2")
        .replace(r#""STATUS_CODE_ERROR""#, "2");
    let theirs: ExportTraceServiceRequest = serde_json::from_str(&json).expect("serde reads it");
    let (ours, _) = decode(&json);
    assert_eq!(ours, theirs);
}

fn span_json(name: &str, extra: &str) -> String {
    format!(
        r#"{{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"{name}",
        "startTimeUnixNano":"1","endTimeUnixNano":"2"{extra}}}"#
    )
}

fn request_of(spans: &[String]) -> String {
    format!(
        r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{}]}}]}}]}}"#,
        spans.join(",")
    )
}

/// Each case puts one field of the wrong type in a span beside a good one: that span is set
/// aside with the reason, the good one goes on.
#[test]
fn a_span_with_a_field_of_the_wrong_type_is_set_aside_alone() {
    for extra in [
        r#","startTimeUnixNano":"soon""#,
        r#","endTimeUnixNano":-1"#,
        r#","endTimeUnixNano":1.5"#,
        r#","traceId":"not hex""#,
        r#","kind":"SPAN_KIND_SIDEWAYS""#,
        r#","kind":99999999999"#,
        r#","name":7"#,
        r#","attributes":{"key":"a"}"#,
        r#","attributes":[{"key":"a","value":{"intValue":"x"}}]"#,
        r#","attributes":[{"key":"a","value":{"boolValue":"yes"}}]"#,
        r#","attributes":[{"key":"a","value":{"bytesValue":"***"}}]"#,
        r#","attributes":[{"key":"a","value":{"stringValue":"bad \q escape"}}]"#,
        r#","attributes":[null]"#,
        r#","events":[{"timeUnixNano":"x"}]"#,
        r#","status":{"code":"ERROR"}"#,
        r#","status":"ok""#,
    ] {
        let json = request_of(&[span_json("bad", extra), span_json("good", "")]);
        let (req, t) = decode(&json);
        let spans = &req.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans.len(), 1, "{extra}");
        assert_eq!(spans[0].name, "good", "{extra}");
        assert_eq!(t.rejected.len(), 1, "{extra}");
        assert_eq!(t.rejected[0].subject, "span 'bad'", "{extra}");
        assert_eq!(t.rejected[0].fault.reason(), "malformed", "{extra}");
    }
}

#[test]
fn a_bad_resource_or_scope_sets_its_spans_aside() {
    let spans = [span_json("a", ""), span_json("b", "")].join(",");
    let json = format!(
        r#"{{"resourceSpans":[
          {{"resource":{{"attributes":[{{"key":"k","value":{{"intValue":"x"}}}}]}},"scopeSpans":[{{"spans":[{spans}]}}]}},
          {{"scopeSpans":[{{"scope":{{"name":5}},"spans":[{spans}]}},{{"spans":[{spans}]}}]}}]}}"#
    );
    let (req, t) = decode(&json);
    let subjects: Vec<(&str, usize)> = t
        .rejected
        .iter()
        .map(|r| (r.subject.as_str(), r.spans))
        .collect();
    assert_eq!(subjects, [("resource", 2), ("scope", 2)]);
    assert_eq!(req.resource_spans.len(), 1);
    assert_eq!(req.resource_spans[0].scope_spans.len(), 1);
    assert_eq!(req.resource_spans[0].scope_spans[0].spans.len(), 2);
}

#[test]
fn nesting_is_bounded_as_for_protobuf_and_never_recursed_past() {
    let nested = |levels: usize| {
        let mut v = r#"{"stringValue":"leaf"}"#.to_string();
        for _ in 0..levels {
            v = format!(r#"{{"arrayValue":{{"values":[{v}]}}}}"#);
        }
        format!(r#","attributes":[{{"key":"deep","value":{v}}}]"#)
    };
    for (levels, passes) in [(47, true), (48, false), (20_000, false)] {
        let json = request_of(&[span_json("deep", &nested(levels)), span_json("good", "")]);
        let (req, t) = decode(&json);
        let kept = req.resource_spans[0].scope_spans[0].spans.len();
        assert_eq!(kept, 1 + usize::from(passes), "{levels}");
        if !passes {
            assert_eq!(t.rejected[0].fault.reason(), "too_deep", "{levels}");
        }
    }
    // Deep JSON in a field nobody reads is skipped whatever its depth.
    let unknown = format!(r#","future":{}{}"#, "[".repeat(50_000), "]".repeat(50_000));
    let (req, t) = decode(&request_of(&[span_json("a", &unknown)]));
    assert!(t.rejected.is_empty());
    assert_eq!(req.resource_spans[0].scope_spans[0].spans.len(), 1);
}

#[test]
fn text_that_is_not_utf8_is_repaired() {
    let lone = request_of(&[span_json(r"lone \ud800 surrogate", "")]);
    let (req, t) = decode(&lone);
    assert_eq!(t.repaired_spans, 1);
    assert_eq!(
        req.resource_spans[0].scope_spans[0].spans[0].name,
        "lone \u{fffd} surrogate"
    );
    let mut raw = request_of(&[span_json("rawXbyte", ""), span_json("fine", "")]).into_bytes();
    let at = raw.windows(4).position(|w| w == b"Xbyt").unwrap();
    raw[at] = 0xff;
    let t = transcode(&raw, MLFLOW_MAX_NESTING).unwrap();
    assert_eq!(t.repaired_spans, 1);
    let req = ExportTraceServiceRequest::decode(&t.body[..]).unwrap();
    assert_eq!(
        req.resource_spans[0].scope_spans[0].spans[0].name,
        "raw\u{fffd}byte"
    );
    let pair = request_of(&[span_json(r"pair \ud83d\ude00 ok", "")]);
    let (req, t) = decode(&pair);
    assert_eq!(t.repaired_spans, 0);
    assert_eq!(
        req.resource_spans[0].scope_spans[0].spans[0].name,
        "pair 😀 ok"
    );
}

#[test]
fn text_that_is_not_an_otlp_request_is_refused_whole() {
    for json in [
        "",
        "[]",
        "{",
        r#"{"resourceSpans":5}"#,
        r#"{"resourceSpans":[5]}"#,
        r#"{"resourceSpans":[{"scopeSpans":{"spans":[]}}]}"#,
        r#"{"resourceSpans":[{"scopeSpans":[{"spans":[7]}]}]}"#,
        r#"{"resourceSpans":[]} trailing"#,
        r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"name":"a" "b":1}]}]}]}"#,
    ] {
        assert!(
            transcode(json.as_bytes(), MLFLOW_MAX_NESTING).is_err(),
            "{json}"
        );
    }
}

#[test]
fn unknown_members_above_the_spans_are_noted() {
    let (_, t) = decode(r#"{"resourceSpanz":[{"scopeSpans":[]}]}"#);
    assert_eq!(
        t.unknown_field.as_deref(),
        Some("'resourceSpanz' in ExportTraceServiceRequest")
    );
    let (_, t) = decode(r#"{"resourceSpans":[{"scope_spanz":[]}]}"#);
    assert_eq!(
        t.unknown_field.as_deref(),
        Some("'scope_spanz' in ResourceSpans")
    );
    let (_, t) = decode("{}");
    assert_eq!(t.unknown_field, None);
    let (req, t) = decode(r#"{"resourceSpans":null}"#);
    assert!(req.resource_spans.is_empty() && t.unknown_field.is_none());
}
