//! Typed configuration: the TOML file, environment twins and flags all land here.
//!
//! Every default is a named constant with the reason for its value. The doc comments on the
//! structs are the configuration reference; `config/gateway.toml` mirrors them key by key.
//! Validation collects every problem before failing, so `--check-config` reports them all at once.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::map::rules::{MappingConfig, Target};
pub use crate::spool::{FsyncPolicy, SpoolCompression};

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
/// then cost one limit between them, not four (BENCHMARKS.md, "Refused bodies").
pub const DEFAULT_MAX_INFLIGHT_DECOMPRESSED_BYTES: usize = DEFAULT_MAX_DECOMPRESSED_BYTES;
/// The deepest message nesting MLflow's decoder reads (see `otlp::schema::MLFLOW_MAX_NESTING`).
pub const DEFAULT_MAX_NESTING_DEPTH: usize = crate::otlp::schema::MLFLOW_MAX_NESTING;
/// Nesting below this would refuse ordinary spans: an event's attribute value sits 6 deep.
pub const MIN_NESTING_DEPTH: usize = 6;
/// Beyond this many concurrent export requests the gateway is saturated; refuse instead of queueing.
pub const DEFAULT_MAX_INFLIGHT_REQUESTS: usize = 1024;
/// CPUs left to delivery when `receiver.ingest_concurrency` is not set: with every CPU checking
/// and mapping requests under overload, delivery collapsed (scenario 2, 512 spans/request:
/// 24k spans/s delivered flat out against 207k sustained; BENCHMARKS.md).
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
/// 256 MiB of decoded spans waiting for MLflow: minutes of MLflow's ~1.5k spans/s ceiling.
pub const DEFAULT_MAX_QUEUE_BYTES: usize = 256 * 1024 * 1024;
/// Seconds a refused client is told to wait; short, since the queue drains at MLflow's pace.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(2);
/// MLflow ingests best at 100-500 spans per request (mlflow-rest.md §9); more only adds latency.
pub const DEFAULT_BATCH_MAX_SPANS: usize = 500;
/// Keeps one MLflow request well below proxies' common 8-16 MiB body limits.
pub const DEFAULT_BATCH_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Same as the Collector's batch processor: low latency while still forming useful batches.
pub const DEFAULT_BATCH_TIMEOUT: Duration = Duration::from_millis(200);
/// With TraceInfo first a span worker waits for its batch's StartTraceV3 calls before posting,
/// so four keep about two span posts and two batches' TraceInfos in flight (scenario 5:
/// PostgreSQL +14 % complete traces/s over two, SQLite the same; BENCHMARKS.md).
pub const DEFAULT_EXPORT_CONCURRENCY: usize = 4;
/// Beside four span workers, four writers completed more traces than eight on SQLite (+9 % and
/// +28 % in two A/Bs: its writers queue on one lock) and as many on PostgreSQL (BENCHMARKS.md).
pub const DEFAULT_TRACE_INFO_CONCURRENCY: usize = 4;
/// A 500-span batch of 10-span traces hands four writers ~13 TraceInfos each: 16 lets each
/// write its share at once (BENCHMARKS.md), and bounds what one lost connection sends again.
pub const DEFAULT_TRACE_INFO_PIPELINE_DEPTH: usize = 16;
/// Spans may run this many traces ahead of their TraceInfo: seconds of StartTraceV3 writes on
/// SQLite, enough to keep span batches flowing while TraceInfo catches up in between.
pub const DEFAULT_MAX_INCOMPLETE_TRACES: usize = 200;
/// TraceInfo before spans: MLflow inserts a trace row about twice as fast as it merges into one
/// that spans created; complete traces 1.4-1.6x faster on SQLite, same result (BENCHMARKS.md).
pub const DEFAULT_TRACE_INFO_FIRST: bool = true;
/// About 15 minutes of SQLite's ~60 TraceInfo writes/s; each job is well under 2 KiB.
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
/// About 20 minutes of MLflow's ~1.5k spans/s ceiling at ~1 KiB per span (see README sizing).
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
/// client_request_id -> trace entries remembered (~230 bytes each, ~5 MiB in all): minutes of
/// traffic at typical rates, 10-20 s at 1000 traces/s; misses fall back to an MLflow search.
pub const DEFAULT_REQUEST_ID_INDEX_CAPACITY: usize = 20_000;

