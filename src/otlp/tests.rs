//! The codec's views against prost: what goes through unchanged, what is changed, what is set
//! aside and why.

use super::schema::MLFLOW_MAX_NESTING;
use super::wire::put_framed;
use super::*;
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::Event;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;

pub(super) fn kv_str(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

pub(super) fn find_str(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs.iter().rev().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            _ => None,
        }
    })
}

pub(super) fn span(n: u8, parent: &[u8]) -> Span {
    Span {
        trace_id: vec![n; 16],
        span_id: vec![n; 8],
        parent_span_id: parent.to_vec(),
        name: format!("span-{n}"),
        start_time_unix_nano: 100 + n as u64,
        end_time_unix_nano: 200 + n as u64,
        attributes: vec![kv_str("a", "1"), kv_str("session.id", "s")],
        events: vec![Event {
            time_unix_nano: 5,
            name: "e".into(),
            ..Default::default()
        }],
        status: Some(Status {
            message: "m".into(),
            code: 2,
        }),
        ..Default::default()
    }
}

fn request() -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![
            ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv_str("service.name", "svc")],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "lib".into(),
                        ..Default::default()
                    }),
                    spans: vec![span(1, &[]), span(2, &[1; 8])],
                    schema_url: "https://scope".into(),
                }],
                schema_url: "https://resource".into(),
            },
            ResourceSpans {
                resource: None,
                scope_spans: vec![
                    ScopeSpans {
                        scope: None,
                        spans: vec![span(3, &[])],
                        schema_url: String::new(),
                    },
                    ScopeSpans::default(),
                ],
                schema_url: String::new(),
            },
        ],
    }
}

fn parse(body: Vec<u8>) -> ParsedRequest {
    parse_request(&Bytes::from(body), MLFLOW_MAX_NESTING).expect("framed")
}

