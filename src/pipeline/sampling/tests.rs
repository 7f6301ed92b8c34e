use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

use super::retention::{GoneReason, Retention, Standing};
use super::*;
use crate::config::{SamplingConfig, SpoolCompression};
use crate::map::request::tests::{resource_spans, span};
use crate::map::rules::TraceFacts;
use crate::spool::disk::SegmentLog;
use crate::spool::tests::log_options;

const WINDOW: Duration = Duration::from_secs(60);

fn job(trace: u8, errored: bool, crid: Option<&str>) -> TraceInfoJob {
    TraceInfoJob {
        trace_id: [trace; 16],
        root_span_id: [trace; 8],
        root_name: "root".into(),
        start_unix_nano: 1,
        end_unix_nano: 2,
        state: if errored {
            TraceState::Error
        } else {
            TraceState::Ok
        },
        facts: TraceFacts {
            client_request_id: crid.map(str::to_string),
            ..TraceFacts::default()
        },
        from_mlflow_sdk: false,
    }
}

fn body(spans: Vec<Span>) -> Bytes {
    Bytes::from(
        ExportTraceServiceRequest {
            resource_spans: vec![resource_spans(vec![], spans)],
        }
        .encode_to_vec(),
    )
}

fn record(spans: Vec<Span>, roots: Vec<TraceInfoJob>) -> SpoolRecord {
    SpoolRecord {
        experiment: ExperimentRef::Id("1".into()),
        tenant: None,
        span_count: spans.len(),
        roots,
        received_ms: 0,
        sampled: false,
        body: body(spans),
    }
}

/// The trace ids of a record's spans, in order.
fn span_traces(r: &SpoolRecord) -> Vec<u8> {
    ExportTraceServiceRequest::decode(&r.body[..])
        .expect("body")
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
        .map(|s| s.trace_id[0])
        .collect()
}

#[test]
fn held_traces_are_found_read_back_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let open =
        |now| Retention::open(dir.path(), WINDOW, 1 << 20, SpoolCompression::Zstd, now).unwrap();
    let (r, recovered) = open(1_000);
    assert_eq!(recovered.traces, 0);
    let children = record(vec![span(1, 2, false, vec![])], vec![]);
    let root = record(
        vec![span(1, 1, true, vec![])],
        vec![job(1, false, Some("req-1"))],
    );
    r.hold([1; 16], &children, 1_000).unwrap();
    r.hold([1; 16], &root, 1_001).unwrap();
    r.hold(
        [2; 16],
        &record(vec![span(2, 1, true, vec![])], vec![]),
        1_002,
    )
    .unwrap();
    let held_1 = Standing::Held {
        trace_id: [1; 16],
        tenant: None,
    };
    assert_eq!(r.standing_of_crid("req-1"), held_1);
    assert_eq!(r.standing_of_trace(&[1; 16]), held_1);
    drop(r);

    let (r, recovered) = open(2_000);
    assert_eq!(recovered.traces, 2);
    assert_eq!(r.standing_of_crid("req-1"), held_1, "indexed again");
    let taken = r.take(&[1; 16]).unwrap().expect("held");
    assert_eq!(taken.records, vec![children, root]);
    assert_eq!(r.standing_of_crid("req-1"), Standing::Unknown, "taken");
    r.restore(taken);
    assert_eq!(r.standing_of_crid("req-1"), held_1, "restored");
    let taken = r.take(&[1; 16]).unwrap().expect("held");
    drop(taken);
    r.promoted(&[1; 16], 2_001).unwrap();
    drop(r);

    let (r, recovered) = open(3_000);
    assert_eq!(recovered.traces, 1, "a promoted trace is not held again");
    assert_eq!(r.standing_of_trace(&[1; 16]), Standing::Unknown);
}

