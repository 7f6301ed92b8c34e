//! The queue between acknowledgement and delivery. A request is acknowledged once its record
//! is in the spool: appended to a segment log in the data directory (durable mode) or held in
//! a bounded in-memory queue (memory mode, for sidecars that prefer it). Records leave the
//! spool only when everything they carry (spans and TraceInfo writes) is delivered or
//! dead-lettered.

pub mod deadletter;
pub mod disk;
pub mod frame;
mod header;
mod record;
mod shares;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

pub use record::{RecordError, SpoolRecord};
pub use shares::SpoolShares;

/// In durable mode records wait on disk, so the reader keeps at most this much read back
/// ahead of delivery (or `queue.max_bytes`, if smaller): several full batches for every export
/// worker, while an overloaded gateway no longer holds `queue.max_bytes` (256 MiB by default)
/// of records in memory that the disk already holds.
pub const DURABLE_READ_AHEAD_BYTES: usize = 32 * 1024 * 1024;

/// A record `Spool::prepare` made ready to append.
pub struct Prepared {
    record: SpoolRecord,
    /// Its frame, for the disk spool.
    frame: Option<disk::Frame>,
}

/// Identifies a record in the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordId {
    pub segment: u64,
    pub offset: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool is full ({0})")]
    Full(String),
    #[error("spool is closed")]
    Closed,
    /// The tenant's undelivered records hold its whole share of the spool.
    #[error("{0}")]
    TenantShare(String),
    #[error("spool write failed: {0}")]
    Io(String),
}

/// A position `Spool::next` took from the log while its record is read back: given back if
/// the read is abandoned.
struct Taken<'a> {
    log: &'a disk::SegmentLog,
    position: Option<disk::Position>,
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if let Some(position) = self.position.take() {
            self.log.restore_position(position);
        }
    }
}

/// A record taken from the spool, with the memory it occupies.
pub struct Delivery {
    pub record: SpoolRecord,
    pub ack: Ack,
    pub permit: OwnedSemaphorePermit,
}

struct AckInner {
    spool: Spool,
    id: Option<RecordId>,
    remaining: AtomicUsize,
    /// The tenant's share this record was charged, and how much.
    charged: Option<(String, u64)>,
}

/// End-to-end acknowledgement of one record: split into parts (its spans, each TraceInfo);
/// when every part is done the record leaves the spool. A part dropped without `done` (a
/// shutdown deadline, a crash) leaves the record to be replayed.
#[derive(Clone)]
pub struct Ack(Arc<AckInner>);

impl Ack {
    fn new(
        spool: Spool,
        id: Option<RecordId>,
        parts: usize,
        charged: Option<(String, u64)>,
    ) -> Self {
        Self(Arc::new(AckInner {
            spool,
            id,
            remaining: AtomicUsize::new(parts.max(1)),
            charged,
        }))
    }

    /// Marks one part delivered (or given up and dead-lettered).
    pub fn done(&self) {
        if self.0.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Some((tenant, bytes)) = &self.0.charged {
                self.0.spool.1.release(Some(tenant), *bytes);
            }
            self.0.spool.ack(self.0.id);
        }
    }
}

/// Shared handle to the spool.
#[derive(Clone)]
pub struct Spool(Arc<Inner>, Arc<SpoolShares>);

enum Inner {
    Memory {
        tx: mpsc::UnboundedSender<(SpoolRecord, OwnedSemaphorePermit)>,
        rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<(SpoolRecord, OwnedSemaphorePermit)>>,
        memory: Arc<Semaphore>,
        max_memory: usize,
        /// Appends hold the read side while they check and send; close takes the write side,
        /// so no append slips in after the reader has seen the queue closed and empty.
        open: std::sync::RwLock<bool>,
        closed: tokio_util::sync::CancellationToken,
    },
    Disk {
        log: disk::SegmentLog,
        memory: Arc<Semaphore>,
        max_memory: usize,
    },
}