/// The whole configuration. Unknown keys are errors, so a typo never silently does nothing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listener addresses.
    pub server: ServerConfig,
    /// Limits applied to incoming OTLP requests.
    pub receiver: ReceiverConfig,
    /// The MLflow tracking server spans are forwarded to.
    pub mlflow: MlflowConfig,
    /// How spans are grouped into MLflow requests.
    pub batch: BatchConfig,
    /// Memory bounds for data waiting to be delivered.
    pub queue: QueueConfig,
    /// The durable spool under `data_dir` (used when `data_dir` is set).
    pub spool: SpoolConfig,
    /// Retry policy for MLflow calls.
    pub retry: RetryConfig,
    /// Tracking of traces whose root span has not arrived yet.
    pub traces: TracesConfig,
    /// Experiment routing by `service.name`.
    pub routing: RoutingConfig,
    /// Attribute-to-TraceInfo mapping table.
    pub mapping: MappingConfig,
    /// Feedback and expectations API.
    pub feedback: FeedbackConfig,
    /// Logging.
    pub log: LogConfig,
    /// Directory for durable state (pending feedback, spool). Created if missing.
    pub data_dir: Option<PathBuf>,
    /// Time allowed on SIGTERM/SIGINT to flush what is in memory to MLflow.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::default(),
            receiver: ReceiverConfig::default(),
            mlflow: MlflowConfig::default(),
            batch: BatchConfig::default(),
            queue: QueueConfig::default(),
            spool: SpoolConfig::default(),
            retry: RetryConfig::default(),
            traces: TracesConfig::default(),
            routing: RoutingConfig::default(),
            mapping: MappingConfig::default(),
            feedback: FeedbackConfig::default(),
            log: LogConfig::default(),
            data_dir: None,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
        }
    }
}

/// Listener addresses (`host:port`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// OTLP/gRPC TraceService (and the gateway's own gRPC services).
    pub otlp_grpc_addr: String,
    /// OTLP/HTTP `POST /v1/traces`.
    pub otlp_http_addr: String,
    /// Side API: `/healthz`, `/readyz`, `/metrics`, feedback.
    pub api_addr: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            otlp_grpc_addr: DEFAULT_OTLP_GRPC_ADDR.into(),
            otlp_http_addr: DEFAULT_OTLP_HTTP_ADDR.into(),
            api_addr: DEFAULT_API_ADDR.into(),
        }
    }
}

/// Limits on incoming OTLP requests.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReceiverConfig {
    /// Largest request body on the wire (compressed), and largest gRPC message. Larger gets 413.
    pub max_message_bytes: usize,
    /// Largest body after decompression. Larger gets 413 (zip-bomb guard).
    pub max_decompressed_bytes: usize,
    /// Decompressed bytes all requests may hold at once (plain bodies included); a request
    /// that would pass it gets a retryable refusal.
    pub max_inflight_decompressed_bytes: usize,
    /// Deepest message nesting accepted, counted from the request (MLflow's decoder refuses
    /// deeper); a span nested deeper is rejected alone.
    pub max_nesting_depth: usize,
    /// Concurrent OTLP requests being decoded and admitted; more get a retryable refusal.
    pub max_inflight_requests: usize,
    /// Requests checked, decoded, mapped and framed for the spool at once (CPU work); the
    /// others admitted wait for a turn, so the clients that overload the gateway are slowed
    /// down while delivery keeps a CPU. Default: the CPUs available less one, at least one.
    pub ingest_concurrency: Option<usize>,
    /// `Retry-After` sent with retryable refusals.
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_decompressed_bytes: DEFAULT_MAX_DECOMPRESSED_BYTES,
            max_inflight_decompressed_bytes: DEFAULT_MAX_INFLIGHT_DECOMPRESSED_BYTES,
            max_nesting_depth: DEFAULT_MAX_NESTING_DEPTH,
            max_inflight_requests: DEFAULT_MAX_INFLIGHT_REQUESTS,
            ingest_concurrency: None,
            retry_after: DEFAULT_RETRY_AFTER,
        }
    }
}

