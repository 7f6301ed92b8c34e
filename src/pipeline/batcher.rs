//! Groups accepted spans per experiment into MLflow-sized batches (size, bytes, age).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::backlog::SpanBacklog;
use super::envelope::Envelope;
use super::sampling::Sampler;
use crate::config::BatchConfig;
use crate::map::trace_info::TraceInfoJob;
use crate::spool::{Ack, Delivery, Spool};
use crate::vocab::ExperimentRef;

/// Spans for one experiment, ready for one `/v1/traces` request.
pub struct Batch {
    pub experiment: ExperimentRef,
    /// The tenant whose spans these are (a batch holds one tenant's): its MLflow identity.
    pub tenant: Option<Arc<str>>,
    /// Encoded `ExportTraceServiceRequest`s; concatenated they are one valid request.
    pub bodies: Vec<Bytes>,
    pub span_count: usize,
    pub bytes: usize,
    /// Each root's TraceInfo job with its record's acknowledgement.
    pub roots: Vec<BatchRoot>,
    /// Spans in each record, in the order of `bodies`.
    pub record_spans: Vec<usize>,
    /// One acknowledgement part per record for its spans.
    pub acks: Vec<Ack>,
    /// Memory budget held until the spans are delivered or given up.
    pub permits: Vec<OwnedSemaphorePermit>,
    pub oldest: Instant,
}

/// What a batch is for: one tenant's spans for one experiment.
type BatchKey = (Option<Arc<str>>, ExperimentRef);

/// A root span's TraceInfo job, with its record's acknowledgement and place in the batch. The
/// job is shared with the TraceInfo queue, which takes it while the batch waits for its write:
/// cloning each job (its metadata and tag maps) for the queue cost a copy of every trace's
/// facts.
pub struct BatchRoot {
    pub job: Arc<TraceInfoJob>,
    pub ack: Ack,
    /// Its record's index in `Batch::bodies`.
    pub record: usize,
}

impl Batch {
    fn new((tenant, experiment): BatchKey) -> Self {
        Self {
            experiment,
            tenant,
            bodies: Vec::new(),
            span_count: 0,
            bytes: 0,
            roots: Vec::new(),
            record_spans: Vec::new(),
            acks: Vec::new(),
            permits: Vec::new(),
            oldest: Instant::now(),
        }
    }

    fn push(&mut self, env: Envelope) {
        if self.bodies.is_empty() {
            // Age counts from when the batcher took the record, not when it was read from the
            // spool: records that waited behind a slow MLflow must still fill a batch.
            self.oldest = Instant::now();
        }
        let record = self.bodies.len();
        self.bytes += env.body.len();
        self.bodies.push(env.body);
        self.span_count += env.span_count;
        self.record_spans.push(env.span_count);
        self.roots
            .extend(env.roots.into_iter().map(|job| BatchRoot {
                job: Arc::new(job),
                ack: env.ack.clone(),
                record,
            }));
        self.acks.push(env.ack);
        self.permits.push(env.permit);
    }
}

/// Reads the spool until it is closed and drained (shutdown), then flushes everything and
/// returns. The batcher is the spool's reader itself: a reader task of its own, handing each
/// record over a channel, was one more task to wake per record.
pub async fn run(
    spool: Spool,
    output: mpsc::Sender<Batch>,
    cfg: BatchConfig,
    backlog: SpanBacklog,
    sampler: Option<Arc<Sampler>>,
) {
    let hand_over = |batch: Batch| {
        backlog.handed_over();
        output.send(batch)
    };
    let mut pending: HashMap<BatchKey, Batch> = HashMap::new();
    // Kept across the loop and replaced only once it yields: cut off by the age timer, a read
    // from disk would be given back and done again.
    let next = next_delivery(&spool, sampler.as_deref());
    tokio::pin!(next);
    loop {
        let deadline = pending
            .values()
            .map(|b| b.oldest + cfg.timeout)
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            // Input first: while MLflow is slow, records queue up here and must go out in
            // full batches, not one by one as their timers fire.
            biased;
            delivery = &mut next => {
                let Some(delivery) = delivery else { break };
                next.set(next_delivery(&spool, sampler.as_deref()));
                let env = Envelope::from(delivery);
                let key = (env.tenant.clone(), env.experiment.clone());
                let batch = pending
                    .entry(key.clone())
                    .or_insert_with(|| Batch::new(key.clone()));
                if batch.span_count > 0
                    && (batch.span_count + env.span_count > cfg.max_spans
                        || batch.bytes + env.body.len() > cfg.max_bytes)
                {
                    let full = std::mem::replace(batch, Batch::new(key.clone()));
                    if hand_over(full).await.is_err() {
                        return;
                    }
                }
                let batch = pending
                    .entry(key.clone())
                    .or_insert_with(|| Batch::new(key.clone()));
                batch.push(env);
                if (batch.span_count >= cfg.max_spans || batch.bytes >= cfg.max_bytes)
                    && let Some(full) = pending.remove(&key)
                    && hand_over(full).await.is_err()
                {
                    return;
                }
            }
            _ = tokio::time::sleep_until(deadline.into()), if !pending.is_empty() => {}
        }
        // Checked after every record too, so a steady stream cannot starve the age limit.
        let now = Instant::now();
        let due: Vec<BatchKey> = pending
            .iter()
            .filter(|(_, b)| b.oldest + cfg.timeout <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            if let Some(b) = pending.remove(&key)
                && hand_over(b).await.is_err()
            {
                return;
            }
        }
    }
    for (_, b) in pending.drain() {
        // A batch of TraceInfos alone (traces finalized without their root) goes out too.
        if (b.span_count > 0 || !b.roots.is_empty()) && hand_over(b).await.is_err() {
            return;
        }
    }
}