#[test]
fn the_window_and_the_disk_budget_discard_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let (r, _) = Retention::open(dir.path(), WINDOW, 1 << 20, SpoolCompression::None, 0).unwrap();
    let one = |t: u8, crid: &str| {
        record(
            vec![span(t, 1, true, vec![])],
            vec![job(t, false, Some(crid))],
        )
    };
    r.hold([1; 16], &one(1, "a"), 0).unwrap();
    // A new segment each eighth of the window.
    r.hold([2; 16], &one(2, "b"), 10_000).unwrap();
    r.hold([3; 16], &one(3, "c"), 20_000).unwrap();
    let discarded = r.expire(60_000, None);
    assert_eq!((discarded.expired, discarded.disk), (1, 0));
    assert_eq!(r.standing_of_crid("a"), Standing::Gone(GoneReason::Expired));
    assert_eq!(
        r.standing_of_trace(&[1; 16]),
        Standing::Gone(GoneReason::Expired)
    );
    let (bytes, traces) = r.size();
    assert_eq!(traces, 2);
    // The spool needs all but one segment's room.
    let discarded = r.expire(60_000, Some(bytes - 1));
    assert_eq!((discarded.expired, discarded.disk), (0, 1));
    assert_eq!(r.standing_of_crid("b"), Standing::Gone(GoneReason::Disk));
    assert!(matches!(r.standing_of_crid("c"), Standing::Held { .. }));
    let files = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(files, 1, "discarded segments are deleted");
}

struct Fixture {
    _dir: tempfile::TempDir,
    spool: Spool,
    sampler: Sampler,
}

fn fixture(sampling: SamplingConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) =
        SegmentLog::open(&dir.path().join("spool"), log_options(FsyncPolicy::Never)).unwrap();
    let spool = Spool::disk(log, 1 << 20);
    let mut cfg = Config::default();
    cfg.spool.fsync = FsyncPolicy::Never;
    cfg.sampling = SamplingConfig {
        enabled: true,
        decision_wait: Duration::ZERO,
        ..sampling
    };
    let (sampler, _) = Sampler::open(&cfg, dir.path(), spool.clone()).unwrap();
    Fixture {
        _dir: dir,
        spool,
        sampler,
    }
}

impl Fixture {
    async fn append(&self, r: SpoolRecord) {
        self.spool
            .append_prepared(self.spool.prepare(r))
            .await
            .unwrap();
    }

    /// The next record, sifted; every part of what goes on is marked delivered.
    async fn next(&self) -> Option<SpoolRecord> {
        let d = tokio::time::timeout(Duration::from_secs(2), self.spool.next())
            .await
            .expect("a record")
            .expect("open");
        let d = self.sampler.sift(d).await?;
        for _ in 0..=d.record.roots.len() {
            d.ack.done();
        }
        Some(d.record)
    }
}

fn drop_all() -> SamplingConfig {
    SamplingConfig {
        probability: 0.0,
        ..SamplingConfig::default()
    }
}

#[tokio::test]
async fn kept_traces_go_on_and_the_others_are_held() {
    let f = fixture(drop_all());
    let mut failed = span(2, 2, false, vec![]);
    failed.status = Some(opentelemetry_proto::tonic::trace::v1::Status {
        code: 2,
        ..Default::default()
    });
    let spans = vec![
        span(1, 1, true, vec![]),
        span(1, 2, false, vec![]),
        span(2, 1, true, vec![]),
        failed,
    ];
    // Ingest notes the failed child, whose root says OK.
    let parsed = otlp::parse_request(&body(spans.clone()), 64).unwrap();
    f.sampler.note(&parsed.resource_spans);
    f.append(record(
        spans,
        vec![job(1, false, Some("one")), job(2, false, None)],
    ))
    .await;
    let kept = f.next().await.expect("trace 2 goes on");
    assert_eq!(span_traces(&kept), vec![2, 2]);
    assert_eq!((kept.span_count, kept.roots.len()), (2, 1));
    assert_eq!(kept.roots[0].trace_id, [2; 16]);
    assert!(f.sampler.retention.holds(&[1; 16]));
    assert!(!f.sampler.retention.holds(&[2; 16]));
    // Everything handed on or held: the record leaves the spool.
    f.spool.reclaim().await;
    assert_eq!(f.spool.stats().records, 0);
}