/// A string that never shows up in logs or `Debug` output.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// The MLflow tracking server. Environment: `MLFLOW_TRACKING_URI`, `MLFLOW_EXPERIMENT_ID`,
/// `MLFLOW_EXPERIMENT_NAME`, `MLFLOW_TRACKING_TOKEN`, `MLFLOW_TRACKING_USERNAME`/`PASSWORD`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MlflowConfig {
    /// Base URL of the tracking server.
    pub tracking_uri: String,
    /// Default experiment by id (wins over `experiment_name`).
    pub experiment_id: Option<String>,
    /// Default experiment by name.
    pub experiment_name: Option<String>,
    /// Create experiments named by requests or routing rules when they do not exist.
    pub create_missing_experiments: bool,
    /// Bearer token (`Authorization: Bearer`), for servers behind a token-checking proxy.
    pub token: Option<Secret>,
    /// Basic-auth user (MLflow's `basic-auth` app). Needs `password`.
    pub username: Option<String>,
    /// Basic-auth password.
    pub password: Option<Secret>,
    /// PEM file of CA certificates trusted for an `https` tracking URI, besides the system's.
    /// Env MLFLOW_TRACKING_SERVER_CERT_PATH.
    pub ca_cert: Option<PathBuf>,
    /// Skip TLS certificate verification (testing only). Env MLFLOW_TRACKING_INSECURE_TLS=true.
    pub insecure_tls: bool,
    /// Per-attempt timeout of every MLflow call.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Span batches posted to `/v1/traces` concurrently.
    pub export_concurrency: usize,
    /// TraceInfo writers: StartTraceV3 connections in use at once.
    pub trace_info_concurrency: usize,
    /// StartTraceV3 calls a writer may write on its connection before reading their replies
    /// (HTTP/1.1 pipelining); it takes no more than its share of the queue, and takes runs only
    /// while calls take under 1 ms (else one at a time). 1: one call per round trip. A server
    /// that closes the connection after every reply gets one call at a time by itself. Only for
    /// plain `http://` without a proxy; otherwise calls go one by one.
    pub trace_info_pipeline_depth: usize,
    /// Write each batch's TraceInfos (StartTraceV3) before its spans; the batch's spans go
    /// once every TraceInfo is written or given up. false: spans first, as the MLflow SDK
    /// sends them, balanced by `max_incomplete_traces`.
    pub trace_info_first: bool,
    /// With `trace_info_first = false`: when MLflow cannot keep up with both, span batches go
    /// first, but only while at most this many delivered traces still wait for their
    /// TraceInfo; beyond it span batches wait and all TraceInfo writers run, so what lands is
    /// complete traces. 0: no bound.
    pub max_incomplete_traces: usize,
    /// How often readiness re-checks MLflow's `/health`.
    #[serde(with = "humantime_serde")]
    pub health_interval: Duration,
}

impl Default for MlflowConfig {
    fn default() -> Self {
        Self {
            tracking_uri: DEFAULT_TRACKING_URI.into(),
            experiment_id: None,
            experiment_name: None,
            create_missing_experiments: DEFAULT_CREATE_MISSING_EXPERIMENTS,
            token: None,
            username: None,
            password: None,
            ca_cert: None,
            insecure_tls: false,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            export_concurrency: DEFAULT_EXPORT_CONCURRENCY,
            trace_info_concurrency: DEFAULT_TRACE_INFO_CONCURRENCY,
            trace_info_pipeline_depth: DEFAULT_TRACE_INFO_PIPELINE_DEPTH,
            trace_info_first: DEFAULT_TRACE_INFO_FIRST,
            max_incomplete_traces: DEFAULT_MAX_INCOMPLETE_TRACES,
            health_interval: DEFAULT_HEALTH_INTERVAL,
        }
    }
}

/// Batching of spans per experiment before they are posted to `/v1/traces`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Flush when a batch holds this many spans.
    pub max_spans: usize,
    /// Flush when a batch's encoded size reaches this many bytes.
    pub max_bytes: usize,
    /// Flush a batch this long after its first span arrived.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_spans: DEFAULT_BATCH_MAX_SPANS,
            max_bytes: DEFAULT_BATCH_MAX_BYTES,
            timeout: DEFAULT_BATCH_TIMEOUT,
        }
    }
}

/// Memory bounds. At a bound the receivers refuse with retryable codes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Memory mode: encoded span bytes accepted but not yet delivered to MLflow. Durable mode:
    /// what is read back from the spool ahead of delivery, at most 32 MiB
    /// (`spool::DURABLE_READ_AHEAD_BYTES`; the rest waits on disk).
    pub max_bytes: usize,
    /// TraceInfo writes waiting for StartTraceV3. Overflow is logged and counted.
    pub max_trace_infos: usize,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_QUEUE_BYTES,
            max_trace_infos: DEFAULT_TRACE_INFO_QUEUE,
        }
    }
}

