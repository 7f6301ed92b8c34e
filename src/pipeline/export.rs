//! Delivery to MLflow: span batches to `/v1/traces` and each trace's TraceInfo through
//! StartTraceV3, written by a pool of TraceInfo writers from a bounded queue.
//!
//! By default (`mlflow.trace_info_first`) a batch's TraceInfos are written before its spans:
//! MLflow inserts a new trace row about twice as fast as it merges a StartTraceV3 into the row
//! that spans created, and takes the spans into a finalized trace no slower, so complete traces
//! land 1.4-1.6x faster on SQLite with the same stored result (BENCHMARKS.md). Otherwise spans go
//! first, as the MLflow SDK sends them, and `SpanBacklog` balances the two.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::{Mutex, Notify, mpsc};

use super::batcher::{Batch, BatchRoot};
use super::isolate::{self, Contents, Parts};
use crate::map::trace_info::{TraceInfoJob, mlflow_trace_id};
use crate::mlflow::MlflowClient;
use crate::mlflow::client::TraceInfoConnection;
use crate::mlflow::error::{ErrorClass, MlflowError};
use crate::mlflow::experiments::{Experiments, ResolveError};
use crate::mlflow::retry::RetryPolicy;
use crate::ops::health::Health;
use crate::pipeline::envelope::ExperimentRef;
use crate::spool::Ack;
use crate::spool::deadletter::{DeadLetter, DeadLetters};

/// A TraceInfo write waiting for StartTraceV3.
pub struct TraceInfoItem {
    pub experiment_id: String,
    pub job: Arc<TraceInfoJob>,
    /// The record's acknowledgement, one part of which is this write.
    pub ack: Ack,
    /// Dropped once the write is over (written or given up) when a span batch waits for its
    /// TraceInfos (`trace_info_first`).
    pub written: Option<Written>,
}

/// A batch's TraceInfo writes still to finish; its span worker waits for zero.
struct BatchWrites {
    remaining: AtomicUsize,
    all_done: Notify,
}

impl BatchWrites {
    fn new(writes: usize) -> Arc<Self> {
        Arc::new(Self {
            remaining: AtomicUsize::new(writes),
            all_done: Notify::new(),
        })
    }

    /// Returns once every `Written` of the batch was dropped (at once if that already happened).
    async fn all_done(&self) {
        self.all_done.notified().await;
    }
}

/// One write of a batch. It reports by being dropped, whether the write went through, was given
/// up, or never started (a full queue), so a batch cannot be left waiting. One counter and one
/// wake-up per batch, not one per trace.
pub struct Written(Arc<BatchWrites>);

impl Drop for Written {
    fn drop(&mut self) {
        if self.0.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Stores a permit if the span worker is not waiting yet.
            self.0.all_done.notify_one();
        }
    }
}

/// Everything the span workers share.
pub struct SpanExporter {
    pub client: MlflowClient,
    pub experiments: Experiments,
    pub policy: RetryPolicy,
    pub trace_infos: mpsc::Sender<TraceInfoItem>,
    pub health: Arc<Health>,
    pub dead_letters: Arc<DeadLetters>,
    pub backlog: SpanBacklog,
}

