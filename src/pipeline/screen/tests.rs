use super::*;
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;

fn span(trace: u8, id: u8, name: &str) -> Span {
    Span {
        trace_id: vec![trace; 16],
        span_id: vec![id; 8],
        name: name.into(),
        start_time_unix_nano: 1,
        end_time_unix_nano: 2,
        ..Default::default()
    }
}

fn screened(resource_spans: Vec<ResourceSpans>) -> Screened {
    let body = Bytes::from(ExportTraceServiceRequest { resource_spans }.encode_to_vec());
    screen(
        crate::otlp::parse_request(&body, 100).expect("framed"),
        Transport::HttpProtobuf,
        None,
    )
}

fn rs(resource: Option<Resource>, spans: Vec<Span>) -> ResourceSpans {
    ResourceSpans {
        resource,
        scope_spans: vec![ScopeSpans {
            spans,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn names(s: &Screened) -> Vec<String> {
    s.resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
        .map(|s| s.name().to_string())
        .collect()
}

#[test]
fn a_span_sent_twice_is_kept_once_in_its_last_form() {
    let s = screened(vec![
        rs(None, vec![span(1, 1, "first"), span(1, 2, "other")]),
        rs(
            None,
            vec![
                span(1, 1, "second"),
                span(2, 1, "same span id, other trace"),
            ],
        ),
    ]);
    assert_eq!(names(&s), ["other", "second", "same span id, other trace"]);
    assert_eq!((s.received, s.rejected), (4, 0));
}

#[test]
fn every_kind_of_rejection_is_counted_and_the_first_explained() {
    let mut late = span(3, 3, "late");
    late.end_time_unix_nano = u64::MAX;
    let mut unfinished = span(4, 4, "unfinished");
    unfinished.end_time_unix_nano = 0;
    let bytes_resource = Resource {
        attributes: vec![KeyValue {
            key: "blob".into(),
            value: Some(AnyValue {
                value: Some(Value::BytesValue(vec![1])),
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let s = screened(vec![
        rs(None, vec![span(1, 1, "fine"), unfinished, late]),
        rs(Some(bytes_resource), vec![span(5, 5, "a"), span(6, 6, "b")]),
    ]);
    assert_eq!(names(&s), ["fine"]);
    assert_eq!((s.received, s.rejected), (5, 4));
    assert_eq!(
        s.problem.as_deref(),
        Some("span 'unfinished': span is unfinished (end_time_unix_nano is 0)")
    );
}