/// The durable spool: a segment log under `<data_dir>/spool`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// When appended records are fsynced: `always` (before the request is acknowledged; survives
    /// power loss; one fsync per group of concurrent requests), `interval` (every
    /// `fsync_interval`; a crash of the process loses nothing, power loss up to one interval),
    /// `never` (the OS decides; a process crash loses nothing, power loss may lose more).
    pub fsync: FsyncPolicy,
    /// Period of background fsyncs with `fsync = "interval"`.
    #[serde(with = "humantime_serde")]
    pub fsync_interval: Duration,
    /// Size at which a segment file is sealed and a new one started.
    pub segment_bytes: u64,
    /// Disk the spool may use; at the limit receivers refuse with retryable codes.
    pub max_disk_bytes: u64,
    /// How records are stored: `zstd` (each record compressed, fast level -3; one that would not
    /// shrink is stored as is) or `none`. A spool written with either setting is read back
    /// with either.
    pub compression: SpoolCompression,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            fsync: DEFAULT_FSYNC,
            fsync_interval: DEFAULT_FSYNC_INTERVAL,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            max_disk_bytes: DEFAULT_MAX_DISK_BYTES,
            compression: DEFAULT_SPOOL_COMPRESSION,
        }
    }
}

/// Exponential backoff with full jitter for retryable MLflow failures.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// First delay.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Largest delay between attempts (a `Retry-After` from MLflow may ask for more).
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Give up after this long (logged and counted). `0s` retries until delivered.
    #[serde(with = "humantime_serde")]
    pub max_elapsed: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            initial_backoff: DEFAULT_INITIAL_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
            max_elapsed: DEFAULT_MAX_ELAPSED,
        }
    }
}

/// Traces whose root span has not been seen yet.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracesConfig {
    /// Forget a trace's collected facts if its root has not come within this time (counted).
    #[serde(with = "humantime_serde")]
    pub root_wait: Duration,
    /// Most traces awaiting their root; the oldest are forgotten first (counted). Also bounds
    /// the roots remembered (15-30 s) to recognise late children.
    pub max_pending: usize,
}

impl Default for TracesConfig {
    fn default() -> Self {
        Self {
            root_wait: DEFAULT_ROOT_WAIT,
            max_pending: DEFAULT_MAX_PENDING_TRACES,
        }
    }
}

/// Experiment routing: header `x-mlflow-experiment-id`, then resource attributes
/// `mlflow.experiment.id` / `mlflow.experiment.name`, then these rules, then the default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Rules matched in order against the resource's `service.name`.
    pub rules: Vec<RouteRule>,
}

/// One routing rule: spans of `service_name` go to the named or numbered experiment.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    pub service_name: String,
    pub experiment_id: Option<String>,
    pub experiment_name: Option<String>,
}

/// The feedback API (`/v1/feedback`, `/v1/expectations`, gRPC FeedbackService).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeedbackConfig {
    /// Bearer tokens the feedback API accepts. With none here or in `tokens_file`, it is open.
    pub tokens: Vec<Secret>,
    /// File with one token per line (`#` comments). Flag --feedback-tokens-file, env
    /// GATEWAY_FEEDBACK_TOKENS_FILE.
    pub tokens_file: Option<PathBuf>,
    /// How long feedback waits for its trace before it is marked expired (logged, counted).
    #[serde(with = "humantime_serde")]
    pub pending_ttl: Duration,
    /// First retry interval for pending feedback.
    #[serde(with = "humantime_serde")]
    pub retry_interval: Duration,
    /// How long logged and expired records answer GET and idempotent retries.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Most pending records; beyond it new feedback gets 503 with Retry-After.
    pub max_pending: usize,
    /// Largest request body; larger gets 413.
    pub max_body_bytes: usize,
    /// Requests per second per token (or per client address without tokens); 0 disables.
    pub rate_limit_per_second: f64,
    /// Burst allowance of the rate limit.
    pub rate_limit_burst: u32,
    /// client_request_id -> trace entries the pipeline remembers: the most recent half are
    /// always held, up to all of them (two generations, dropped whole).
    pub index_capacity: usize,
}

