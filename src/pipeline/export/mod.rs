//! Delivery to MLflow: span batches to `/v1/traces` (`spans`) and each trace's TraceInfo through
//! StartTraceV3, written by a pool of TraceInfo writers from a bounded queue (`trace_infos`).
//!
//! By default (`mlflow.trace_info_first`) a batch's TraceInfos are written before its spans:
//! MLflow inserts a new trace row about twice as fast as it merges a StartTraceV3 into the row
//! that spans created, and takes the spans into a finalized trace no slower, so complete traces
//! land sooner with the same stored result (BENCHMARKS.md, "Decisions").
//! Otherwise spans go first, as the MLflow SDK sends them, and `SpanBacklog` balances the two.

mod isolate;
mod spans;
mod trace_infos;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Mutex, mpsc};

use crate::mlflow::error::{ErrorClass, MlflowError};
use crate::ops::health::Health;

pub use spans::{SpanExporter, run_span_workers};
pub use trace_infos::{TraceInfoItem, run_trace_info_workers};

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
