//! TraceInfo writes (StartTraceV3): a pool of writers taking them from one bounded queue.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{Notify, mpsc};

use super::{note_retry, worker_pool};
use crate::map::trace_info::{TraceInfoJob, mlflow_trace_id};
use crate::mlflow::Identities;
use crate::mlflow::error::MlflowError;
use crate::mlflow::retry::RetryPolicy;
use crate::mlflow::trace_info::TraceInfoConnection;
use crate::ops::health::Health;
use crate::pipeline::backlog::SpanBacklog;
use crate::spool::Ack;

/// A TraceInfo write waiting for StartTraceV3.
pub struct TraceInfoItem {
    pub experiment_id: String,
    /// Whose TraceInfo it is: written under the tenant's own MLflow identity if it has one.
    pub tenant: Option<Arc<str>>,
    pub job: Arc<TraceInfoJob>,
    /// The record's acknowledgement, one part of which is this write.
    pub ack: Ack,
    /// Dropped once the write is over (written or given up) when a span batch waits for its
    /// TraceInfos (`trace_info_first`).
    pub written: Option<Written>,
}

/// A batch's TraceInfo writes still to finish; its span worker waits for zero.
pub(super) struct BatchWrites {
    remaining: AtomicUsize,
    all_done: Notify,
}

impl BatchWrites {
    pub(super) fn new(writes: usize) -> Arc<Self> {
        Arc::new(Self {
            remaining: AtomicUsize::new(writes),
            all_done: Notify::new(),
        })
    }

    /// Returns once every `Written` of the batch was dropped (at once if that already happened).
    pub(super) async fn all_done(&self) {
        self.all_done.notified().await;
    }
}

/// One write of a batch. It reports by being dropped, whether the write went through, was given
/// up, or never started (a full queue), so a batch cannot be left waiting. One counter and one
/// wake-up per batch, not one per trace.
pub struct Written(pub(super) Arc<BatchWrites>);

impl Drop for Written {
    fn drop(&mut self) {
        if self.0.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Stores a permit if the span worker is not waiting yet.
            self.0.all_done.notify_one();
        }
    }
}

/// Runs `workers` StartTraceV3 loops until the queue closes. Each takes up to
/// `pipeline_depth` queued TraceInfos at a time while MLflow answers fast enough for
/// pipelining to matter, and writes them together (pipelined on its connection where it has
/// one of its own; `TraceInfoConnection::run_limit`).
pub async fn run_trace_info_workers(
    identities: Identities,
    policy: RetryPolicy,
    health: Arc<Health>,
    queue: mpsc::Receiver<TraceInfoItem>,
    workers: usize,
    pipeline_depth: usize,
    spans_first: SpanBacklog,
) {
    worker_pool(
        queue,
        workers,
        |connections: &Arc<WriterConnections>| connections.gateway.run_limit(),
        || Arc::new(WriterConnections::new(identities.clone(), pipeline_depth)),
        move |connections: Arc<WriterConnections>, items: Vec<TraceInfoItem>| {
            let (policy, health) = (policy.clone(), health.clone());
            let spans_first = spans_first.clone();
            async move {
                let slot = spans_first.trace_info_turn().await;
                metrics::gauge!("gateway_trace_info_queue").decrement(items.len() as f64);
                metrics::histogram!("gateway_trace_info_run_calls").record(items.len() as f64);
                for (identity, group) in connections.by_identity(&items) {
                    let connection = connections.connection(identity);
                    write_trace_infos(&connection, &policy, &health, &group).await;
                }
                drop(slot);
                for item in items {
                    spans_first.trace_info_done();
                    item.ack.done();
                    drop(item.written);
                }
            }
        },
    )
    .await;
}

/// One writer's connections: the gateway's, and one per tenant with its own MLflow identity,
/// made when that tenant's first TraceInfo comes.
pub(super) struct WriterConnections {
    identities: Identities,
    depth: usize,
    gateway: Arc<TraceInfoConnection>,
    tenants: Mutex<HashMap<Arc<str>, Arc<TraceInfoConnection>>>,
}

impl WriterConnections {
    fn new(identities: Identities, depth: usize) -> Self {
        Self {
            gateway: Arc::new(identities.gateway().trace_info_connection(depth)),
            identities,
            depth,
            tenants: Mutex::default(),
        }
    }

    /// The items grouped by the identity they are written under (the gateway's: None).
    fn by_identity<'a>(
        &self,
        items: &'a [TraceInfoItem],
    ) -> Vec<(Option<&'a Arc<str>>, Vec<&'a TraceInfoItem>)> {
        let mut groups: Vec<(Option<&Arc<str>>, Vec<&TraceInfoItem>)> = Vec::new();
        for item in items {
            let identity = item.tenant.as_ref().filter(|t| self.identities.has_own(t));
            match groups.iter_mut().find(|(i, _)| *i == identity) {
                Some((_, group)) => group.push(item),
                None => groups.push((identity, vec![item])),
            }
        }
        groups
    }

    fn connection(&self, identity: Option<&Arc<str>>) -> Arc<TraceInfoConnection> {
        let Some(tenant) = identity else {
            return self.gateway.clone();
        };
        let mut tenants = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        tenants
            .entry(tenant.clone())
            .or_insert_with(|| {
                Arc::new(
                    self.identities
                        .of(Some(tenant))
                        .trace_info_connection(self.depth),
                )
            })
            .clone()
    }
}

