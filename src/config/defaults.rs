//! Every default, a named constant with the reason for its value.

use std::time::Duration;

use super::{FsyncPolicy, SpoolCompression};

/// OTLP/gRPC's registered port, so SDKs work with their defaults.
pub const DEFAULT_OTLP_GRPC_ADDR: &str = "0.0.0.0:4317";
/// OTLP/HTTP's registered port.
pub const DEFAULT_OTLP_HTTP_ADDR: &str = "0.0.0.0:4318";
/// Side API (feedback, health, metrics), apart from the data ports like the Collector's extensions.
pub const DEFAULT_API_ADDR: &str = "0.0.0.0:8080";
/// MLflow's own default `mlflow server` address.
pub const DEFAULT_TRACKING_URI: &str = "http://127.0.0.1:5000";
/// MLflow's "Default" experiment exists on every fresh server.
pub const DEFAULT_EXPERIMENT_ID: &str = "0";
/// Matches the OTel Collector's default gRPC max receive size, so a drop-in swap accepts the same.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Real OTLP compresses 4-8x; 64 MiB leaves headroom for that and stops zip bombs long before OOM.
pub const DEFAULT_MAX_DECOMPRESSED_BYTES: usize = 64 * 1024 * 1024;
/// Decoded request bytes all requests hold at once: one largest body. Four concurrent bombs
/// then cost one limit between them, not four (BENCHMARKS.md, scenario 6).
pub const DEFAULT_MAX_INFLIGHT_DECOMPRESSED_BYTES: usize = DEFAULT_MAX_DECOMPRESSED_BYTES;
/// The deepest message nesting MLflow's decoder reads (see `otlp::schema::MLFLOW_MAX_NESTING`).
pub const DEFAULT_MAX_NESTING_DEPTH: usize = crate::otlp::schema::MLFLOW_MAX_NESTING;
/// Nesting below this would refuse ordinary spans: an event's attribute value sits 6 deep.
pub const MIN_NESTING_DEPTH: usize = 6;
/// Beyond this many concurrent export requests the gateway is saturated; refuse instead of queueing.
pub const DEFAULT_MAX_INFLIGHT_REQUESTS: usize = 1024;
/// CPUs left to delivery when `receiver.ingest_concurrency` is not set: with every CPU checking
/// and mapping requests under overload, delivery fell to a tenth of its sustained rate
/// (BENCHMARKS.md, "Decisions").
pub const INGEST_RESERVED_CPUS: usize = 1;