impl Default for FeedbackConfig {
    fn default() -> Self {
        Self {
            tokens: Vec::new(),
            tokens_file: None,
            pending_ttl: DEFAULT_FEEDBACK_PENDING_TTL,
            retry_interval: DEFAULT_FEEDBACK_RETRY_INTERVAL,
            retention: DEFAULT_FEEDBACK_RETENTION,
            max_pending: DEFAULT_FEEDBACK_MAX_PENDING,
            max_body_bytes: DEFAULT_FEEDBACK_MAX_BODY_BYTES,
            rate_limit_per_second: DEFAULT_FEEDBACK_RATE_PER_SECOND,
            rate_limit_burst: DEFAULT_FEEDBACK_RATE_BURST,
            index_capacity: DEFAULT_REQUEST_ID_INDEX_CAPACITY,
        }
    }
}

/// Log output.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `mlflow_otlp_gateway=debug`; `RUST_LOG` wins.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Errors from loading or validating configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// The resolved listener addresses of a valid config.
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    pub otlp_grpc: SocketAddr,
    pub otlp_http: SocketAddr,
    pub api: SocketAddr,
}

impl Config {
    /// Parses a TOML document.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Reads and parses a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Applies MLflow's environment conventions over file values. `lookup` is the environment
    /// (injected so tests need not mutate the process environment).
    pub fn apply_mlflow_env(&mut self, lookup: &dyn Fn(&str) -> Option<String>) {
        let get = |k: &str| lookup(k).filter(|v| !v.trim().is_empty());
        if let Some(v) = get("MLFLOW_TRACKING_URI") {
            self.mlflow.tracking_uri = v;
        }
        if let Some(v) = get("MLFLOW_EXPERIMENT_ID") {
            self.mlflow.experiment_id = Some(v);
        }
        if let Some(v) = get("MLFLOW_EXPERIMENT_NAME") {
            self.mlflow.experiment_name = Some(v);
        }
        if let Some(v) = get("MLFLOW_TRACKING_TOKEN") {
            self.mlflow.token = Some(Secret::new(v));
        }
        if let Some(v) = get("MLFLOW_TRACKING_USERNAME") {
            self.mlflow.username = Some(v);
        }
        if let Some(v) = get("MLFLOW_TRACKING_PASSWORD") {
            self.mlflow.password = Some(Secret::new(v));
        }
        if let Some(v) = get("MLFLOW_TRACKING_SERVER_CERT_PATH") {
            self.mlflow.ca_cert = Some(PathBuf::from(v));
        }
        if let Some(v) = get("MLFLOW_TRACKING_INSECURE_TLS") {
            self.mlflow.insecure_tls =
                matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes");
        }
    }

