//! Groups accepted spans per experiment into MLflow-sized batches (size, bytes, age).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;

use super::envelope::{Envelope, ExperimentRef};
use crate::config::BatchConfig;
use crate::map::trace_info::TraceInfoJob;

/// Spans for one experiment, ready for one `/v1/traces` request.
#[derive(Debug)]
pub struct Batch {
    pub experiment: ExperimentRef,
    pub resource_spans: Vec<ResourceSpans>,
    pub span_count: usize,
    pub bytes: usize,
    pub roots: Vec<TraceInfoJob>,
    /// Queue budget held until the batch is delivered or given up.
    pub permits: Vec<OwnedSemaphorePermit>,
    pub oldest: Instant,
}

impl Batch {
    fn new(experiment: ExperimentRef, now: Instant) -> Self {
        Self {
            experiment,
            resource_spans: Vec::new(),
            span_count: 0,
            bytes: 0,
            roots: Vec::new(),
            permits: Vec::new(),
            oldest: now,
        }
    }

    fn push(&mut self, env: Envelope) {
        if self.span_count == 0 {
            self.oldest = env.received_at;
        }
        self.resource_spans.extend(env.resource_spans);
        self.span_count += env.span_count;
        self.bytes += env.encoded_len;
        self.roots.extend(env.roots);
        self.permits.push(env.permit);
    }
}

/// Runs until the input closes (after `shutdown`, it stops new input, drains what is queued,
/// flushes everything and returns).
pub async fn run(
    mut input: mpsc::UnboundedReceiver<Envelope>,
    output: mpsc::Sender<Batch>,
    cfg: BatchConfig,
    shutdown: CancellationToken,
) {
    let mut pending: HashMap<ExperimentRef, Batch> = HashMap::new();
    let mut closing = false;
    loop {
        let deadline = pending
            .values()
            .map(|b| b.oldest + cfg.timeout)
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = shutdown.cancelled(), if !closing => {
                // Refuse new input; what is already queued is still received below.
                input.close();
                closing = true;
            }
            env = input.recv() => {
                let Some(env) = env else { break };
                let key = env.experiment.clone();
                let batch = pending
                    .entry(key.clone())
                    .or_insert_with(|| Batch::new(key.clone(), env.received_at));
                if batch.span_count > 0
                    && (batch.span_count + env.span_count > cfg.max_spans
                        || batch.bytes + env.encoded_len > cfg.max_bytes)
                {
                    let full = std::mem::replace(batch, Batch::new(key.clone(), env.received_at));
                    if output.send(full).await.is_err() {
                        return;
                    }
                }
                let batch = pending
                    .entry(key.clone())
                    .or_insert_with(|| Batch::new(key.clone(), env.received_at));
                batch.push(env);
                if (batch.span_count >= cfg.max_spans || batch.bytes >= cfg.max_bytes)
                    && let Some(full) = pending.remove(&key)
                    && output.send(full).await.is_err()
                {
                    return;
                }
            }
            _ = tokio::time::sleep_until(deadline.into()), if !pending.is_empty() => {
                let now = Instant::now();
                let due: Vec<ExperimentRef> = pending
                    .iter()
                    .filter(|(_, b)| b.oldest + cfg.timeout <= now)
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in due {
                    if let Some(b) = pending.remove(&key)
                        && output.send(b).await.is_err()
                    {
                        return;
                    }
                }
            }
        }
    }
    for (_, b) in pending.drain() {
        if b.span_count > 0 && output.send(b).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::sync::Semaphore;

    fn env(exp: &str, spans: usize, sem: &Arc<Semaphore>) -> Envelope {
        Envelope {
            experiment: ExperimentRef::Id(exp.into()),
            resource_spans: vec![ResourceSpans::default()],
            span_count: spans,
            encoded_len: spans * 100,
            roots: vec![],
            permit: sem.clone().try_acquire_owned().unwrap(),
            received_at: Instant::now(),
        }
    }

    fn cfg(max_spans: usize, timeout_ms: u64) -> BatchConfig {
        BatchConfig {
            max_spans,
            max_bytes: 1 << 30,
            timeout: Duration::from_millis(timeout_ms),
        }
    }

    #[tokio::test]
    async fn flushes_by_size_per_experiment() {
        let sem = Arc::new(Semaphore::new(100));
        let (tx, rx) = mpsc::unbounded_channel();
        let (out_tx, mut out) = mpsc::channel(10);
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(rx, out_tx, cfg(10, 60_000), stop.clone()));
        for _ in 0..3 {
            tx.send(env("1", 4, &sem)).unwrap();
        }
        tx.send(env("2", 1, &sem)).unwrap();
        let b = out.recv().await.unwrap();
        assert_eq!(
            (b.experiment.clone(), b.span_count),
            (ExperimentRef::Id("1".into()), 8)
        );
        stop.cancel();
        task.await.unwrap();
        let mut rest = vec![];
        while let Some(b) = out.recv().await {
            rest.push((b.experiment.clone(), b.span_count));
        }
        rest.sort_by_key(|(e, _)| format!("{e}"));
        assert_eq!(
            rest,
            vec![
                (ExperimentRef::Id("1".into()), 4),
                (ExperimentRef::Id("2".into()), 1)
            ]
        );
    }

    #[tokio::test]
    async fn flushes_by_age() {
        let sem = Arc::new(Semaphore::new(100));
        let (tx, rx) = mpsc::unbounded_channel();
        let (out_tx, mut out) = mpsc::channel(10);
        let _task = tokio::spawn(run(rx, out_tx, cfg(1000, 20), CancellationToken::new()));
        tx.send(env("1", 2, &sem)).unwrap();
        let b = tokio::time::timeout(Duration::from_secs(2), out.recv())
            .await
            .expect("flushed by age")
            .unwrap();
        assert_eq!(b.span_count, 2);
        drop(b);
        assert_eq!(
            sem.available_permits(),
            100,
            "budget returned with the batch"
        );
    }
}