fn one_span_request(spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[test]
fn unchanged_spans_round_trip_byte_for_byte() {
    let req = request();
    let parsed = parse(req.encode_to_vec());
    let views = &parsed.resource_spans;
    assert_eq!(views.len(), 2);
    assert_eq!(views[0].span_count(), 2);
    assert_eq!(
        find_str(views[0].resource_attributes(), "service.name").as_deref(),
        Some("svc")
    );
    let s = &views[0].scope_spans[0].spans[1];
    assert_eq!(s.trace_id(), &[2; 16]);
    assert_eq!(s.span_id(), &[2; 8]);
    assert_eq!(s.parent_span_id(), &[1; 8]);
    assert_eq!(s.name(), "span-2");
    assert_eq!((s.start_time_unix_nano, s.end_time_unix_nano), (102, 202));
    assert!(parsed.rejected.is_empty());
    assert_eq!(parsed.repaired_spans, 0);
    assert_eq!(parsed.unknown_field, None);
    // The empty scope is dropped; everything else is what was sent.
    let mut want = req.clone();
    want.resource_spans[1].scope_spans.pop();
    let out = encode_request(views);
    assert_eq!(ExportTraceServiceRequest::decode(&out[..]).unwrap(), want);
    assert_eq!(out, want.encode_to_vec());
}

#[test]
fn changed_spans_are_re_encoded_and_emptied_resources_left_out() {
    let mut parsed = parse(request().encode_to_vec());
    let views = &mut parsed.resource_spans;
    let root = &mut views[0].scope_spans[0].spans[0];
    let mut decoded = root.decode().unwrap();
    decoded.attributes.push(kv_str("user.id", "u"));
    root.replace(&decoded);
    views[1].scope_spans[0].spans.clear();
    let out = ExportTraceServiceRequest::decode(&encode_request(views)[..]).unwrap();
    assert_eq!(
        out.resource_spans.len(),
        1,
        "a resource without spans is not sent"
    );
    let spans = &out.resource_spans[0].scope_spans[0].spans;
    assert_eq!(
        find_str(&spans[0].attributes, "user.id").as_deref(),
        Some("u")
    );
    assert_eq!(spans[1], span(2, &[1; 8]));
}

#[test]
fn a_selection_keeps_its_resources_and_scopes() {
    let parsed = parse(request().encode_to_vec());
    let views = &parsed.resource_spans;
    let picked = encode_where(views, |at| at.span == 1 || at.resource == 1);
    let out = ExportTraceServiceRequest::decode(&picked[..]).unwrap();
    assert_eq!(out.resource_spans.len(), 2);
    assert_eq!(
        out.resource_spans[0].scope_spans[0].spans,
        vec![span(2, &[1; 8])]
    );
    assert_eq!(
        out.resource_spans[0].scope_spans[0].schema_url,
        "https://scope"
    );
    assert_eq!(out.resource_spans[0].schema_url, "https://resource");
    assert_eq!(
        out.resource_spans[1].scope_spans[0].spans,
        vec![span(3, &[])]
    );
    assert!(encode_where(views, |_| false).is_empty());
}

#[test]
fn only_wanted_attributes_are_decoded() {
    let parsed = parse(request().encode_to_vec());
    let scope = &parsed.resource_spans[0].scope_spans[0];
    let attrs = scope.spans[0].attributes_where(&scope.attributes, |k| k == b"session.id");
    assert_eq!(attrs, vec![kv_str("session.id", "s")]);
}

/// The attributes noted while a span is checked are the ones prost decodes, in order, also
/// where a KeyValue repeats its key field (the last wins).
#[test]
fn attributes_noted_in_the_walk_are_the_decoded_ones() {
    let mut s = span(1, &[]);
    s.attributes.push(kv_str("x", "y"));
    // A KeyValue `{ key: "first", key: "second", value: "v" }`, spliced in by hand.
    let mut repeated = Vec::new();
    prost::encoding::string::encode(1, &"first".to_string(), &mut repeated);
    prost::encoding::string::encode(1, &"second".to_string(), &mut repeated);
    let value = AnyValue {
        value: Some(Value::StringValue("v".into())),
    };
    prost::encoding::message::encode(2, &value, &mut repeated);
    let mut body = s.encode_to_vec();
    put_framed(&mut body, 9, repeated.len());
    body.extend_from_slice(&repeated);
    let expected = Span::decode(&body[..]).unwrap().attributes;
    assert_eq!(expected.last().map(|kv| kv.key.as_str()), Some("second"));

    // After another span's attributes, as in a scope.
    let mut attributes = Vec::new();
    SpanView::parse(
        Bytes::from(span(9, &[]).encode_to_vec()),
        &mut attributes,
        MLFLOW_MAX_NESTING,
    )
    .unwrap();
    let view = SpanView::parse(Bytes::from(body), &mut attributes, MLFLOW_MAX_NESTING).unwrap();
    assert_eq!(view.attributes_where(&attributes, |_| true), expected);
    let picked = view.attributes_where(&attributes, |k| k == b"second" || k == b"a");
    assert_eq!(picked.len(), 2);
    assert_eq!(picked[0], kv_str("a", "1"));
    assert_eq!(picked[1].key, "second");
}

/// Spliced into an encoded request: each case is one span that prost would refuse, beside a
/// good one. The bad span is set aside with its fault; the good one goes on.
#[test]
fn a_span_prost_would_refuse_is_set_aside_alone() {
    // Bytes appended to an encoded span.
    let cases: [(&str, &[u8]); 3] = [
        ("an attribute that is not a message", &[9 << 3, 0x01]),
        ("a status with the wrong wire type", &[15 << 3, 0x07]),
        (
            "an attribute value truncated inside",
            &[0x4a, 0x05, 0x0a, 0x01, b'k', 0x12, 0x09],
        ),
    ];
    for (what, damage) in cases {
        let mut bad = span(7, &[]).encode_to_vec();
        bad.extend_from_slice(damage);
        assert!(Span::decode(&bad[..]).is_err(), "{what}: prost refuses it");
        let good = span(8, &[]).encode_to_vec();
        let mut scope = Vec::new();
        for s in [&bad, &good] {
            put_framed(&mut scope, 2, s.len());
            scope.extend_from_slice(s);
        }
        let mut rs = Vec::new();
        put_framed(&mut rs, 2, scope.len());
        rs.extend_from_slice(&scope);
        let mut body = Vec::new();
        put_framed(&mut body, 1, rs.len());
        body.extend_from_slice(&rs);

        let parsed = parse(body);
        assert_eq!(parsed.rejected.len(), 1, "{what}");
        let r = &parsed.rejected[0];
        assert_eq!(r.fault.reason(), "malformed", "{what}");
        assert_eq!(r.subject, "span 'span-7'", "{what}");
        assert_eq!(parsed.resource_spans[0].span_count(), 1, "{what}");
        assert_eq!(parsed.received_spans(), 2, "{what}");
        let out = ExportTraceServiceRequest::decode(&encode_request(&parsed.resource_spans)[..])
            .expect("what goes on decodes");
        assert_eq!(
            out.resource_spans[0].scope_spans[0].spans,
            vec![span(8, &[])]
        );
    }
}

#[test]
fn broken_framing_above_the_spans_refuses_the_request() {
    let good = request().encode_to_vec();
    let cut = Bytes::from(good[..good.len() - 3].to_vec());
    assert!(parse_request(&cut, MLFLOW_MAX_NESTING).is_err());
    let wrong_type = Bytes::from_static(&[0x0a, 0x04, 0x12, 0x02, 0x10, 0x01]);
    assert!(ExportTraceServiceRequest::decode(&wrong_type[..]).is_err());
    assert!(parse_request(&wrong_type, MLFLOW_MAX_NESTING).is_err());
}

/// A kvlist nested `levels` deep, as an attribute value.
fn nested_kvlist(levels: usize) -> AnyValue {
    let mut value = AnyValue {
        value: Some(Value::StringValue("leaf".into())),
    };
    for _ in 0..levels {
        value = AnyValue {
            value: Some(Value::KvlistValue(KeyValueList {
                values: vec![KeyValue {
                    key: "k".into(),
                    value: Some(value),
                    ..Default::default()
                }],
            })),
        };
    }
    value
}

fn nested_array(levels: usize) -> AnyValue {
    let mut value = AnyValue {
        value: Some(Value::StringValue("leaf".into())),
    };
    for _ in 0..levels {
        value = AnyValue {
            value: Some(Value::ArrayValue(ArrayValue {
                values: vec![value],
            })),
        };
    }
    value
}

fn with_attribute(n: u8, value: AnyValue) -> Span {
    let mut s = span(n, &[]);
    s.attributes.push(KeyValue {
        key: "deep".into(),
        value: Some(value),
        ..Default::default()
    });
    s
}

/// MLflow's decoder takes kvlists 31 levels deep and arrays 47 in a span attribute, and one
/// level less in an event attribute (benches/probes/mlflow_refusals.py); so does the codec.
#[test]
fn nesting_is_bounded_where_mlflow_bounds_it() {
    let cases = [
        (with_attribute(1, nested_kvlist(31)), true),
        (with_attribute(1, nested_kvlist(32)), false),
        (with_attribute(1, nested_array(47)), true),
        (with_attribute(1, nested_array(48)), false),
        (with_attribute(1, nested_array(150)), false),
    ];
    for (i, (deep, passes)) in cases.into_iter().enumerate() {
        let parsed = parse(one_span_request(vec![deep, span(2, &[])]).encode_to_vec());
        assert_eq!(
            parsed.resource_spans[0].span_count(),
            1 + usize::from(passes),
            "case {i}"
        );
        if !passes {
            assert_eq!(parsed.rejected[0].fault.reason(), "too_deep", "case {i}");
        }
    }
    let mut in_event = span(1, &[]);
    in_event.events[0].attributes.push(KeyValue {
        key: "deep".into(),
        value: Some(nested_array(47)),
        ..Default::default()
    });
    assert!(
        parse(one_span_request(vec![in_event.clone()]).encode_to_vec())
            .rejected
            .is_empty()
    );
    in_event.events[0].attributes[0].value = Some(nested_array(48));
    assert_eq!(
        parse(one_span_request(vec![in_event]).encode_to_vec()).rejected[0].fault,
        Fault::TooDeep {
            limit: MLFLOW_MAX_NESTING
        }
    );
}

#[test]
fn a_resource_nested_too_deep_sets_its_spans_aside() {
    let mut req = request();
    req.resource_spans[0]
        .resource
        .as_mut()
        .unwrap()
        .attributes
        .push(KeyValue {
            key: "deep".into(),
            value: Some(nested_array(60)),
            ..Default::default()
        });
    let parsed = parse(req.encode_to_vec());
    assert_eq!(parsed.rejected.len(), 1);
    assert_eq!(parsed.rejected[0].subject, "resource");
    assert_eq!(parsed.rejected[0].spans, 2);
    assert_eq!(parsed.resource_spans[0].span_count(), 0);
    assert_eq!(
        parsed.resource_spans[1].span_count(),
        1,
        "the other resource goes on"
    );
    assert_eq!(parsed.received_spans(), 3);
}

/// Replaces the first occurrence of `mark` in `bytes` with an invalid UTF-8 byte.
fn break_utf8(bytes: &mut [u8], mark: &[u8]) {
    let at = bytes
        .windows(mark.len())
        .position(|w| w == mark)
        .expect("mark present");
    bytes[at] = 0xff;
}

#[test]
fn text_that_is_not_utf8_is_repaired_wherever_it_is() {
    for mark in [
        &b"MARKv"[..], // attribute value
        b"MARKk",      // attribute key
        b"MARKn",      // span name
        b"MARKe",      // event name
        b"MARKs",      // status message
        b"MARKr",      // resource attribute
        b"MARKc",      // scope name
        b"MARKu",      // resource schema url
    ] {
        let mut s = span(1, &[]);
        s.attributes.push(kv_str("x", "MARKv"));
        s.attributes.push(kv_str("MARKk", "y"));
        s.name = "MARKn".into();
        s.events[0].name = "MARKe".into();
        s.status.as_mut().unwrap().message = "MARKs".into();
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv_str("r", "MARKr")],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "MARKc".into(),
                        ..Default::default()
                    }),
                    spans: vec![s, span(2, &[])],
                    ..Default::default()
                }],
                schema_url: "MARKu".into(),
            }],
        };
        let mut bytes = req.encode_to_vec();
        break_utf8(&mut bytes, mark);
        assert!(ExportTraceServiceRequest::decode(&bytes[..]).is_err());
        let parsed = parse(bytes);
        let what = String::from_utf8_lossy(mark);
        assert!(parsed.rejected.is_empty(), "{what}");
        let expected_repaired = if mark == b"MARKr" || mark == b"MARKc" || mark == b"MARKu" {
            2
        } else {
            1
        };
        assert_eq!(parsed.repaired_spans, expected_repaired, "{what}");
        let out = ExportTraceServiceRequest::decode(&encode_request(&parsed.resource_spans)[..])
            .expect("repaired text decodes");
        let text = format!("{out:?}");
        assert!(text.contains("\u{fffd}ARK"), "{what}: {text}");
        assert_eq!(
            out.resource_spans[0].scope_spans[0].spans.len(),
            2,
            "{what}"
        );
    }
}

#[test]
fn unknown_fields_travel_unchanged_and_explain_an_empty_request() {
    // Field 99 (varint) inside ResourceSpans and ScopeSpans: not OTLP today, kept anyway.
    let mut rs = request().resource_spans.remove(0).encode_to_vec();
    rs.extend_from_slice(&[0x98, 0x06, 0x07]);
    let mut body = Vec::new();
    put_framed(&mut body, 1, rs.len());
    body.extend_from_slice(&rs);
    let parsed = parse(body.clone());
    assert_eq!(encode_request(&parsed.resource_spans), body);
    assert_eq!(
        parsed.unknown_field.as_deref(),
        Some("field 99 of ResourceSpans")
    );
    // Another signal's request on the traces endpoint: its field 2 is not OTLP trace's.
    let parsed = parse(vec![0x12, 0x00]);
    assert_eq!(parsed.received_spans(), 0);
    assert!(parsed.unknown_field.is_some());
}