/// Writes each item's TraceInfo, all of them at once, then again those that failed retryably,
/// with the retry policy's backoff between rounds, until each is written or given up.
async fn write_trace_infos(
    connection: &TraceInfoConnection,
    policy: &RetryPolicy,
    health: &Health,
    items: &[&TraceInfoItem],
) {
    let started = Instant::now();
    let mut pending: Vec<(&TraceInfoJob, Bytes)> = items
        .iter()
        .map(|item| {
            (
                &*item.job,
                Bytes::from(item.job.body_bytes(&item.experiment_id)),
            )
        })
        .collect();
    let mut attempt = 0u32;
    loop {
        let mut retryable = None;
        let Checked {
            to_write,
            mut again,
        } = skip_written_by_mlflow_sdk(connection, pending, &mut retryable).await;
        let bodies: Vec<Bytes> = to_write.iter().map(|(_, body)| body.clone()).collect();
        let outcomes = connection.start_traces(&bodies).await;
        for ((job, body), outcome) in to_write.into_iter().zip(outcomes) {
            match outcome {
                Ok(()) => metrics::counter!("gateway_export_traces_total").increment(1),
                Err(e) if !e.is_retryable() => trace_info_failed(job, &e, e.reason()),
                Err(e) => {
                    again.push((job, body));
                    retryable.get_or_insert(e);
                }
            }
        }
        let Some(e) = retryable else { return };
        if policy.out_of_time(started) {
            for (job, _) in &again {
                trace_info_failed(job, &e, "gave_up");
            }
            return;
        }
        note_retry(health, "trace_info", &e, attempt, again.len());
        tokio::time::sleep(policy.wait(attempt, &e)).await;
        attempt = attempt.saturating_add(1);
        pending = again;
    }
}

/// Leaves out the TraceInfos MLflow's SDK has written itself (dual export): StartTraceV3 would
/// overwrite every field it set, its experiment too. Checked right before each write, so only a
/// write of the SDK's that lands in between can still be overwritten; the SDK's usually lands
/// seconds before the gateway's, which waits for its spans' batch. One that cannot be checked
/// now is tried again with the failed writes.
async fn skip_written_by_mlflow_sdk<'a>(
    connection: &TraceInfoConnection,
    pending: Vec<(&'a TraceInfoJob, Bytes)>,
    retryable: &mut Option<MlflowError>,
) -> Checked<'a> {
    if !pending.iter().any(|(job, _)| job.from_mlflow_sdk) {
        return Checked {
            to_write: pending,
            again: Vec::new(),
        };
    }
    let mut out = Vec::with_capacity(pending.len());
    let mut unchecked = Vec::new();
    for (job, body) in pending {
        if !job.from_mlflow_sdk {
            out.push((job, body));
            continue;
        }
        let trace_id = mlflow_trace_id(&job.trace_id);
        match connection.finalized(&trace_id).await {
            Ok(false) => out.push((job, body)),
            Ok(true) => {
                metrics::counter!("gateway_trace_infos_skipped_total", "reason" => "mlflow_sdk")
                    .increment(1);
                tracing::debug!(trace_id, "MLflow's SDK wrote this TraceInfo; left as it is");
            }
            Err(e) if e.is_retryable() => {
                unchecked.push((job, body));
                retryable.get_or_insert(e);
            }
            // The write would meet the same refusal; it reports it.
            Err(_) => out.push((job, body)),
        }
    }
    Checked {
        to_write: out,
        again: unchecked,
    }
}

/// TraceInfos to write now, and those to check again in the next round.
struct Checked<'a> {
    to_write: Vec<(&'a TraceInfoJob, Bytes)>,
    again: Vec<(&'a TraceInfoJob, Bytes)>,
}

fn trace_info_failed(job: &TraceInfoJob, e: &MlflowError, reason: &'static str) {
    metrics::counter!("gateway_export_failures_total", "kind" => "trace_info", "reason" => reason)
        .increment(1);
    tracing::error!(
        trace_id = %mlflow_trace_id(&job.trace_id),
        error = %e,
        "MLflow rejected the TraceInfo; the trace keeps its spans"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_batch_waits_for_every_trace_info_write_and_is_woken_by_the_last() {
        let writes = BatchWrites::new(3);
        let mut pending: Vec<Written> = (0..3).map(|_| Written(writes.clone())).collect();
        drop(pending.pop());
        let early = tokio::time::timeout(Duration::from_millis(100), writes.all_done());
        assert!(early.await.is_err(), "two writes still running");
        drop(pending.pop());
        let waiter = tokio::spawn({
            let writes = writes.clone();
            async move { writes.all_done().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "one write still running");
        drop(pending.pop());
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("woken by the last write")
            .expect("waiter");

        // All over before anyone waits: the wait returns at once.
        let done_early = BatchWrites::new(1);
        drop(Written(done_early.clone()));
        tokio::time::timeout(Duration::from_millis(100), done_early.all_done())
            .await
            .expect("the wake-up is kept for a later wait");
    }
}