#[tokio::test]
async fn children_held_before_their_root_are_reunited_with_it() {
    let f = fixture(drop_all());
    f.append(record(
        vec![span(3, 2, false, vec![]), span(3, 3, false, vec![])],
        vec![],
    ))
    .await;
    assert!(f.next().await.is_none(), "undecided: all held");
    assert!(f.sampler.retention.holds(&[3; 16]));
    f.append(record(
        vec![span(3, 1, true, vec![])],
        vec![job(3, true, None)],
    ))
    .await;
    assert!(f.next().await.is_none(), "the root goes with its children");
    let promoted = f.next().await.expect("promoted record");
    assert!(promoted.sampled);
    assert_eq!(span_traces(&promoted), vec![3, 3, 3]);
    assert_eq!((promoted.span_count, promoted.roots.len()), (3, 1));
    assert!(!f.sampler.retention.holds(&[3; 16]));
    // A straggler of a kept trace goes straight on.
    f.append(record(vec![span(3, 4, false, vec![])], vec![]))
        .await;
    assert_eq!(span_traces(&f.next().await.expect("kept")), vec![3]);
}

#[tokio::test]
async fn feedback_promotes_a_dropped_trace_with_its_stragglers() {
    let f = fixture(drop_all());
    f.append(record(
        vec![span(4, 1, true, vec![])],
        vec![job(4, false, Some("req-4"))],
    ))
    .await;
    assert!(f.next().await.is_none(), "dropped: held");
    f.append(record(vec![span(4, 2, false, vec![])], vec![]))
        .await;
    assert!(
        f.next().await.is_none(),
        "a straggler of a dropped trace is held too"
    );
    assert_eq!(
        f.sampler
            .claim(ClaimTarget::ClientRequestId("req-4"), Some("other"))
            .await,
        Claim::Unknown,
        "another tenant's trace is not found"
    );
    assert_eq!(
        f.sampler
            .claim(ClaimTarget::ClientRequestId("req-4"), None)
            .await,
        Claim::Promoted
    );
    let promoted = f.next().await.expect("promoted");
    assert_eq!(span_traces(&promoted), vec![4, 4]);
    assert_eq!(
        promoted.roots[0].facts.client_request_id.as_deref(),
        Some("req-4")
    );
    assert_eq!(
        f.sampler
            .claim(ClaimTarget::ClientRequestId("req-4"), None)
            .await,
        Claim::Unknown,
        "promoted once"
    );
}

#[tokio::test]
async fn feedback_after_the_window_is_told_the_trace_is_gone() {
    let f = fixture(drop_all());
    f.append(record(
        vec![span(5, 1, true, vec![])],
        vec![job(5, false, Some("req-5"))],
    ))
    .await;
    assert!(f.next().await.is_none());
    f.sampler.retention.expire(u64::MAX, None);
    let id = mlflow_trace_id(&[5; 16]);
    for target in [
        ClaimTarget::ClientRequestId("req-5"),
        ClaimTarget::TraceId(&id),
    ] {
        let Claim::Gone(reason) = f.sampler.claim(target, None).await else {
            panic!("{target:?} not gone");
        };
        assert!(reason.contains("feedback window"), "{reason}");
    }
}

#[tokio::test]
async fn attribute_matches_on_any_span_keep_the_trace() {
    let f = fixture(SamplingConfig {
        keep_when: vec![crate::config::AttributeMatch {
            key: "gen_ai.request.model".into(),
            values: vec!["gpt-4*".into()],
        }],
        ..drop_all()
    });
    let model = |m: &str| {
        vec![opentelemetry_proto::tonic::common::v1::KeyValue {
            key: "gen_ai.request.model".into(),
            value: Some(opentelemetry_proto::tonic::common::v1::AnyValue {
                value: Some(
                    opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(m.into()),
                ),
            }),
            ..Default::default()
        }]
    };
    let spans = vec![
        span(6, 1, true, vec![]),
        span(6, 2, false, model("gpt-4o")),
        span(7, 1, true, vec![]),
        span(7, 2, false, model("other")),
    ];
    let parsed = otlp::parse_request(&body(spans.clone()), 64).unwrap();
    f.sampler.note(&parsed.resource_spans);
    f.append(record(
        spans,
        vec![job(6, false, None), job(7, false, None)],
    ))
    .await;
    assert_eq!(span_traces(&f.next().await.expect("kept")), vec![6, 6]);
}

#[test]
fn trace_ids_are_read_with_or_without_their_prefix() {
    let id = [0xab; 16];
    assert_eq!(parse_trace_id(&mlflow_trace_id(&id)), Some(id));
    assert_eq!(parse_trace_id(&"ab".repeat(16)), Some(id));
    assert_eq!(parse_trace_id("tr-xyz"), None);
}
