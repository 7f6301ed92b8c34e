//! Span batches to `/v1/traces`; a batch MLflow refuses whole is halved (`isolate`) until what
//! it refuses is alone, and that goes to the dead-letter file.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use super::isolate::{self, Contents, Parts};
use super::trace_infos::{BatchWrites, TraceInfoItem, Written};
use super::{note_retry, worker_pool};
use crate::auth::Tenants;
use crate::map::trace_info::{TraceInfoJob, mlflow_trace_id};
use crate::mlflow::error::MlflowError;
use crate::mlflow::experiments::{Experiments, ResolveError};
use crate::mlflow::retry::RetryPolicy;
use crate::mlflow::{Identities, MlflowClient};
use crate::ops::health::Health;
use crate::pipeline::backlog::SpanBacklog;
use crate::pipeline::batcher::{Batch, BatchRoot};
use crate::spool::Ack;
use crate::spool::deadletter::{DeadLetter, DeadLetters};
use crate::vocab::{ExperimentRef, labels};

/// Everything the span workers share.
pub struct SpanExporter {
    /// The gateway's MLflow identity and each tenant's own.
    pub identities: Identities,
    pub tenants: Arc<Tenants>,
    pub experiments: Experiments,
    pub policy: RetryPolicy,
    pub trace_infos: mpsc::Sender<TraceInfoItem>,
    pub health: Arc<Health>,
    pub dead_letters: Arc<DeadLetters>,
    pub backlog: SpanBacklog,
}

/// Runs `workers` span-delivery loops until the batch channel closes.
pub async fn run_span_workers(
    exporter: Arc<SpanExporter>,
    batches: mpsc::Receiver<Batch>,
    workers: usize,
    backlog: SpanBacklog,
) {
    worker_pool(
        batches,
        workers,
        |_: &()| 1,
        || (),
        move |(), batches| {
            let (exporter, backlog) = (exporter.clone(), backlog.clone());
            async move {
                for batch in batches {
                    backlog.span_turn().await;
                    exporter.deliver(batch).await;
                    backlog.finished();
                }
            }
        },
    )
    .await;
}

impl SpanExporter {
    #[tracing::instrument(skip_all, fields(experiment = %batch.experiment, spans = batch.span_count))]
    async fn deliver(&self, batch: Batch) {
        let spans = batch.span_count;
        metrics::histogram!("gateway_export_batch_spans").record(spans as f64);
        let body = match batch.bodies.len() {
            1 => batch.bodies[0].clone(),
            _ => {
                let mut all = BytesMut::with_capacity(batch.bytes);
                for b in &batch.bodies {
                    all.extend_from_slice(b);
                }
                all.freeze()
            }
        };
        // `delivered`: None when every span went in, else what did.
        let (experiment_id, delivered) = match self.resolve(&batch).await {
            Ok(id) => {
                if self.backlog.trace_info_first() {
                    self.write_trace_infos(&id, &batch).await;
                }
                let client = self.identities.of(batch.tenant.as_deref());
                // Records without spans carry TraceInfos only (traces finalized without root).
                let delivered = match spans {
                    0 => None,
                    _ => self.deliver_spans(client, &id, body, spans, &batch).await,
                };
                (Some(id), delivered)
            }
            Err(e) => {
                let experiment = match &batch.experiment {
                    ExperimentRef::Id(id) => id.clone(),
                    ExperimentRef::Name(n) => format!("name:{n}"),
                };
                let infos = batch
                    .roots
                    .iter()
                    .map(|r| r.job.body(&experiment))
                    .collect();
                let labels = labels(&[("reason", "experiment")], batch.tenant.as_ref());
                metrics::counter!("gateway_export_spans_failed_total", labels)
                    .increment(spans as u64);
                self.dead_letters.write(
                    &DeadLetter::new(&experiment, &e.to_string(), spans, &body, infos)
                        .of_tenant(batch.tenant.as_deref()),
                );
                (None, Some(Contents::default()))
            }
        };
        let Batch {
            roots,
            acks,
            permits,
            tenant: batch_tenant,
            ..
        } = batch;
        drop(permits);
        for BatchRoot { job, ack, record } in roots {
            match &experiment_id {
                // Written before the spans; the writer acknowledged its part.
                Some(_) if self.backlog.trace_info_first() => {}
                Some(id)
                    if delivered
                        .as_ref()
                        .is_none_or(|d| d.holds_root(record, &job.root_span_id)) =>
                {
                    self.enqueue_trace_info(id.clone(), batch_tenant.clone(), job, ack, None)
                }
                // Its spans are in the dead-letter file, with its TraceInfo.
                _ => ack.done(),
            }
        }
        for ack in acks {
            ack.done();
        }
    }