    /// Checks every value and reports all problems at once.
    pub fn validate(&self) -> Result<Addrs, ConfigError> {
        let mut errors = Vec::new();
        let mut addr = |key: &str, value: &str| match value.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                errors.push(format!(
                    "{key}: '{value}' is not a host:port socket address"
                ));
                None
            }
        };
        let grpc = addr("server.otlp_grpc_addr", &self.server.otlp_grpc_addr);
        let http = addr("server.otlp_http_addr", &self.server.otlp_http_addr);
        let api = addr("server.api_addr", &self.server.api_addr);

        match reqwest::Url::parse(&self.mlflow.tracking_uri) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            Ok(u) => errors.push(format!(
                "mlflow.tracking_uri: scheme '{}' is not supported (use http or https; \
                 databricks and file stores do not accept OTLP spans)",
                u.scheme()
            )),
            Err(e) => errors.push(format!(
                "mlflow.tracking_uri: '{}' is not a URL: {e}",
                self.mlflow.tracking_uri
            )),
        }
        if let Some(id) = &self.mlflow.experiment_id
            && !is_experiment_id(id)
        {
            errors.push(format!(
                "mlflow.experiment_id: '{id}' is not a numeric experiment id"
            ));
        }
        if let Some(name) = &self.mlflow.experiment_name
            && (name.trim().is_empty() || name.chars().count() > 500)
        {
            errors.push("mlflow.experiment_name: must be 1 to 500 characters".into());
        }
        if let Some(path) = &self.mlflow.ca_cert
            && let Err(e) = std::fs::read(path)
        {
            errors.push(format!(
                "mlflow.ca_cert: cannot read {}: {e}",
                path.display()
            ));
        }
        if self.mlflow.username.is_some() != self.mlflow.password.is_some() {
            errors.push(
                "mlflow.username and mlflow.password: set both or neither \
                 (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)"
                    .into(),
            );
        }
        let positive: [(&str, usize); 13] = [
            ("feedback.max_pending", self.feedback.max_pending),
            ("feedback.max_body_bytes", self.feedback.max_body_bytes),
            ("feedback.index_capacity", self.feedback.index_capacity),
            (
                "receiver.max_message_bytes",
                self.receiver.max_message_bytes,
            ),
            (
                "receiver.max_decompressed_bytes",
                self.receiver.max_decompressed_bytes,
            ),
            (
                "receiver.max_inflight_requests",
                self.receiver.max_inflight_requests,
            ),
            ("batch.max_spans", self.batch.max_spans),
            ("batch.max_bytes", self.batch.max_bytes),
            ("queue.max_trace_infos", self.queue.max_trace_infos),
            ("mlflow.export_concurrency", self.mlflow.export_concurrency),
            (
                "mlflow.trace_info_concurrency",
                self.mlflow.trace_info_concurrency,
            ),
            (
                "mlflow.trace_info_pipeline_depth",
                self.mlflow.trace_info_pipeline_depth,
            ),
            ("traces.max_pending", self.traces.max_pending),
        ];
        for (key, value) in positive {
            if value == 0 {
                errors.push(format!("{key}: must be greater than 0"));
            }
        }
        if self.receiver.ingest_concurrency == Some(0) {
            errors.push("receiver.ingest_concurrency: must be greater than 0 (or unset)".into());
        }
        if self.queue.max_bytes < self.receiver.max_decompressed_bytes {
            errors.push(format!(
                "queue.max_bytes ({}) must be at least receiver.max_decompressed_bytes ({}), \
                 or the largest accepted request could never be queued",
                self.queue.max_bytes, self.receiver.max_decompressed_bytes
            ));
        }
        if self.spool.max_disk_bytes < self.receiver.max_decompressed_bytes as u64 {
            errors.push(
                "spool.max_disk_bytes must be at least receiver.max_decompressed_bytes, or the \
                 largest accepted request could never be spooled"
                    .into(),
            );
        }
        if self.spool.segment_bytes == 0 {
            errors.push("spool.segment_bytes: must be greater than 0".into());
        }
        if self.spool.fsync_interval.is_zero() {
            errors.push("spool.fsync_interval: must be greater than 0s".into());
        }
        if self.queue.max_bytes > u32::MAX as usize {
            errors.push(format!("queue.max_bytes: at most {} bytes", u32::MAX));
        }
        if self.receiver.max_decompressed_bytes < self.receiver.max_message_bytes {
            errors.push(
                "receiver.max_decompressed_bytes must be at least receiver.max_message_bytes"
                    .into(),
            );
        }
        if self.receiver.max_inflight_decompressed_bytes < self.receiver.max_decompressed_bytes {
            errors.push(
                "receiver.max_inflight_decompressed_bytes must be at least \
                 receiver.max_decompressed_bytes, or the largest accepted request could never \
                 be decoded"
                    .into(),
            );
        }
        if self.receiver.max_decompressed_bytes > u32::MAX as usize {
            errors.push(format!(
                "receiver.max_decompressed_bytes: at most {} bytes",
                u32::MAX
            ));
        }
        let nesting = MIN_NESTING_DEPTH..=crate::otlp::schema::HARD_MAX_NESTING;
        if !nesting.contains(&self.receiver.max_nesting_depth) {
            errors.push(format!(
                "receiver.max_nesting_depth: must be from {} to {}",
                nesting.start(),
                nesting.end()
            ));
        }
        for (name, d) in [
            ("batch.timeout", self.batch.timeout),
            ("mlflow.request_timeout", self.mlflow.request_timeout),
            ("retry.initial_backoff", self.retry.initial_backoff),
            ("mlflow.health_interval", self.mlflow.health_interval),
            ("feedback.pending_ttl", self.feedback.pending_ttl),
            ("feedback.retry_interval", self.feedback.retry_interval),
        ] {
            if d.is_zero() {
                errors.push(format!("{name}: must be greater than 0s"));
            }
        }
        if self.retry.max_backoff < self.retry.initial_backoff {
            errors.push("retry.max_backoff must be at least retry.initial_backoff".into());
        }
        for (i, rule) in self.routing.rules.iter().enumerate() {
            let key = format!("routing.rules[{i}]");
            if rule.service_name.is_empty() {
                errors.push(format!("{key}.service_name: must not be empty"));
            }
            match (&rule.experiment_id, &rule.experiment_name) {
                (Some(id), None) if !is_experiment_id(id) => errors.push(format!(
                    "{key}.experiment_id: '{id}' is not a numeric experiment id"
                )),
                (Some(_), None) => {}
                (None, Some(name)) if name.trim().is_empty() => {
                    errors.push(format!("{key}.experiment_name: must not be empty"))
                }
                (None, Some(_)) => {}
                _ => errors.push(format!(
                    "{key}: set exactly one of experiment_id and experiment_name"
                )),
            }
        }
        for (i, rule) in self.mapping.rules.iter().enumerate() {
            if let Err(e) = rule.target.parse::<Target>() {
                errors.push(format!("mapping.rules[{i}].target: {e}"));
            }
        }
        for (key, _) in self
            .mapping
            .static_metadata
            .iter()
            .chain(self.mapping.static_tags.iter())
        {
            if !crate::map::limits::is_valid_key(key) {
                errors.push(format!(
                    "mapping static key '{key}': MLflow keys are 1-250 characters of letters, \
                     digits, '_', '-', '.', '/', ':' and spaces"
                ));
            }
        }
        check_static(&self.mapping.static_tags, &mut errors);
        if self.feedback.rate_limit_per_second.is_nan() || self.feedback.rate_limit_per_second < 0.0
        {
            errors.push("feedback.rate_limit_per_second: must be 0 (off) or more".into());
        }
        if let Some(path) = &self.feedback.tokens_file
            && let Err(e) = std::fs::metadata(path)
        {
            errors.push(format!(
                "feedback.tokens_file: cannot read {}: {e}",
                path.display()
            ));
        }
        if self
            .feedback
            .tokens
            .iter()
            .any(|t| t.expose().trim().is_empty())
        {
            errors.push("feedback.tokens: tokens must not be empty".into());
        }
        if let Some(dir) = &self.data_dir
            && dir.as_os_str().is_empty()
        {
            errors.push("data_dir: must not be empty".into());
        }
        if !["trace", "debug", "info", "warn", "error", "off"]
            .iter()
            .any(|l| self.log.level.to_ascii_lowercase().starts_with(l))
            && !self.log.level.contains('=')
        {
            errors.push(format!(
                "log.level: '{}' is not a level or tracing filter",
                self.log.level
            ));
        }

        match (grpc, http, api) {
            (Some(otlp_grpc), Some(otlp_http), Some(api)) if errors.is_empty() => Ok(Addrs {
                otlp_grpc,
                otlp_http,
                api,
            }),
            _ => Err(ConfigError::Invalid(errors)),
        }
    }

    /// The default experiment as the pipeline names it.
    pub fn default_experiment(&self) -> crate::vocab::ExperimentRef {
        use crate::vocab::ExperimentRef;
        match (&self.mlflow.experiment_id, &self.mlflow.experiment_name) {
            (Some(id), _) => ExperimentRef::Id(id.clone()),
            (None, Some(name)) => ExperimentRef::Name(name.clone()),
            (None, None) => ExperimentRef::Id(DEFAULT_EXPERIMENT_ID.into()),
        }
    }
}