/// Runs `workers` tasks taking items from one shared queue until it closes and drains. A worker
/// takes up to `max_take(its state)` items at a time, but no more than its share of what is
/// queued among the workers that are idle, so a burst still spreads over every free worker, in
/// as few takes as that allows. Each worker gets its own `state` (made once, handed to every
/// group it handles).
async fn worker_pool<T, S, F, Fut>(
    queue: mpsc::Receiver<T>,
    workers: usize,
    max_take: impl Fn(&S) -> usize + Clone + Send + 'static,
    state: impl Fn() -> S,
    handle: F,
) where
    T: Send + 'static,
    S: Clone + Send + 'static,
    F: Fn(S, Vec<T>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let queue = Arc::new(Mutex::new(queue));
    let idle = Arc::new(AtomicUsize::new(workers));
    let mut tasks = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (queue, idle) = (queue.clone(), idle.clone());
        let (handle, max_take) = (handle.clone(), max_take.clone());
        let state = state();
        tasks.push(tokio::spawn(async move {
            loop {
                let group = {
                    let mut queue = queue.lock().await;
                    let Some(first) = queue.recv().await else {
                        break;
                    };
                    let max_take = max_take(&state).max(1);
                    if max_take > 1 {
                        // The first item of a burst wakes this worker, often on the other
                        // runtime thread while the producer is still queueing the rest.
                        tokio::task::yield_now().await;
                    }
                    let free = idle.fetch_sub(1, Ordering::AcqRel).max(1);
                    let share = (queue.len() + 1).div_ceil(free).clamp(1, max_take);
                    let mut group = Vec::with_capacity(share);
                    group.push(first);
                    while group.len() < share {
                        match queue.try_recv() {
                            Ok(item) => group.push(item),
                            Err(_) => break,
                        }
                    }
                    group
                };
                handle(state.clone(), group).await;
                idle.fetch_add(1, Ordering::AcqRel);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// Who goes first when MLflow cannot keep up with both span batches and TraceInfo writes.
///
/// Spans first, normally: when more batches exist than export workers, MLflow is what holds
/// spans back, and all TraceInfo writers but one step aside. On SQLite every StartTraceV3 takes
/// the same database lock as a span batch, and concurrent TraceInfo writes were measured to
/// halve span throughput (BENCHMARKS.md). One writer keeps TraceInfos moving.
///
/// But not without bound: once more than `max_incomplete` delivered traces wait for their
/// TraceInfo, span batches wait and every TraceInfo writer goes. Under a sustained overload
/// MLflow then fills with complete traces (client request id, metadata, tags) instead of a
/// growing pile of spans-only traces that complete only when the load stops (BENCHMARKS.md,
/// scenario 5).
#[derive(Clone, Debug)]
pub struct SpanBacklog {
    batches: Arc<AtomicUsize>,
    workers: usize,
    /// Whether the one TraceInfo writer that ignores the backlog is busy.
    trickle: Arc<AtomicBool>,
    /// TraceInfo writes queued or in flight for traces whose spans were delivered.
    incomplete: Arc<AtomicUsize>,
    /// 0: no bound, spans always first.
    max_incomplete: usize,
    /// TraceInfos go before their spans (`mlflow.trace_info_first`): span batches wait for
    /// them, so no writer steps aside.
    trace_info_first: bool,
}

/// The one TraceInfo write that goes ahead despite a span backlog; freed on drop, so a write
/// that fails or panics cannot keep the slot.
struct TrickleSlot(Arc<AtomicBool>);

impl Drop for TrickleSlot {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// How often a paused worker (span or TraceInfo) looks again at the balance.
const TRACE_INFO_PAUSE: Duration = Duration::from_millis(50);

impl SpanBacklog {
    pub fn new(workers: usize, max_incomplete: usize) -> Self {
        Self {
            batches: Arc::new(AtomicUsize::new(0)),
            workers: workers.max(1),
            trickle: Arc::new(AtomicBool::new(false)),
            incomplete: Arc::new(AtomicUsize::new(0)),
            max_incomplete,
            trace_info_first: false,
        }
    }

    /// For `trace_info_first`: a batch waits for its own TraceInfos, so neither side may hold
    /// the other back (that would only slow the batch down).
    pub fn trace_info_first(workers: usize) -> Self {
        Self {
            trace_info_first: true,
            ..Self::new(workers, 0)
        }
    }

    /// Waits until a TraceInfo write may go ahead. While spans are backlogged (and the traces
    /// awaiting their TraceInfo are within bound) only the holder of the trickle slot may; the
    /// slot is handed back when the returned guard is dropped.
    async fn trace_info_turn(&self) -> Option<TrickleSlot> {
        loop {
            if self.trace_info_first || !self.is_waiting() || self.too_many_incomplete() {
                return None;
            }
            if self
                .trickle
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                return Some(TrickleSlot(self.trickle.clone()));
            }
            tokio::time::sleep(TRACE_INFO_PAUSE).await;
        }
    }

    /// Waits until a span batch may go to MLflow: while too many delivered traces wait for
    /// their TraceInfo, TraceInfo writes go first.
    async fn span_turn(&self) {
        while self.too_many_incomplete() {
            tokio::time::sleep(TRACE_INFO_PAUSE).await;
        }
    }

    fn too_many_incomplete(&self) -> bool {
        self.max_incomplete > 0 && self.incomplete.load(Ordering::Relaxed) > self.max_incomplete
    }

    pub fn handed_over(&self) {
        self.batches.fetch_add(1, Ordering::Relaxed);
    }

    fn finished(&self) {
        self.batches.fetch_sub(1, Ordering::Relaxed);
    }

    fn trace_info_queued(&self) {
        self.incomplete.fetch_add(1, Ordering::Relaxed);
    }

    fn trace_info_done(&self) {
        self.incomplete.fetch_sub(1, Ordering::Relaxed);
    }

    /// Whether a span batch is waiting for a free export worker.
    pub fn is_waiting(&self) -> bool {
        self.batches.load(Ordering::Relaxed) > self.workers
    }
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
                if self.backlog.trace_info_first {
                    self.write_trace_infos(&id, &batch).await;
                }
                let delivered = self.deliver_spans(&id, body, spans, &batch).await;
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
                metrics::counter!("gateway_export_spans_failed_total", "reason" => "experiment")
                    .increment(spans as u64);
                self.dead_letters.write(&DeadLetter::new(
                    &experiment,
                    &e.to_string(),
                    spans,
                    &body,
                    infos,
                ));
                (None, Some(Contents::default()))
            }
        };
        let Batch {
            roots,
            acks,
            permits,
            ..
        } = batch;
        drop(permits);
        for BatchRoot { job, ack, record } in roots {
            match &experiment_id {
                // Written before the spans; the writer acknowledged its part.
                Some(_) if self.backlog.trace_info_first => {}
                Some(id)
                    if delivered
                        .as_ref()
                        .is_none_or(|d| d.holds_root(record, &job.root_span_id)) =>
                {
                    self.enqueue_trace_info(id.clone(), job, ack, None)
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
        experiment_id: &str,
        body: Bytes,
        spans: usize,
        batch: &Batch,
    ) -> Option<Contents> {
        match self.post(experiment_id, body.clone()).await {
            Ok(()) => {
                metrics::counter!("gateway_export_spans_total").increment(spans as u64);
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
            match self.post(experiment_id, part.clone()).await {
                Ok(()) => {
                    metrics::counter!("gateway_export_spans_total").increment(n as u64);
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
        metrics::counter!("gateway_export_spans_failed_total", "reason" => reason)
            .increment(n as u64);
        let infos = roots.map(|r| r.job.body(experiment_id)).collect();
        if e.status() == Some(404) {
            self.experiments.invalidate(&batch.experiment);
        }
        self.dead_letters.write(&DeadLetter::new(
            experiment_id,
            &e.to_string(),
            n,
            body,
            infos,
        ));
    }

    /// Resolves the batch's experiment, waiting out MLflow outages.
    async fn resolve(&self, batch: &Batch) -> Result<String, MlflowError> {
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

    async fn post(&self, experiment_id: &str, body: Bytes) -> Result<(), MlflowError> {
        let result = self
            .policy
            .run(
                || self.client.post_spans(experiment_id, body.clone()),
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
        job: Arc<TraceInfoJob>,
        ack: Ack,
        written: Option<Written>,
    ) {
        let item = TraceInfoItem {
            experiment_id,
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

/// Counts `calls` retried MLflow calls, fails readiness on refused credentials, and logs the
/// first and every tenth attempt.
fn note_retry(health: &Health, kind: &'static str, e: &MlflowError, attempt: u32, calls: usize) {
    metrics::counter!("gateway_export_retries_total", "kind" => kind, "reason" => e.reason())
        .increment(calls as u64);
    if e.class() == ErrorClass::Auth {
        health.set_export_problem(Some(format!(
            "MLflow refused the gateway's credentials: {e}"
        )));
    }
    if attempt == 0 || attempt.is_multiple_of(10) {
        tracing::warn!(kind, attempt, calls, error = %e, "MLflow call failed; retrying");
    }
}

/// Runs `workers` StartTraceV3 loops until the queue closes. Each takes up to
/// `pipeline_depth` queued TraceInfos at a time while MLflow answers fast enough for
/// pipelining to matter, and writes them together (pipelined on its connection where it has
/// one of its own; `TraceInfoConnection::run_limit`).
pub async fn run_trace_info_workers(
    client: MlflowClient,
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
        |connection: &Arc<TraceInfoConnection>| connection.run_limit(),
        || Arc::new(client.trace_info_connection(pipeline_depth)),
        move |connection: Arc<TraceInfoConnection>, items: Vec<TraceInfoItem>| {
            let (policy, health) = (policy.clone(), health.clone());
            let spans_first = spans_first.clone();
            async move {
                let slot = spans_first.trace_info_turn().await;
                metrics::gauge!("gateway_trace_info_queue").decrement(items.len() as f64);
                metrics::histogram!("gateway_trace_info_run_calls").record(items.len() as f64);
                write_trace_infos(&connection, &policy, &health, &items).await;
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

/// Writes each item's TraceInfo, all of them at once, then again those that failed retryably,
/// with the retry policy's backoff between rounds, until each is written or given up.
async fn write_trace_infos(
    connection: &TraceInfoConnection,
    policy: &RetryPolicy,
    health: &Health,
    items: &[TraceInfoItem],
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
        let bodies: Vec<Bytes> = pending.iter().map(|(_, body)| body.clone()).collect();
        let outcomes = connection.start_traces(&bodies).await;
        let mut again = Vec::new();
        let mut retryable = None;
        for ((job, body), outcome) in pending.into_iter().zip(outcomes) {
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

    #[tokio::test]
    async fn trace_info_writers_step_aside_for_a_span_backlog_but_one_keeps_going() {
        let backlog = SpanBacklog::new(2, 0);
        assert!(
            backlog.trace_info_turn().await.is_none(),
            "no backlog: everyone writes"
        );
        for _ in 0..3 {
            backlog.handed_over();
        }
        assert!(backlog.is_waiting(), "3 batches for 2 workers: one waits");
        let slot = backlog.trace_info_turn().await;
        assert!(slot.is_some(), "the trickle writer goes ahead");
        let second = tokio::time::timeout(Duration::from_millis(200), backlog.trace_info_turn());
        assert!(
            second.await.is_err(),
            "a second writer waits while spans are backlogged"
        );
        drop(slot);
        assert!(
            backlog.trace_info_turn().await.is_some(),
            "the slot is free again once dropped"
        );
        backlog.finished();
        assert!(!backlog.is_waiting());
        assert!(backlog.trace_info_turn().await.is_none());
    }

    #[tokio::test]
    async fn span_batches_wait_while_too_many_traces_lack_their_trace_info() {
        let backlog = SpanBacklog::new(1, 2);
        for _ in 0..3 {
            backlog.handed_over();
        }
        for _ in 0..2 {
            backlog.trace_info_queued();
        }
        let turn = |b: &SpanBacklog| {
            let b = b.clone();
            async move {
                tokio::time::timeout(Duration::from_millis(200), b.span_turn())
                    .await
                    .is_ok()
            }
        };
        assert!(turn(&backlog).await, "within bound: spans go");
        let slot = backlog.trace_info_turn().await;
        assert!(slot.is_some(), "spans first: one trickle writer");
        backlog.trace_info_queued();
        assert!(!turn(&backlog).await, "over bound: spans wait");
        assert!(
            backlog.trace_info_turn().await.is_none(),
            "over bound: every TraceInfo writer goes, trickle slot or not"
        );
        backlog.trace_info_done();
        assert!(turn(&backlog).await, "back within bound: spans go again");
        drop(slot);

        let unbounded = SpanBacklog::new(1, 0);
        for _ in 0..1000 {
            unbounded.trace_info_queued();
        }
        assert!(turn(&unbounded).await, "0 = no bound");
    }

    #[tokio::test]
    async fn trace_info_first_lets_neither_side_wait_for_the_other() {
        let backlog = SpanBacklog::trace_info_first(1);
        for _ in 0..5 {
            backlog.handed_over();
        }
        for _ in 0..1000 {
            backlog.trace_info_queued();
        }
        assert!(backlog.is_waiting(), "5 batches for 1 worker");
        // Batches wait for their own TraceInfos, so every writer goes despite the backlog...
        let writers: Vec<_> = writer_turns(&backlog, 4).await;
        assert!(writers.iter().all(Option::is_none), "no writer steps aside");
        // ...and no span batch waits for TraceInfos of other batches.
        tokio::time::timeout(Duration::from_millis(200), backlog.span_turn())
            .await
            .expect("span batches go");
    }

    async fn writer_turns(b: &SpanBacklog, n: usize) -> Vec<Option<TrickleSlot>> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(
                tokio::time::timeout(Duration::from_millis(200), b.trace_info_turn())
                    .await
                    .expect("a TraceInfo writer never waits"),
            );
        }
        out
    }

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