    /// Posts the batch. When MLflow refuses it as a whole, it is cut into parts (`isolate`) and
    /// halved until what MLflow refuses is alone; that goes to the dead-letter file, the rest to
    /// MLflow. Returns what was delivered, or None when all was.
    async fn deliver_spans(
        &self,
        client: &MlflowClient,
        experiment_id: &str,
        body: Bytes,
        spans: usize,
        batch: &Batch,
    ) -> Option<Contents> {
        let delivered_labels = || labels(&[], batch.tenant.as_ref());
        match self.post(client, experiment_id, body.clone()).await {
            Ok(()) => {
                metrics::counter!("gateway_export_spans_total", delivered_labels())
                    .increment(spans as u64);
                return None;
            }
            Err(e) if is_refusal(&e) && spans > 1 => {
                tracing::warn!(error = %e, spans, "MLflow rejected the batch; splitting to isolate the offending spans");
            }
            Err(e) => {
                self.reject(experiment_id, &e, (spans, &body), batch, batch.roots.iter());
                return Some(Contents::default());
            }
        }
        let parts = Parts::new(&batch.bodies);
        let mut delivered = Contents::default();
        let (a, b) = isolate::halves(0..parts.len());
        let mut stack = vec![b, a];
        while let Some(range) = stack.pop() {
            if range.is_empty() {
                continue;
            }
            let part = parts.encode(&range);
            let contents = parts.contents(&range);
            let n = contents.spans
                + contents
                    .whole_records
                    .iter()
                    .map(|r| batch.record_spans.get(*r).copied().unwrap_or(0))
                    .sum::<usize>();
            match self.post(client, experiment_id, part.clone()).await {
                Ok(()) => {
                    metrics::counter!("gateway_export_spans_total", delivered_labels())
                        .increment(n as u64);
                    delivered.add(contents);
                }
                Err(e) if is_refusal(&e) && range.len() > 1 => {
                    let (a, b) = isolate::halves(range);
                    stack.push(b);
                    stack.push(a);
                }
                Err(e) => {
                    let roots = batch
                        .roots
                        .iter()
                        .filter(|r| contents.holds_root(r.record, &r.job.root_span_id));
                    self.reject(experiment_id, &e, (n, &part), batch, roots);
                }
            }
        }
        Some(delivered)
    }