fn check_static(tags: &BTreeMap<String, String>, errors: &mut Vec<String>) {
    for (key, value) in tags {
        if value.chars().count() > crate::map::limits::MAX_TAG_VALUE_CHARS {
            errors.push(format!(
                "mapping.static_tags.{key}: longer than MLflow's {} character limit",
                crate::map::limits::MAX_TAG_VALUE_CHARS
            ));
        }
    }
}

/// MLflow experiment ids are integers (MLflow answers 400 to anything else).
pub fn is_experiment_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn defaults_are_valid_and_use_standard_ports() {
        let addrs = Config::default().validate().expect("defaults valid");
        assert_eq!(addrs.otlp_grpc.port(), 4317);
        assert_eq!(addrs.otlp_http.port(), 4318);
        assert_eq!(addrs.api.port(), 8080);
    }

    /// The configuration file the project ships (README: the reference of every key).
    fn shipped_config_path() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gateway.toml")
    }

    #[test]
    fn shipped_config_file_parses_and_matches_defaults() {
        let cfg = Config::from_file(&shipped_config_path()).expect("shipped config parses");
        cfg.validate().expect("shipped config valid");
        // Every value the file sets is the built-in default: the file is the reference, so a
        // default changed in code alone would make it lie.
        assert_eq!(format!("{cfg:#?}"), format!("{:#?}", Config::default()));
    }

    #[test]
    fn shipped_config_file_names_every_key() {
        let text = std::fs::read_to_string(shipped_config_path()).expect("shipped config readable");
        // Sections, and keys set or shown commented out (`# key = ...`, as optional ones are).
        let named: std::collections::HashSet<&str> = text
            .lines()
            .map(|line| line.trim_start().trim_start_matches('#').trim_start())
            .filter_map(|line| {
                let section = line.strip_prefix('[').and_then(|l| l.strip_suffix(']'));
                section.or_else(|| line.split_once(" = ").map(|(key, _)| key.trim()))
            })
            .collect();
        // The field names of every section, read from the defaults' Debug output.
        let debug = format!("{:#?}", Config::default());
        let missing: Vec<&str> = debug
            .lines()
            .filter_map(|line| line.trim_start().split_once(": ").map(|(key, _)| key))
            .filter(|key| key.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            .filter(|key| !named.contains(key))
            .collect();
        assert!(
            missing.is_empty(),
            "keys not in config/gateway.toml: {missing:?}"
        );
    }

    #[test]
    fn spool_compression_takes_zstd_or_none_and_names_the_choices_otherwise() {
        let cfg = Config::from_toml("[spool]\ncompression = \"none\"\n", Path::new("x.toml"));
        assert_eq!(cfg.unwrap().spool.compression, SpoolCompression::None);
        let err = Config::from_toml("[spool]\ncompression = \"lz4\"\n", Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("zstd") && err.contains("none"), "{err}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = Config::from_toml("[batch]\nmax_span = 3\n", Path::new("x.toml")).unwrap_err();
        assert!(err.to_string().contains("max_span"), "{err}");
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let toml = r#"
            [server]
            otlp_grpc_addr = "nope"
            [mlflow]
            tracking_uri = "file:///tmp/mlruns"
            experiment_id = "abc"
            username = "u"
            [receiver]
            ingest_concurrency = 0
            [batch]
            max_spans = 0
        "#;
        let cfg = Config::from_toml(toml, Path::new("x.toml")).unwrap();
        let ConfigError::Invalid(errors) = cfg.validate().unwrap_err() else {
            panic!("expected Invalid")
        };
        assert_eq!(errors.len(), 6, "{errors:#?}");
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("receiver.ingest_concurrency")),
            "{errors:#?}"
        );
    }

    #[test]
    fn ingest_concurrency_leaves_a_cpu_to_delivery() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(default_ingest_concurrency(), cpus.saturating_sub(1).max(1));
    }

    #[test]
    fn mlflow_env_overrides_file_values() {
        let mut cfg = Config::from_toml(
            "[mlflow]\ntracking_uri = \"http://file:1\"\nexperiment_id = \"3\"\n",
            Path::new("x.toml"),
        )
        .unwrap();
        cfg.apply_mlflow_env(&env(&[
            ("MLFLOW_TRACKING_URI", "http://env:5000"),
            ("MLFLOW_EXPERIMENT_ID", "7"),
            ("MLFLOW_TRACKING_TOKEN", "s3cret"),
        ]));
        assert_eq!(cfg.mlflow.tracking_uri, "http://env:5000");
        assert_eq!(cfg.mlflow.experiment_id.as_deref(), Some("7"));
        assert!(!format!("{cfg:?}").contains("s3cret"), "secret leaked");
    }

    #[test]
    fn default_experiment_prefers_id_then_name_then_zero() {
        use crate::vocab::ExperimentRef;
        let mut cfg = Config::default();
        assert_eq!(cfg.default_experiment(), ExperimentRef::Id("0".into()));
        cfg.mlflow.experiment_name = Some("chat".into());
        assert_eq!(cfg.default_experiment(), ExperimentRef::Name("chat".into()));
        cfg.mlflow.experiment_id = Some("4".into());
        assert_eq!(cfg.default_experiment(), ExperimentRef::Id("4".into()));
    }
}
