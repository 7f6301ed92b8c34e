//! Who goes first when MLflow cannot keep up with both span batches and TraceInfo writes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// Who goes first when MLflow cannot keep up with both span batches and TraceInfo writes.
///
/// Spans first, normally: when more batches exist than export workers, MLflow is what holds
/// spans back, and all TraceInfo writers but one step aside. On SQLite every StartTraceV3 takes
/// the same database lock as a span batch, and concurrent TraceInfo writes halved span
/// throughput (BENCHMARKS.md, "Decisions"). One writer keeps TraceInfos moving.
///
/// But not without bound: once more than `max_incomplete` delivered traces wait for their
/// TraceInfo, span batches wait and every TraceInfo writer goes. Under a sustained overload
/// MLflow then fills with complete traces (client request id, metadata, tags) instead of a
/// growing pile of spans-only traces that complete only when the load stops.
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

impl SpanBacklog {
    /// Whether a batch's TraceInfos are written before its spans.
    pub fn trace_info_first(&self) -> bool {
        self.trace_info_first
    }
}

/// The one TraceInfo write that goes ahead despite a span backlog; freed on drop, so a write
/// that fails or panics cannot keep the slot.
pub(crate) struct TrickleSlot(Arc<AtomicBool>);

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
    pub fn writing_trace_info_first(workers: usize) -> Self {
        Self {
            trace_info_first: true,
            ..Self::new(workers, 0)
        }
    }

    /// Waits until a TraceInfo write may go ahead. While spans are backlogged (and the traces
    /// awaiting their TraceInfo are within bound) only the holder of the trickle slot may; the
    /// slot is handed back when the returned guard is dropped.
    pub(crate) async fn trace_info_turn(&self) -> Option<TrickleSlot> {
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
    pub(crate) async fn span_turn(&self) {
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

    pub(crate) fn finished(&self) {
        self.batches.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn trace_info_queued(&self) {
        self.incomplete.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn trace_info_done(&self) {
        self.incomplete.fetch_sub(1, Ordering::Relaxed);
    }

    /// Whether a span batch is waiting for a free export worker.
    pub fn is_waiting(&self) -> bool {
        self.batches.load(Ordering::Relaxed) > self.workers
    }
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
        let backlog = SpanBacklog::writing_trace_info_first(1);
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
}
