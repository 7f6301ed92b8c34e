//! Delivery to MLflow: span batches to `/v1/traces`, then, for every root delivered, the trace's
//! TraceInfo through StartTraceV3 from a separate bounded queue so slow TraceInfo writes
//! (~60/s on SQLite) never hold spans back.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
use prost::Message;
use tokio::sync::{Mutex, mpsc};

use super::batcher::Batch;
use crate::map::trace_info::{TraceInfoJob, mlflow_trace_id};
use crate::mlflow::MlflowClient;
use crate::mlflow::error::{ErrorClass, MlflowError};
use crate::mlflow::experiments::{Experiments, ResolveError};
use crate::mlflow::retry::RetryPolicy;
use crate::ops::health::Health;

/// A TraceInfo write waiting for StartTraceV3.
pub type TraceInfoItem = (String, TraceInfoJob);

/// Everything the span workers share.
pub struct SpanExporter {
    pub client: MlflowClient,
    pub experiments: Experiments,
    pub policy: RetryPolicy,
    pub trace_infos: mpsc::Sender<TraceInfoItem>,
    pub health: Arc<Health>,
}

/// Runs `workers` span-delivery loops until the batch channel closes.
pub async fn run_span_workers(
    exporter: Arc<SpanExporter>,
    batches: mpsc::Receiver<Batch>,
    workers: usize,
) {
    let batches = Arc::new(Mutex::new(batches));
    let mut tasks = Vec::with_capacity(workers);
    for _ in 0..workers {
        let exporter = exporter.clone();
        let batches = batches.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let next = batches.lock().await.recv().await;
                let Some(batch) = next else { break };
                exporter.deliver(batch).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

fn span_count(req: &ExportTraceServiceRequest) -> usize {
    req.resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .map(|ss| ss.spans.len())
        .sum()
}

/// Splits a request into two halves by span count, keeping resource and scope data on both.
fn split(req: ExportTraceServiceRequest) -> (ExportTraceServiceRequest, ExportTraceServiceRequest) {
    let half = span_count(&req) / 2;
    let mut left = ExportTraceServiceRequest::default();
    let mut right = ExportTraceServiceRequest::default();
    let mut taken = 0;
    for rs in req.resource_spans {
        let mut l_rs = ResourceSpans {
            resource: rs.resource.clone(),
            scope_spans: vec![],
            schema_url: rs.schema_url.clone(),
        };
        let mut r_rs = ResourceSpans {
            resource: rs.resource,
            scope_spans: vec![],
            schema_url: rs.schema_url,
        };
        for mut ss in rs.scope_spans {
            let room = half.saturating_sub(taken);
            let rest = if ss.spans.len() > room {
                ss.spans.split_off(room)
            } else {
                Vec::new()
            };
            taken += ss.spans.len();
            if !ss.spans.is_empty() {
                l_rs.scope_spans.push(ScopeSpans {
                    scope: ss.scope.clone(),
                    spans: std::mem::take(&mut ss.spans),
                    schema_url: ss.schema_url.clone(),
                });
            }
            if !rest.is_empty() {
                r_rs.scope_spans.push(ScopeSpans {
                    scope: ss.scope,
                    spans: rest,
                    schema_url: ss.schema_url,
                });
            }
        }
        if !l_rs.scope_spans.is_empty() {
            left.resource_spans.push(l_rs);
        }
        if !r_rs.scope_spans.is_empty() {
            right.resource_spans.push(r_rs);
        }
    }
    (left, right)
}

impl SpanExporter {
    #[tracing::instrument(skip_all, fields(experiment = %batch.experiment, spans = batch.span_count))]
    async fn deliver(&self, batch: Batch) {
        let spans = batch.span_count;
        metrics::histogram!("gateway_export_batch_spans").record(spans as f64);
        let Some(experiment_id) = self.resolve(&batch).await else {
            return;
        };
        let request = ExportTraceServiceRequest {
            resource_spans: batch.resource_spans,
        };
        let mut delivered_roots: Option<HashSet<[u8; 8]>> = None;
        let mut stack = vec![request];
        while let Some(req) = stack.pop() {
            let n = span_count(&req);
            match self.post(&experiment_id, &req).await {
                Ok(()) => {
                    metrics::counter!("gateway_export_spans_total").increment(n as u64);
                    if let Some(set) = delivered_roots.as_mut() {
                        for span in req
                            .resource_spans
                            .iter()
                            .flat_map(|rs| &rs.scope_spans)
                            .flat_map(|ss| &ss.spans)
                        {
                            if let Ok(id) = <[u8; 8]>::try_from(&span.span_id[..]) {
                                set.insert(id);
                            }
                        }
                    }
                }
                // MLflow rejects a request as a whole; halve it to find the offending span.
                Err(e) if matches!(e.status(), Some(400) | Some(422)) && n > 1 => {
                    delivered_roots.get_or_insert_with(HashSet::new);
                    let (a, b) = split(req);
                    stack.push(b);
                    stack.push(a);
                }
                Err(e) => {
                    let reason = if e.is_retryable() {
                        "gave_up"
                    } else {
                        e.reason()
                    };
                    metrics::counter!("gateway_export_failures_total", "kind" => "spans", "reason" => reason)
                        .increment(1);
                    metrics::counter!("gateway_export_spans_failed_total", "reason" => reason)
                        .increment(n as u64);
                    let first = req
                        .resource_spans
                        .iter()
                        .flat_map(|rs| &rs.scope_spans)
                        .flat_map(|ss| &ss.spans)
                        .next();
                    tracing::error!(
                        experiment_id = %experiment_id,
                        spans = n,
                        trace_id = first.map(|s| mlflow_trace_id(&s.trace_id)).unwrap_or_default(),
                        span = first.map(|s| s.name.as_str()).unwrap_or(""),
                        error = %e,
                        "MLflow rejected spans; they are not delivered"
                    );
                    if e.status() == Some(404) {
                        self.experiments.invalidate(&batch.experiment);
                    }
                    if delivered_roots.is_none() {
                        delivered_roots = Some(HashSet::new());
                    }
                }
            }
        }
        for job in batch.roots {
            let delivered = delivered_roots
                .as_ref()
                .is_none_or(|set| set.contains(&job.root_span_id));
            if delivered {
                self.enqueue_trace_info(experiment_id.clone(), job);
            }
        }
        drop(batch.permits);
        metrics::gauge!("gateway_queue_spans").decrement(spans as f64);
    }

    /// Resolves the batch's experiment, waiting out MLflow outages. `None`: given up (logged).
    async fn resolve(&self, batch: &Batch) -> Option<String> {
        let experiments = &self.experiments;
        let r = self
            .policy
            .run(
                || async {
                    experiments
                        .resolve(&batch.experiment)
                        .await
                        .map_err(|e| match e {
                            ResolveError::Unavailable(m) => m,
                            other => MlflowError::Status {
                                status: 404,
                                message: other.to_string(),
                                retry_after: None,
                            },
                        })
                },
                |e, attempt| self.on_retry("resolve", e, attempt),
            )
            .await;
        match r {
            Ok(id) => Some(id),
            Err(e) => {
                let reason = if e.is_retryable() {
                    "gave_up"
                } else {
                    "experiment"
                };
                metrics::counter!("gateway_export_failures_total", "kind" => "spans", "reason" => reason)
                    .increment(1);
                metrics::counter!("gateway_export_spans_failed_total", "reason" => reason)
                    .increment(batch.span_count as u64);
                tracing::error!(experiment = %batch.experiment, spans = batch.span_count, error = %e,
                    "cannot deliver spans: experiment unusable");
                metrics::gauge!("gateway_queue_spans").decrement(batch.span_count as f64);
                None
            }
        }
    }

    async fn post(
        &self,
        experiment_id: &str,
        req: &ExportTraceServiceRequest,
    ) -> Result<(), MlflowError> {
        let body = Bytes::from(req.encode_to_vec());
        let result = self
            .policy
            .run(
                || self.client.post_spans(experiment_id, body.clone()),
                |e, attempt| self.on_retry("spans", e, attempt),
            )
            .await;
        if result.is_ok() {
            self.health.set_export_problem(None);
        }
        result
    }

    fn on_retry(&self, kind: &'static str, e: &MlflowError, attempt: u32) {
        metrics::counter!("gateway_export_retries_total", "kind" => kind, "reason" => e.reason())
            .increment(1);
        if e.class() == ErrorClass::Auth {
            self.health.set_export_problem(Some(format!(
                "MLflow refused the gateway's credentials: {e}"
            )));
        }
        if attempt == 0 || attempt.is_multiple_of(10) {
            tracing::warn!(kind, attempt, error = %e, "MLflow call failed; retrying");
        }
    }

    fn enqueue_trace_info(&self, experiment_id: String, job: TraceInfoJob) {
        match self.trace_infos.try_send((experiment_id, job)) {
            Ok(()) => metrics::gauge!("gateway_trace_info_queue").increment(1.0),
            Err(e) => {
                let (_, job) = e.into_inner();
                metrics::counter!("gateway_trace_info_dropped_total").increment(1);
                tracing::warn!(
                    trace_id = %mlflow_trace_id(&job.trace_id),
                    "TraceInfo queue full: trace keeps its spans, session, user and tags but \
                     not its client request id and metadata"
                );
            }
        }
    }
}

/// Runs `workers` StartTraceV3 loops until the queue closes.
pub async fn run_trace_info_workers(
    client: MlflowClient,
    policy: RetryPolicy,
    health: Arc<Health>,
    queue: mpsc::Receiver<TraceInfoItem>,
    workers: usize,
) {
    let queue = Arc::new(Mutex::new(queue));
    let mut tasks = Vec::with_capacity(workers);
    for _ in 0..workers {
        let queue = queue.clone();
        let client = client.clone();
        let policy = policy.clone();
        let health = health.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let next = queue.lock().await.recv().await;
                let Some((experiment_id, job)) = next else {
                    break;
                };
                metrics::gauge!("gateway_trace_info_queue").decrement(1.0);
                write_trace_info(&client, &policy, &health, &experiment_id, &job).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

#[tracing::instrument(skip_all, fields(trace_id = %mlflow_trace_id(&job.trace_id)))]
async fn write_trace_info(
    client: &MlflowClient,
    policy: &RetryPolicy,
    health: &Health,
    experiment_id: &str,
    job: &TraceInfoJob,
) {
    let body = job.body(experiment_id);
    let result = policy
        .run(
            || client.start_trace(&body),
            |e, attempt| {
                metrics::counter!("gateway_export_retries_total", "kind" => "trace_info", "reason" => e.reason())
                    .increment(1);
                if e.class() == ErrorClass::Auth {
                    health.set_export_problem(Some(format!(
                        "MLflow refused the gateway's credentials: {e}"
                    )));
                }
                if attempt == 0 || attempt.is_multiple_of(10) {
                    tracing::warn!(attempt, error = %e, "StartTraceV3 failed; retrying");
                }
            },
        )
        .await;
    match result {
        Ok(()) => metrics::counter!("gateway_export_traces_total").increment(1),
        Err(e) => {
            let reason = if e.is_retryable() {
                "gave_up"
            } else {
                e.reason()
            };
            metrics::counter!("gateway_export_failures_total", "kind" => "trace_info", "reason" => reason)
                .increment(1);
            tracing::error!(error = %e, "MLflow rejected the TraceInfo; the trace keeps its spans");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::Span;

    fn req(shape: &[&[usize]]) -> ExportTraceServiceRequest {
        let mut n = 0u8;
        ExportTraceServiceRequest {
            resource_spans: shape
                .iter()
                .map(|scopes| ResourceSpans {
                    scope_spans: scopes
                        .iter()
                        .map(|count| ScopeSpans {
                            spans: (0..*count)
                                .map(|_| {
                                    n += 1;
                                    Span {
                                        span_id: vec![n; 8],
                                        ..Default::default()
                                    }
                                })
                                .collect(),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                })
                .collect(),
        }
    }

    fn ids(r: &ExportTraceServiceRequest) -> Vec<u8> {
        r.resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
            .map(|s| s.span_id[0])
            .collect()
    }

    #[test]
    fn split_halves_across_resources_and_scopes_without_loss() {
        let r = req(&[&[3, 2], &[4]]);
        let (a, b) = split(r);
        assert_eq!(ids(&a), vec![1, 2, 3, 4]);
        assert_eq!(ids(&b), vec![5, 6, 7, 8, 9]);
        assert!(
            a.resource_spans
                .iter()
                .all(|rs| rs.scope_spans.iter().all(|s| !s.spans.is_empty()))
        );
        let (c, d) = split(req(&[&[2]]));
        assert_eq!((ids(&c), ids(&d)), (vec![1], vec![2]));
    }
}
