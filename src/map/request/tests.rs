use super::*;
use crate::map::attrs::kv_str;
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use std::time::Duration;

fn tracker() -> TraceTracker {
    TraceTracker::new(100, Duration::from_secs(60))
}

fn map(tracker: &TraceTracker, request: ExportTraceServiceRequest) -> Vec<TraceInfoJob> {
    let mapping = MappingTable::new(&crate::config::MappingConfig::default());
    let body = Bytes::from(request.encode_to_vec());
    let mut views = crate::otlp::parse_request(&body, 100)
        .expect("valid request")
        .resource_spans;
    RequestMapper {
        mapping: &mapping,
        tracker,
    }
    .map(&mut views)
}

fn span(trace: u8, id: u8, root: bool, attributes: Vec<KeyValue>) -> Span {
    Span {
        trace_id: vec![trace; 16],
        span_id: vec![id; 8],
        parent_span_id: if root { vec![] } else { vec![trace; 8] },
        name: format!("span {id}"),
        start_time_unix_nano: 1,
        end_time_unix_nano: 2,
        attributes,
        ..Default::default()
    }
}

fn resource_spans(attributes: Vec<KeyValue>, spans: Vec<Span>) -> ResourceSpans {
    ResourceSpans {
        resource: Some(Resource {
            attributes,
            ..Default::default()
        }),
        scope_spans: vec![ScopeSpans {
            spans,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Children are recorded a run of one trace at a time; what the root then gets must be
/// what recording them span by span (each followed by its resource) gave.
#[test]
fn interleaved_children_give_their_roots_the_span_by_span_facts() {
    let request = ExportTraceServiceRequest {
        resource_spans: vec![
            // Children of traces 1 and 2, interleaved, under a resource that names a user.
            resource_spans(
                vec![kv_str("user.id", "resource-user")],
                vec![
                    span(1, 11, false, vec![]),
                    // Span by span, the resource spoke for trace 1 right after span 11:
                    // its user wins over this child's; the session was still open.
                    span(
                        1,
                        12,
                        false,
                        vec![
                            kv_str("user.id", "child-user"),
                            kv_str("session.id", "session-1"),
                        ],
                    ),
                    span(2, 21, false, vec![kv_str("session.id", "session-2")]),
                    span(1, 13, false, vec![kv_str("session.id", "too-late")]),
                ],
            ),
            // The roots, under a resource that says nothing.
            resource_spans(
                vec![],
                vec![span(1, 1, true, vec![]), span(2, 2, true, vec![])],
            ),
        ],
    };
    let jobs = map(&tracker(), request);
    let facts = |trace: u8| {
        let job = jobs
            .iter()
            .find(|j| j.trace_id == [trace; 16])
            .expect("a job per root");
        (
            job.facts.user().map(str::to_owned),
            job.facts.session().map(str::to_owned),
        )
    };
    assert_eq!(
        facts(1),
        (Some("resource-user".into()), Some("session-1".into()))
    );
    assert_eq!(
        facts(2),
        (Some("resource-user".into()), Some("session-2".into()))
    );
}

/// A root takes what children said in earlier requests (through the trace table) and in
/// its own; the earlier ones come first.
#[test]
fn roots_take_facts_from_children_in_earlier_requests_and_their_own() {
    let tracker = tracker();
    let map =
        |rs: Vec<ResourceSpans>| map(&tracker, ExportTraceServiceRequest { resource_spans: rs });
    let earlier = map(vec![resource_spans(
        vec![],
        vec![span(3, 31, false, vec![kv_str("session.id", "earlier")])],
    )]);
    assert!(earlier.is_empty());
    assert_eq!(tracker.awaiting(), 1);
    let jobs = map(vec![resource_spans(
        vec![kv_str("user.id", "resource-user")],
        vec![
            span(
                3,
                32,
                false,
                vec![
                    kv_str("session.id", "nearby"),
                    kv_str("mlflow.traceTag.team", "search"),
                ],
            ),
            span(4, 42, false, vec![kv_str("session.id", "session-4")]),
            span(3, 3, true, vec![]),
            span(4, 4, true, vec![]),
        ],
    )]);
    assert_eq!(tracker.awaiting(), 0, "both roots completed");
    let facts = |trace: u8| {
        &jobs
            .iter()
            .find(|j| j.trace_id == [trace; 16])
            .expect("job")
            .facts
    };
    assert_eq!(facts(3).session(), Some("earlier"));
    assert_eq!(facts(3).user(), Some("resource-user"));
    assert_eq!(
        facts(3).tags.get("team").map(String::as_str),
        Some("search")
    );
    assert_eq!(facts(4).session(), Some("session-4"));
    assert_eq!(facts(4).user(), Some("resource-user"));
}