/// `receiver.ingest_concurrency` when not set: the CPUs this process may use (cgroup quotas
/// included) less `INGEST_RESERVED_CPUS`, at least one.
pub fn default_ingest_concurrency() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .saturating_sub(INGEST_RESERVED_CPUS)
        .max(1)
}
/// 256 MiB of decoded spans waiting for MLflow: minutes of what one MLflow server ingests.
pub const DEFAULT_MAX_QUEUE_BYTES: usize = 256 * 1024 * 1024;
/// Seconds a refused client is told to wait; short, since the queue drains at MLflow's pace.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(2);
/// MLflow ingested most spans per second at 100-500 spans per request (its per-request cost is
/// paid less often; beyond that each post only holds the database longer).
pub const DEFAULT_BATCH_MAX_SPANS: usize = 500;
/// Keeps one MLflow request well below proxies' common 8-16 MiB body limits.
pub const DEFAULT_BATCH_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Same as the Collector's batch processor: low latency while still forming useful batches.
pub const DEFAULT_BATCH_TIMEOUT: Duration = Duration::from_millis(200);
/// With TraceInfo first a span worker waits for its batch's StartTraceV3 calls before posting,
/// so four keep about two span posts and two batches' TraceInfos in flight; two completed fewer
/// traces on PostgreSQL and as many on SQLite (BENCHMARKS.md, "Decisions").
pub const DEFAULT_EXPORT_CONCURRENCY: usize = 4;
/// Beside four span workers, four writers completed more traces than eight on SQLite (its
/// writers queue on one lock) and as many on PostgreSQL (BENCHMARKS.md, "Decisions").
pub const DEFAULT_TRACE_INFO_CONCURRENCY: usize = 4;
/// A 500-span batch of 10-span traces hands four writers ~13 TraceInfos each: 16 lets each
/// write its share at once against a fast backend, and bounds what one lost connection sends
/// again.
pub const DEFAULT_TRACE_INFO_PIPELINE_DEPTH: usize = 16;
/// Spans may run this many traces ahead of their TraceInfo: seconds of StartTraceV3 writes on
/// SQLite, enough to keep span batches flowing while TraceInfo catches up in between.
pub const DEFAULT_MAX_INCOMPLETE_TRACES: usize = 200;
/// TraceInfo before spans: MLflow inserts a trace row about twice as fast as it merges into one
/// that spans created, with the same stored result (BENCHMARKS.md, "Decisions").
pub const DEFAULT_TRACE_INFO_FIRST: bool = true;
/// Several minutes of what MLflow on SQLite writes; each job is well under 2 KiB.
pub const DEFAULT_TRACE_INFO_QUEUE: usize = 50_000;
/// One slow MLflow call must not stall a worker forever; generous for 1000-span batches (~1 s).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// First retry soon: most failures are a restarting server or a busy SQLite.
pub const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_millis(500);
/// Caps the wait so delivery resumes within half a minute of MLflow coming back.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Zero means retry until delivered: the queue's byte limit, not time, bounds what is held.
pub const DEFAULT_MAX_ELAPSED: Duration = Duration::ZERO;
/// Roots normally follow their children within one BatchSpanProcessor interval (5 s);
/// ten minutes covers long agent runs whose root ends last.
pub const DEFAULT_ROOT_WAIT: Duration = Duration::from_secs(600);
/// A trace MLflow shows in progress forever is worse than one finalized from what came; MLflow's
/// SDK finalizes every trace it starts.
pub const DEFAULT_FINALIZE_WITHOUT_ROOT: bool = true;
/// Bounds memory for traces whose root never comes (each entry is a few hundred bytes).
pub const DEFAULT_MAX_PENDING_TRACES: usize = 100_000;
/// Kubernetes' default termination grace period is 30 s; leave a few seconds for the exit.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(25);
/// How often readiness re-checks that MLflow answers.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// Requests for experiments by name create them, as MLflow's SDK does with set_experiment.
pub const DEFAULT_CREATE_MISSING_EXPERIMENTS: bool = true;
/// Every acknowledged span survives power loss; group commit keeps the cost to one fsync per
/// batch of concurrent requests.
pub const DEFAULT_FSYNC: FsyncPolicy = FsyncPolicy::Always;
/// With `fsync = "interval"`: at most this much acknowledged data is at risk on power loss.
pub const DEFAULT_FSYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Spooled OTLP shrinks about tenfold (repeated keys, resources and scopes): less to write and
/// sync per request, and more spans held in `max_disk_bytes` while MLflow is away.
pub const DEFAULT_SPOOL_COMPRESSION: SpoolCompression = SpoolCompression::Zstd;
/// Big enough that rotation is rare, small enough that a delivered segment frees space soon.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Tens of minutes of what one MLflow server ingests, at ~1 KiB per span stored as is (README,
/// "Sizing the data directory").
pub const DEFAULT_MAX_DISK_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// Feedback usually follows its response within minutes; an hour covers slow span pipelines.
pub const DEFAULT_FEEDBACK_PENDING_TTL: Duration = Duration::from_secs(3600);
/// Pending feedback is retried this often at first (backing off to 30 s).
pub const DEFAULT_FEEDBACK_RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// Finished records are kept this long so GET and retries with the same key still answer.
pub const DEFAULT_FEEDBACK_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Bounds memory and disk for votes whose traces have not arrived.
pub const DEFAULT_FEEDBACK_MAX_PENDING: usize = 100_000;
/// A vote with a long rationale is a few KiB; 64 KiB leaves room for structured expectations.
pub const DEFAULT_FEEDBACK_MAX_BODY_BYTES: usize = 64 * 1024;
/// Per token or client address: far above a human's clicking, low enough to stop a runaway loop.
pub const DEFAULT_FEEDBACK_RATE_PER_SECOND: f64 = 50.0;
pub const DEFAULT_FEEDBACK_RATE_BURST: u32 = 100;
/// client_request_id -> trace entries remembered (a few MiB in all): minutes of traffic at
/// typical rates, seconds at 1000 traces/s; misses fall back to an MLflow search.
pub const DEFAULT_REQUEST_ID_INDEX_CAPACITY: usize = 20_000;
/// A tenant may fill the whole spool unless its share is set: one tenant of several should be
/// given less, so that its backlog cannot refuse the others.
pub const DEFAULT_TENANT_SPOOL_SHARE: f64 = 1.0;