    /// Spans MLflow will not take (or that outlived the retry limit): to the dead-letter file,
    /// with the TraceInfos of `roots`, the roots among them.
    fn reject<'a>(
        &self,
        experiment_id: &str,
        e: &MlflowError,
        (n, body): (usize, &Bytes),
        batch: &'a Batch,
        roots: impl Iterator<Item = &'a BatchRoot>,
    ) {
        let reason = if e.is_retryable() {
            "gave_up"
        } else {
            e.reason()
        };
        metrics::counter!("gateway_export_failures_total", "kind" => "spans", "reason" => reason)
            .increment(1);
        let labels = labels(&[("reason", reason)], batch.tenant.as_ref());
        metrics::counter!("gateway_export_spans_failed_total", labels).increment(n as u64);
        let infos = roots.map(|r| r.job.body(experiment_id)).collect();
        if e.status() == Some(404) {
            self.experiments.invalidate(&batch.experiment);
        }
        if let MlflowError::Denied { .. } = e {
            tracing::error!(tenant = batch.tenant.as_deref().unwrap_or(""), experiment_id,
                spans = n, error = %e, "MLflow denied the tenant's identity; spans dead-lettered");
        }
        self.dead_letters.write(
            &DeadLetter::new(experiment_id, &e.to_string(), n, body, infos)
                .of_tenant(batch.tenant.as_deref()),
        );
    }

    /// Resolves the batch's experiment, waiting out MLflow outages.
    async fn resolve(&self, batch: &Batch) -> Result<String, MlflowError> {
        let experiments = &self.experiments;
        let tenant = batch
            .tenant
            .as_deref()
            .and_then(|name| self.tenants.get(name))
            .map(|t| &**t);
        let r = self
            .policy
            .run(
                || async {
                    experiments
                        .resolve_for(&batch.experiment, tenant)
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
                |e, attempt| note_retry(&self.health, "resolve", e, attempt, 1),
            )
            .await;
        if let Err(e) = &r {
            let reason = if e.is_retryable() {
                "gave_up"
            } else {
                "experiment"
            };
            metrics::counter!("gateway_export_failures_total", "kind" => "spans", "reason" => reason)
                .increment(1);
            tracing::error!(experiment = %batch.experiment, spans = batch.span_count, error = %e,
                "cannot deliver spans: experiment unusable");
        }
        r
    }

    async fn post(
        &self,
        client: &MlflowClient,
        experiment_id: &str,
        body: Bytes,
    ) -> Result<(), MlflowError> {
        let result = self
            .policy
            .run(
                || client.post_spans(experiment_id, body.clone()),
                |e, attempt| note_retry(&self.health, "spans", e, attempt, 1),
            )
            .await;
        if result.is_ok() {
            self.health.set_export_problem(None);
        }
        result
    }

    /// Hands the batch's TraceInfos to the writers and waits until each is written or given up
    /// (a TraceInfo MLflow refuses does not keep the spans from going).
    async fn write_trace_infos(&self, experiment_id: &str, batch: &Batch) {
        if batch.roots.is_empty() {
            return;
        }
        let writes = BatchWrites::new(batch.roots.len());
        for root in &batch.roots {
            let written = Written(writes.clone());
            self.enqueue_trace_info(
                experiment_id.to_string(),
                batch.tenant.clone(),
                root.job.clone(),
                root.ack.clone(),
                Some(written),
            );
        }
        writes.all_done().await;
    }

    fn enqueue_trace_info(
        &self,
        experiment_id: String,
        tenant: Option<Arc<str>>,
        job: Arc<TraceInfoJob>,
        ack: Ack,
        written: Option<Written>,
    ) {
        let item = TraceInfoItem {
            experiment_id,
            tenant,
            job,
            ack,
            written,
        };
        match self.trace_infos.try_send(item) {
            Ok(()) => {
                self.backlog.trace_info_queued();
                metrics::gauge!("gateway_trace_info_queue").increment(1.0);
            }
            Err(e) => {
                let TraceInfoItem { job, ack, .. } = e.into_inner();
                metrics::counter!("gateway_trace_info_dropped_total").increment(1);
                tracing::warn!(
                    trace_id = %mlflow_trace_id(&job.trace_id),
                    "TraceInfo queue full: trace keeps its spans, session, user and tags but \
                     not its client request id and metadata"
                );
                ack.done();
            }
        }
    }
}

/// MLflow's answer to a request it refuses as a whole for something in it (a span it cannot
/// store), which halving the request can narrow down.
fn is_refusal(e: &MlflowError) -> bool {
    matches!(e.status(), Some(400) | Some(422))
}
