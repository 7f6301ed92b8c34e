use super::*;
use crate::map::request::tests::{resource_spans, span};
use crate::mlflow::{Identities, MlflowClient};
use crate::otlp;
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

fn ingest_with(cfg: &Config) -> Ingest {
    let client = MlflowClient::new(&cfg.mlflow).expect("client");
    Ingest::new(
        cfg,
        Arc::new(TraceTracker::new(100, Duration::from_secs(60))),
        Parts {
            experiments: Experiments::new(Identities::gateway_only(client), false),
            tenants: Arc::new(Tenants::from_config(cfg).expect("tenants")),
            spool: Spool::memory(1 << 20),
            request_ids: Arc::new(RequestIdIndex::new(100)),
            sampler: None,
        },
    )
}

/// With one turn, a request waits while another holds it (nothing reaches the queue), and
/// goes in once the turn is given back.
#[tokio::test]
async fn requests_beyond_the_ingest_concurrency_wait_for_a_turn() {
    // A port nothing listens on: resolving the experiment fails at once and the spans are
    // queued to be resolved at delivery, as while MLflow is down.
    let port = fixtures::net::free_port();
    let mut cfg = Config::default();
    cfg.mlflow.tracking_uri = format!("http://127.0.0.1:{port}");
    cfg.receiver.ingest_concurrency = Some(1);
    let ingest = Arc::new(ingest_with(&cfg));
    let request = ExportTraceServiceRequest {
        resource_spans: vec![resource_spans(vec![], vec![span(1, 1, true, vec![])])],
    };
    let views = otlp::parse_request(&Bytes::from(request.encode_to_vec()), 100).expect("valid");
    let ctx = RequestContext {
        transport: Transport::Grpc,
        experiment_header: None,
        tenant: None,
    };

    let held = ingest.ingest_turn().await;
    let waiting = tokio::spawn({
        let ingest = ingest.clone();
        async move { ingest.accept(views, ctx).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiting.is_finished(),
        "accepted while the only turn was held"
    );
    assert_eq!(
        ingest.spool.stats().memory_bytes,
        0,
        "queued without a turn"
    );

    drop(held);
    let accepted = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("accepted once the turn was back")
        .expect("task")
        .expect("accepted");
    assert_eq!(accepted.accepted_spans, 1);
    assert!(ingest.spool.stats().memory_bytes > 0);
}
