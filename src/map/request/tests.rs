use super::*;
use crate::map::attrs::kv_str;
use crate::vocab::ExperimentRef;
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use std::time::Duration;

fn tracker() -> TraceTracker {
    TraceTracker::new(100, Duration::from_secs(60))
}

fn map(tracker: &TraceTracker, request: ExportTraceServiceRequest) -> Vec<TraceInfoJob> {
    map_and_forward(tracker, request).0
}

/// The jobs, and the request as it goes on to MLflow.
fn map_and_forward(
    tracker: &TraceTracker,
    request: ExportTraceServiceRequest,
) -> (Vec<TraceInfoJob>, ExportTraceServiceRequest) {
    let mapping = MappingTable::new(&crate::config::MappingConfig::default());
    let body = Bytes::from(request.encode_to_vec());
    let mut views = crate::otlp::parse_request(&body, 100)
        .expect("valid request")
        .resource_spans;
    let experiment = std::sync::Arc::new(ExperimentRef::Id("1".into()));
    let jobs = RequestMapper {
        mapping: &mapping,
        tracker,
        experiment: &experiment,
        tenant: None,
    }
    .map(&mut views);
    let forwarded = crate::otlp::encode_request(&views);
    let forwarded = ExportTraceServiceRequest::decode(&forwarded[..]).expect("forwarded request");
    (jobs, forwarded)
}

fn forwarded_spans(request: &ExportTraceServiceRequest) -> Vec<&Span> {
    request
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
        .collect()
}

fn attribute<'a>(span: &'a Span, key: &str) -> Vec<&'a str> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    span.attributes
        .iter()
        .filter(|kv| kv.key == key)
        .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        })
        .collect()
}

/// Every span leaves with one span type and a status MLflow's SDK would give it; what it
/// had stays.
#[test]
fn every_span_gets_a_span_type_and_a_final_status() {
    use opentelemetry_proto::tonic::trace::v1::Status;
    use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
    let mut failed = span(5, 52, false, vec![kv_str("gen_ai.operation.name", "chat")]);
    failed.status = Some(Status {
        code: StatusCode::Error as i32,
        message: "boom".into(),
    });
    let mut unset_with_message = span(5, 53, false, vec![kv_str("mlflow.spanType", "\"TOOL\"")]);
    unset_with_message.status = Some(Status {
        code: StatusCode::Unset as i32,
        message: "kept".into(),
    });
    let long_session = kv_str("session.id", &"s".repeat(300));
    let request = ExportTraceServiceRequest {
        resource_spans: vec![resource_spans(
            vec![],
            vec![
                span(5, 5, true, vec![kv_str("openinference.span.kind", "AGENT")]),
                span(5, 51, false, vec![]),
                failed,
                unset_with_message,
                span(
                    5,
                    54,
                    false,
                    vec![
                        long_session,
                        kv_str("mlflow.spanType", "UNKNOWN"),
                        kv_str("traceloop.span.kind", "task"),
                    ],
                ),
            ],
        )],
    };
    let (_, forwarded) = map_and_forward(&tracker(), request);
    let spans = forwarded_spans(&forwarded);
    let by_id = |id: u8| {
        *spans
            .iter()
            .find(|s| s.span_id == vec![id; 8])
            .expect("span")
    };
    let expected = [
        (5, "AGENT"),
        (51, "UNKNOWN"),
        (52, "CHAT_MODEL"),
        (53, "TOOL"),
        (54, "TASK"),
    ];
    for (id, kind) in expected {
        assert_eq!(
            attribute(by_id(id), "mlflow.spanType"),
            vec![kind],
            "span {id}"
        );
    }
    let status = |id: u8| by_id(id).status.clone().unwrap_or_default();
    assert_eq!(status(5).code, StatusCode::Ok as i32);
    assert_eq!(status(51).code, StatusCode::Ok as i32);
    assert_eq!(
        (status(52).code, status(52).message.as_str()),
        (StatusCode::Error as i32, "boom")
    );
    assert_eq!(
        (status(53).code, status(53).message.as_str()),
        (StatusCode::Ok as i32, "kept")
    );
    assert_eq!(
        attribute(by_id(54), "session.id")[0].len(),
        250,
        "still fitted"
    );
}

/// MLflow's SDK JSON-encodes every value: the mapping reads them as MLflow's ingestion does,
/// and a root from the SDK is marked so its TraceInfo is not overwritten.
#[test]
fn json_encoded_values_from_mlflow_sdk_are_read_without_quotes() {
    let root = span(
        6,
        6,
        true,
        vec![
            kv_str(
                "mlflow.traceRequestId",
                "\"tr-06060606060606060606060606060606\"",
            ),
            kv_str("session.id", "\"conv-1\""),
            kv_str("user.id", "\"alice\""),
            kv_str("mlflow.spanInputs", r#"{"question": "hi"}"#),
            kv_str("mlflow.spanOutputs", r#""hello""#),
        ],
    );
    let plain = span(7, 7, true, vec![kv_str("session.id", "conv-2")]);
    let (jobs, forwarded) = map_and_forward(
        &tracker(),
        ExportTraceServiceRequest {
            resource_spans: vec![resource_spans(vec![], vec![root, plain])],
        },
    );
    let sdk = jobs.iter().find(|j| j.trace_id == [6; 16]).expect("job");
    assert!(sdk.from_mlflow_sdk);
    assert_eq!(sdk.facts.session(), Some("conv-1"));
    assert_eq!(sdk.facts.user(), Some("alice"));
    let metadata = |key: &str| sdk.facts.metadata.get(key).map(String::as_str);
    assert_eq!(
        metadata("mlflow.traceInputs"),
        Some(r#"{"question": "hi"}"#)
    );
    assert_eq!(metadata("mlflow.traceOutputs"), Some(r#""hello""#));
    let spans = forwarded_spans(&forwarded);
    assert_eq!(attribute(spans[0], "session.id"), vec!["conv-1"]);
    let other = jobs.iter().find(|j| j.trace_id == [7; 16]).expect("job");
    assert!(!other.from_mlflow_sdk);
    assert_eq!(
        other
            .facts
            .metadata
            .get("mlflow.traceInputs")
            .map(String::as_str),
        Some("")
    );
}

/// A finished span of trace `trace` (a root, or a child of the root `[trace; 8]`); shared with
/// other modules' tests.
pub(crate) fn span(trace: u8, id: u8, root: bool, attributes: Vec<KeyValue>) -> Span {
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

pub(crate) fn resource_spans(attributes: Vec<KeyValue>, spans: Vec<Span>) -> ResourceSpans {
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