/// The spool's next record; with sampling, once its decision wait is over and only what kept
/// traces have in it (records whose spans were all held are skipped).
async fn next_delivery(spool: &Spool, sampler: Option<&Sampler>) -> Option<Delivery> {
    loop {
        let delivery = spool.next().await?;
        let Some(sampler) = sampler else {
            return Some(delivery);
        };
        if let Some(at) = sampler.release_at_ms(&delivery.record) {
            let now = crate::vocab::now_ms();
            if at > now {
                tokio::time::sleep(Duration::from_millis(at - now)).await;
            }
        }
        if let Some(delivery) = sampler.sift(delivery).await {
            return Some(delivery);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FsyncPolicy;
    use crate::spool::SpoolRecord;
    use crate::spool::disk::SegmentLog;
    use crate::spool::tests::log_options;

    fn record(exp: &str, spans: usize) -> SpoolRecord {
        SpoolRecord {
            experiment: ExperimentRef::Id(exp.into()),
            tenant: None,
            span_count: spans,
            roots: vec![],
            received_ms: 0,
            sampled: false,
            body: Bytes::from(vec![0u8; spans * 10]),
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
    async fn flushes_by_size_per_experiment_and_on_close() {
        let spool = Spool::memory(1 << 20);
        let (out_tx, mut out) = mpsc::channel(10);
        let task = tokio::spawn(run(
            spool.clone(),
            out_tx,
            cfg(10, 60_000),
            SpanBacklog::new(1, 0),
            None,
        ));
        for _ in 0..3 {
            spool.append(record("1", 4)).await.unwrap();
        }
        spool.append(record("2", 1)).await.unwrap();
        let b = out.recv().await.unwrap();
        assert_eq!(
            (b.experiment.clone(), b.span_count, b.bodies.len()),
            (ExperimentRef::Id("1".into()), 8, 2)
        );
        spool.close().await;
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
    async fn flushes_by_age_and_returns_the_memory_budget() {
        let spool = Spool::memory(1 << 20);
        let (out_tx, mut out) = mpsc::channel(10);
        let _task = tokio::spawn(run(
            spool.clone(),
            out_tx,
            cfg(1000, 20),
            SpanBacklog::new(1, 0),
            None,
        ));
        spool.append(record("1", 2)).await.unwrap();
        let b = tokio::time::timeout(Duration::from_secs(2), out.recv())
            .await
            .expect("flushed by age")
            .unwrap();
        assert_eq!(b.span_count, 2);
        assert!(spool.stats().memory_bytes > 0);
        drop(b);
        assert_eq!(
            spool.stats().memory_bytes,
            0,
            "budget returned with the batch"
        );
    }

    /// Records read back from disk (after a restart), batched by age every millisecond: each
    /// record delivered once, none left behind.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_from_disk_are_all_batched_under_a_firing_age_timer() {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            SegmentLog::open(dir.path(), log_options(FsyncPolicy::Never))
                .unwrap()
                .0
        };
        const RECORDS: usize = 300;
        {
            let spool = Spool::disk(open(), 1 << 20);
            for _ in 0..RECORDS {
                spool.append(record("1", 1)).await.unwrap();
            }
        }
        let spool = Spool::disk(open(), 1 << 20);
        let (out_tx, mut out) = mpsc::channel(1000);
        let task = tokio::spawn(run(
            spool.clone(),
            out_tx,
            cfg(1000, 1),
            SpanBacklog::new(1, 0),
            None,
        ));
        let mut spans = 0;
        let mut batches = 0;
        while spans < RECORDS {
            let Ok(Some(b)) = tokio::time::timeout(Duration::from_secs(10), out.recv()).await
            else {
                panic!("{spans} of {RECORDS} spans delivered, then nothing");
            };
            spans += b.span_count;
            batches += 1;
        }
        assert_eq!(spans, RECORDS);
        assert!(batches > 1, "the age timer never fired");
        spool.close().await;
        task.await.unwrap();
    }
}
