//! The configuration's sections, one struct each; their doc comments are the reference that
//! `config/gateway.toml` mirrors key by key.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::defaults::*;
use super::secret::Secret;

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
    /// A plain-HTTP listener serving only `/healthz` and `/readyz`, for probes that cannot
    /// present a client certificate when mTLS is on (kubelet's). Off unless set; keep it off
    /// the network (a NetworkPolicy that admits nobody to it). Env GATEWAY_PROBE_ADDR.
    pub probe_addr: Option<String>,
    /// TLS on all three listeners; absent: plaintext.
    pub tls: Option<super::access::TlsConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            otlp_grpc_addr: DEFAULT_OTLP_GRPC_ADDR.into(),
            otlp_http_addr: DEFAULT_OTLP_HTTP_ADDR.into(),
            api_addr: DEFAULT_API_ADDR.into(),
            probe_addr: None,
            tls: None,
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
    /// Write a TraceInfo for a trace whose root never came (from the spans that did, tagged),
    /// so MLflow does not show it in progress forever.
    pub finalize_without_root: bool,
}

impl Default for TracesConfig {
    fn default() -> Self {
        Self {
            root_wait: DEFAULT_ROOT_WAIT,
            max_pending: DEFAULT_MAX_PENDING_TRACES,
            finalize_without_root: DEFAULT_FINALIZE_WITHOUT_ROOT,
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

/// When appended records are fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// Before the request is acknowledged (group commit): survives power loss.
    Always,
    /// Every `spool.fsync_interval`: survives a process crash; power loss may cost the last
    /// interval.
    Interval,
    /// Left to the OS: survives a process crash only.
    Never,
}

/// How the durable spool stores records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SpoolCompression {
    /// zstd, fast level -3, per record: a fifth to a tenth of the bytes to write, sync and
    /// keep on disk for typical OTLP, so the same `max_disk_bytes` rides out a longer MLflow
    /// outage; a record that would not shrink is stored as is.
    Zstd,
    /// As encoded.
    None,
}