/// Figures for metrics and readiness.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub disk_bytes: u64,
    pub records: u64,
    pub memory_bytes: usize,
    pub oldest_ms: Option<u64>,
    pub disk_full: bool,
}

impl Spool {
    /// A memory-only spool bounded by `max_memory` bytes.
    pub fn memory(max_memory: usize) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let inner = Inner::Memory {
            tx,
            rx: tokio::sync::Mutex::new(rx),
            memory: Arc::new(Semaphore::new(max_memory)),
            max_memory,
            open: std::sync::RwLock::new(true),
            closed: tokio_util::sync::CancellationToken::new(),
        };
        Self(Arc::new(inner), Arc::default())
    }

    /// A durable spool over a segment log; `max_memory` (capped at `DURABLE_READ_AHEAD_BYTES`)
    /// bounds what is read back at once.
    pub fn disk(log: disk::SegmentLog, max_memory: usize) -> Self {
        let max_memory = max_memory.min(DURABLE_READ_AHEAD_BYTES);
        let inner = Inner::Disk {
            log,
            memory: Arc::new(Semaphore::new(max_memory)),
            max_memory,
        };
        Self(Arc::new(inner), Arc::default())
    }

    /// Holds each tenant to its share of the spool (`SpoolShares`); set before any append.
    pub fn with_shares(self, shares: SpoolShares) -> Self {
        Self(self.0, Arc::new(shares))
    }

    pub fn is_durable(&self) -> bool {
        matches!(&*self.0, Inner::Disk { .. })
    }

    /// Appends a record; Ok means it is safe (durable per the fsync policy, or queued).
    #[cfg(test)]
    pub async fn append(&self, record: SpoolRecord) -> Result<(), SpoolError> {
        self.append_prepared(self.prepare(record)).await
    }

    /// Readies a record for `append_prepared`: on disk, frames (and compresses) it. Kept apart
    /// so that callers do this CPU work where they account for it (the receivers' ingest turns)
    /// and not while waiting for the group commit.
    pub fn prepare(&self, record: SpoolRecord) -> Prepared {
        let frame = match &*self.0 {
            Inner::Disk { log, .. } => Some(log.frame(&record)),
            Inner::Memory { .. } => None,
        };
        Prepared { record, frame }
    }

    /// Appends a prepared record; Ok means it is safe (durable per the fsync policy, or queued).
    pub async fn append_prepared(&self, prepared: Prepared) -> Result<(), SpoolError> {
        let Prepared { record, frame } = prepared;
        let stored = match &frame {
            Some(frame) => frame.stored_len() as u64,
            None => record.encoded_len() as u64,
        };
        let tenant = record.tenant.clone();
        self.1
            .charge(tenant.as_deref(), stored)
            .map_err(SpoolError::TenantShare)?;
        let appended = self.append_charged(record, frame).await;
        if appended.is_err() {
            self.1.release(tenant.as_deref(), stored);
        }
        appended
    }

    async fn append_charged(
        &self,
        record: SpoolRecord,
        frame: Option<disk::Frame>,
    ) -> Result<(), SpoolError> {
        match &*self.0 {
            Inner::Memory {
                tx,
                memory,
                max_memory,
                open,
                ..
            } => {
                let open = open.read().unwrap_or_else(|p| p.into_inner());
                if !*open {
                    return Err(SpoolError::Closed);
                }
                let want = record.encoded_len().clamp(1, *max_memory) as u32;
                let permit = memory.clone().try_acquire_many_owned(want).map_err(|_| {
                    SpoolError::Full(format!(
                        "{} of {} bytes of memory queued",
                        max_memory - memory.available_permits(),
                        max_memory
                    ))
                })?;
                tx.send((record, permit)).map_err(|_| SpoolError::Closed)
            }
            Inner::Disk { log, .. } => {
                let frame = frame.unwrap_or_else(|| log.frame(&record));
                log.append_framed(record, frame, true).await
            }
        }
    }

    /// The next record to deliver, waiting for memory and data; None once closed and drained.
    /// Cancel-safe: a call dropped before it returns leaves its record for the next call.
    pub async fn next(&self) -> Option<Delivery> {
        match &*self.0 {
            Inner::Memory { rx, closed, .. } => {
                let mut rx = rx.lock().await;
                let next = tokio::select! {
                    biased;
                    m = rx.recv() => m,
                    _ = closed.cancelled() => rx.try_recv().ok(),
                };
                let (record, permit) = next?;
                let parts = 1 + record.roots.len();
                let charged = record
                    .tenant
                    .clone()
                    .map(|t| (t, record.encoded_len() as u64));
                Some(Delivery {
                    ack: Ack::new(self.clone(), None, parts, charged),
                    record,
                    permit,
                })
            }
            Inner::Disk {
                log,
                memory,
                max_memory,
            } => loop {
                // Peek, then take the position once the memory is granted, so a caller that
                // gives up while waiting (a timeout, shutdown) loses no record.
                let next = log.peek_position().await?;
                let id = next.id;
                // What the record takes in memory once read, not on disk (compressed).
                let want = (next.record_len as usize).clamp(1, *max_memory) as u32;
                let permit = memory.clone().acquire_many_owned(want).await.ok()?;
                log.consume_position(id);
                let charged =
                    |record: &SpoolRecord| record.tenant.clone().map(|t| (t, u64::from(next.len)));
                if let Some(record) = log.take_hot(id) {
                    let parts = 1 + record.roots.len();
                    return Some(Delivery {
                        ack: Ack::new(self.clone(), Some(id), parts, charged(&record)),
                        record,
                        permit,
                    });
                }
                // Dropped during the read (a caller's timeout), the position goes back: the
                // record is read again by the next call instead of waiting for a restart.
                let mut taken = Taken {
                    log,
                    position: Some(next),
                };
                let read = log.read(id, next.len).await;
                taken.position = None;
                match read {
                    Ok(bytes) => match SpoolRecord::decode(bytes) {
                        Ok(record) => {
                            let parts = 1 + record.roots.len();
                            return Some(Delivery {
                                ack: Ack::new(self.clone(), Some(id), parts, charged(&record)),
                                record,
                                permit,
                            });
                        }
                        Err(e) => {
                            // The frame's checksum was right, so this is a format problem:
                            // keep the bytes aside for inspection rather than lose them.
                            tracing::error!(?id, error = %e, "undecodable spool record skipped");
                            metrics::counter!("gateway_spool_corrupt_records_total").increment(1);
                            log.ack(id);
                        }
                    },
                    Err(e) => {
                        tracing::error!(?id, error = %e, "cannot read spool record; skipped");
                        metrics::counter!("gateway_spool_corrupt_records_total").increment(1);
                        log.ack(id);
                    }
                }
            },
        }
    }

    fn ack(&self, id: Option<RecordId>) {
        if let (Inner::Disk { log, .. }, Some(id)) = (&*self.0, id) {
            log.ack(id);
        }
    }

    /// Refuses further appends; `next` drains what is left, then returns None.
    pub async fn close(&self) {
        match &*self.0 {
            Inner::Memory { open, closed, .. } => {
                *open.write().unwrap_or_else(|p| p.into_inner()) = false;
                closed.cancel();
            }
            Inner::Disk { log, .. } => log.close().await,
        }
    }

    pub fn stats(&self) -> Stats {
        match &*self.0 {
            Inner::Memory {
                memory, max_memory, ..
            } => Stats {
                memory_bytes: max_memory - memory.available_permits(),
                ..Stats::default()
            },
            Inner::Disk {
                log,
                memory,
                max_memory,
            } => {
                let mut s = log.stats();
                s.memory_bytes = max_memory - memory.available_permits();
                s
            }
        }
    }

    /// Rotates a fully delivered active segment so its file can go (housekeeping).
    pub async fn reclaim(&self) {
        if let Inner::Disk { log, .. } = &*self.0 {
            log.reclaim().await;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::{FsyncPolicy, SpoolCompression};
    use crate::map::rules::TraceFacts;
    use crate::map::trace_info::TraceInfoJob;
    use crate::map::trace_info::TraceState;
    use crate::vocab::ExperimentRef;
    use bytes::Bytes;

    /// A disk log's options as the gateway's defaults have them, with `fsync`: 1 MiB segments,
    /// room enough on disk for any test.
    pub fn log_options(fsync: FsyncPolicy) -> disk::LogOptions {
        disk::LogOptions {
            fsync,
            fsync_interval: std::time::Duration::from_secs(1),
            segment_bytes: 1 << 20,
            max_disk_bytes: 1 << 30,
            compression: SpoolCompression::Zstd,
        }
    }

    pub fn record(n: u8) -> SpoolRecord {
        SpoolRecord {
            experiment: ExperimentRef::Name(format!("exp-{n}")),
            tenant: None,
            span_count: n as usize,
            roots: vec![TraceInfoJob {
                trace_id: [n; 16],
                root_span_id: [n; 8],
                root_name: "root".into(),
                start_unix_nano: 1,
                end_unix_nano: 2,
                state: TraceState::Ok,
                facts: TraceFacts::default(),
                from_mlflow_sdk: false,
            }],
            received_ms: 42,
            sampled: false,
            body: Bytes::from(vec![n; 100]),
        }
    }

    #[test]
    fn records_round_trip() {
        let r = record(3);
        assert_eq!(SpoolRecord::decode(Bytes::from(r.encode())).unwrap(), r);
        assert!(SpoolRecord::decode(Bytes::from_static(b"\x05\x00")).is_err());
    }

    /// A spool left by a version that wrote JSON headers is still delivered after an upgrade.
    #[test]
    fn records_with_a_json_header_still_read() {
        let header = br#"{"experiment":{"name":"chat"},"tenant":"team-a","span_count":4,"roots":[{"trace_id":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16],"root_span_id":[0,0,0,0,0,0,0,1],"root_name":"POST /v1/chat","start_unix_nano":1000,"end_unix_nano":2000,"state":"Error","facts":{"client_request_id":"req-1","metadata":{"mlflow.trace.user":"u"},"tags":{"feature":"chat"}},"from_mlflow_sdk":false}],"received_ms":42,"sampled":true}"#;
        let mut bytes = (header.len() as u32).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(b"spans");
        let r = SpoolRecord::decode(Bytes::from(bytes)).unwrap();
        assert_eq!(r.experiment, ExperimentRef::Name("chat".into()));
        assert_eq!(r.tenant.as_deref(), Some("team-a"));
        assert_eq!((r.span_count, r.received_ms, r.sampled), (4, 42, true));
        assert_eq!(&r.body[..], b"spans");
        let job = &r.roots[0];
        assert_eq!(job.trace_id[15], 16);
        assert_eq!(job.root_span_id, [0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(job.state, TraceState::Error);
        assert_eq!(job.facts.client_request_id.as_deref(), Some("req-1"));
        assert_eq!(job.facts.metadata["mlflow.trace.user"], "u");
        assert_eq!(job.facts.tags["feature"], "chat");
        // Written again, it is written in the binary form and reads back the same.
        let again = SpoolRecord::decode(Bytes::from(r.encode())).unwrap();
        assert_eq!(again, r);
    }

    #[tokio::test]
    async fn disk_records_come_back_from_memory_and_after_a_restart_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            disk::SegmentLog::open(dir.path(), log_options(FsyncPolicy::Always))
                .unwrap()
                .0
        };
        let log = open();
        let spool = Spool::disk(log.clone(), 1 << 20);
        for n in 1..=3 {
            spool.append(record(n)).await.unwrap();
        }
        // The first comes from the hot tail: the same record, and acknowledging it works.
        let first = spool.next().await.unwrap();
        assert_eq!(first.record, record(1));
        for _ in 0..1 + first.record.roots.len() {
            first.ack.done();
        }
        drop(first);
        drop(spool);
        drop(log);
        // After a restart the hot tail is gone: records are read back from disk and decoded
        // (the first again too: its segment was not finished, delivery is at least once).
        let spool = Spool::disk(open(), 1 << 20);
        for n in 1..=3 {
            let d = spool.next().await.unwrap();
            assert_eq!(d.record, record(n));
        }
    }

    /// A read from disk abandoned halfway (a caller's timeout) gives its record back: the next
    /// call returns it, then the rest in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_from_disk_cut_off_leaves_its_record_for_the_next_call() {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            disk::SegmentLog::open(dir.path(), log_options(FsyncPolicy::Never))
                .unwrap()
                .0
        };
        {
            let spool = Spool::disk(open(), 1 << 20);
            for n in 1..=3 {
                spool.append(record(n)).await.unwrap();
            }
        }
        // After a restart every record is read back from disk, on the blocking pool: one poll
        // takes the first position and starts its read; then the call is dropped. The read
        // can finish within that poll (the test thread preempted on a loaded machine while
        // the blocking thread reads), and then nothing was cut off: such a try is discarded
        // with its spool, and the log opened again, which starts over at the first record.
        let mut tries = 0;
        let spool = loop {
            let spool = Spool::disk(open(), 1 << 20);
            let mut call = Box::pin(spool.next());
            let first =
                std::future::poll_fn(|cx| std::task::Poll::Ready(call.as_mut().poll(cx))).await;
            drop(call);
            if first.is_pending() {
                break spool;
            }
            tries += 1;
            assert!(
                tries < 50,
                "the read finished within its first poll {tries} times"
            );
        };
        for n in 1..=3 {
            let d = spool.next().await.unwrap();
            assert_eq!(d.record, record(n));
        }
    }

    #[tokio::test]
    async fn durable_read_ahead_is_capped_whatever_queue_max_bytes_says() {
        let dir = tempfile::tempdir().unwrap();
        let log = disk::SegmentLog::open(
            dir.path(),
            disk::LogOptions {
                segment_bytes: 1 << 30,
                ..log_options(FsyncPolicy::Never)
            },
        )
        .unwrap()
        .0;
        let spool = Spool::disk(log, 1 << 30);
        let big = |n: u8| SpoolRecord {
            body: Bytes::from(vec![n; 4 << 20]),
            ..record(n)
        };
        for n in 0..12 {
            spool.append(big(n)).await.unwrap();
        }
        // Undelivered records hold their read-back memory: 32 MiB fits 7 records of 4 MiB
        // (plus headers), and the 8th waits for a delivery.
        let mut held = vec![];
        while let Ok(Some(d)) =
            tokio::time::timeout(std::time::Duration::from_secs(1), spool.next()).await
        {
            held.push(d);
        }
        assert_eq!(held.len(), 7);
        assert!(spool.stats().memory_bytes <= DURABLE_READ_AHEAD_BYTES);
        held.remove(0);
        let next = tokio::time::timeout(std::time::Duration::from_secs(2), spool.next()).await;
        assert_eq!(next.unwrap().unwrap().record.span_count, 7);
    }

    #[tokio::test]
    async fn memory_spool_is_bounded_and_frees_on_delivery() {
        let spool = Spool::memory(1000);
        spool.append(record(1)).await.unwrap();
        assert!(matches!(
            spool.append(record(2)).await,
            Err(SpoolError::Full(_))
        ));
        let d = spool.next().await.unwrap();
        assert_eq!(d.record.span_count, 1);
        drop(d);
        spool.append(record(2)).await.unwrap();
        spool.close().await;
        assert!(matches!(
            spool.append(record(3)).await,
            Err(SpoolError::Closed)
        ));
        assert_eq!(spool.next().await.unwrap().record.span_count, 2);
        assert!(spool.next().await.is_none());
    }
}
