//! mlflow-otlp-gateway: receives OpenTelemetry spans (OTLP gRPC and HTTP) and turns them into
//! complete MLflow traces, with the TraceInfo MLflow's own SDK would write.
//!
//! Data flow: `receive` (limits, decompression, decoding) -> `pipeline::ingest` (validate,
//! route, map, admit) -> `pipeline::batcher` -> `pipeline::export` (spans to `/v1/traces`, then
//! StartTraceV3 per delivered root). `ops` serves health, readiness and metrics.

pub mod config;
pub mod feedback;
pub mod map;
pub mod mlflow;
pub mod ops;
pub mod otlp;
pub mod pipeline;
pub mod receive;
pub mod spool;
pub mod vocab;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::feedback::auth::Authenticator;
use crate::feedback::service::FeedbackService;
use crate::feedback::store::FeedbackStore;
use crate::mlflow::MlflowClient;
use crate::mlflow::experiments::Experiments;
use crate::mlflow::retry::RetryPolicy;
use crate::ops::health::Health;
use crate::pipeline::backlog::SpanBacklog;
use crate::pipeline::export::{SpanExporter, run_span_workers, run_trace_info_workers};
use crate::pipeline::ingest::Ingest;
use crate::pipeline::request_ids::RequestIdIndex;
use crate::pipeline::traces::TraceTracker;
use crate::spool::Spool;
use crate::spool::deadletter::DeadLetters;
use crate::spool::disk::{LogOptions, SegmentLog};
use crate::vocab::ExperimentRef;

/// How often expired traces-awaiting-root are swept, gauges and spool readiness refreshed.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);
/// How often a fully delivered active spool segment is sealed so its file can be removed.
const RECLAIM_INTERVAL: Duration = Duration::from_secs(10);
/// How often histogram samples are drained into their buckets when no scrape does it: the
/// exporter's own default is 5 s; 10 s holds ~11k samples (~200 KiB) at 10k spans/s.
const METRICS_UPKEEP_INTERVAL: Duration = Duration::from_secs(10);

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Client(#[from] mlflow::client::ClientBuildError),
    #[error("cannot listen on {addr} ({name}): {source}")]
    Bind {
        name: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read feedback tokens file {path}: {source}")]
    TokensFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What was left when shutdown finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Whether everything accepted was handed to MLflow within the deadline.
    pub drained: bool,
    /// Encoded span bytes still undelivered at the deadline.
    pub undelivered_bytes: usize,
}

fn open_spool(config: &Config) -> Result<Spool, StartError> {
    let Some(dir) = &config.data_dir else {
        tracing::warn!(
            "no data_dir: accepted spans are queued in memory only and lost if the process dies"
        );
        return Ok(Spool::memory(config.queue.max_bytes));
    };
    let spool_dir = dir.join("spool");
    let (log, report) = SegmentLog::open(
        &spool_dir,
        LogOptions {
            fsync: config.spool.fsync,
            fsync_interval: config.spool.fsync_interval,
            segment_bytes: config.spool.segment_bytes,
            max_disk_bytes: config.spool.max_disk_bytes,
            compression: config.spool.compression,
        },
    )
    .map_err(|source| StartError::DataDir {
        path: spool_dir.clone(),
        source,
    })?;
    if report.records > 0 || report.damaged_regions > 0 {
        tracing::info!(
            records = report.records,
            segments = report.segments,
            bytes = report.bytes,
            damaged_regions = report.damaged_regions,
            damaged_bytes = report.damaged_bytes,
            "replaying spool from an earlier run"
        );
    }
    Ok(Spool::disk(log, config.queue.max_bytes))
}

fn build_feedback(
    config: &Config,
    request_ids: Arc<RequestIdIndex>,
    client: MlflowClient,
) -> Result<FeedbackService, StartError> {
    let mut tokens = config.feedback.tokens.clone();
    if let Some(path) = &config.feedback.tokens_file {
        tokens.extend(feedback::auth::read_tokens_file(path).map_err(|source| {
            StartError::TokensFile {
                path: path.clone(),
                source,
            }
        })?);
    }
    let (store, loaded) =
        FeedbackStore::open(config.data_dir.as_deref()).map_err(|source| StartError::DataDir {
            path: config.data_dir.clone().unwrap_or_default(),
            source,
        })?;
    if store.is_durable() {
        if loaded.records > 0 {
            tracing::info!(
                records = loaded.records,
                pending = loaded.pending,
                unreadable = loaded.unreadable,
                "loaded feedback records"
            );
        }
    } else {
        tracing::warn!("no data_dir: pending feedback is kept in memory and lost on restart");
    }
    let mut known = vec![config.default_experiment()];
    for rule in &config.routing.rules {
        if let Some(id) = &rule.experiment_id {
            known.push(ExperimentRef::Id(id.clone()));
        }
    }
    if tokens.is_empty() {
        tracing::warn!(
            "feedback API has no tokens configured: it accepts unauthenticated requests"
        );
    }
    Ok(FeedbackService::new(
        config.feedback.clone(),
        store,
        request_ids,
        Authenticator::new(&tokens),
        client,
        known,
    ))
}

/// A started gateway. Dropping it without `shutdown` aborts its tasks.
pub struct Gateway {
    pub otlp_grpc_addr: SocketAddr,
    pub otlp_http_addr: SocketAddr,
    pub api_addr: SocketAddr,
    health: Arc<Health>,
    stop_receivers: CancellationToken,
    spool: Spool,
    stop_api: CancellationToken,
    receivers: Vec<JoinHandle<()>>,
    pipeline: Option<JoinHandle<()>>,
    api: Option<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
    shutdown_timeout: Duration,
}

async fn bind(name: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { name, addr, source })
}

impl Gateway {
    /// Validates `config`, binds every listener and starts the pipeline.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        let addrs = config.validate()?;
        if let Some(dir) = &config.data_dir {
            std::fs::create_dir_all(dir).map_err(|source| StartError::DataDir {
                path: dir.clone(),
                source,
            })?;
        }
        let metrics = ops::metrics::handle();
        let client = MlflowClient::new(&config.mlflow)?;
        let experiments =
            Experiments::new(client.clone(), config.mlflow.create_missing_experiments);
        let health = Arc::new(Health::new());
        let policy = RetryPolicy::from(&config.retry);
        let tracker = Arc::new(TraceTracker::new(
            config.traces.max_pending,
            config.traces.root_wait,
        ));
        let spool = open_spool(&config)?;
        let request_ids = Arc::new(RequestIdIndex::new(config.feedback.index_capacity));
        let ingest = Arc::new(Ingest::new(
            &config,
            tracker.clone(),
            experiments.clone(),
            spool.clone(),
            request_ids.clone(),
        ));
        let feedback = Arc::new(build_feedback(&config, request_ids, client.clone())?);
        let decode_limits = receive::decode::DecodeLimits {
            max_decompressed_bytes: config.receiver.max_decompressed_bytes,
            max_nesting_depth: config.receiver.max_nesting_depth,
            budget: receive::budget::DecodeBudget::new(
                config.receiver.max_inflight_decompressed_bytes,
            ),
            retry_after: config.receiver.retry_after,
        };

        // Pipeline: batcher (the spool's reader) -> span workers -> TraceInfo workers. Each stage
        // ends when the one before it has ended and dropped its sender, so shutdown (closing the
        // spool) drains front to back.
        let dead_letters = Arc::new(DeadLetters::new(config.data_dir.as_deref()).map_err(
            |source| StartError::DataDir {
                path: config.data_dir.clone().unwrap_or_default(),
                source,
            },
        )?);
        let (batches_tx, batches_rx) = mpsc::channel(config.mlflow.export_concurrency);
        let (infos_tx, infos_rx) = mpsc::channel(config.queue.max_trace_infos);
        let backlog = if config.mlflow.trace_info_first {
            SpanBacklog::writing_trace_info_first(config.mlflow.export_concurrency)
        } else {
            SpanBacklog::new(
                config.mlflow.export_concurrency,
                config.mlflow.max_incomplete_traces,
            )
        };
        let exporter = Arc::new(SpanExporter {
            client: client.clone(),
            experiments,
            policy: policy.clone(),
            trace_infos: infos_tx,
            health: health.clone(),
            dead_letters,
            backlog: backlog.clone(),
        });
        let batcher = tokio::spawn(pipeline::batcher::run(
            spool.clone(),
            batches_tx,
            config.batch.clone(),
            backlog.clone(),
        ));
        let spans = tokio::spawn(run_span_workers(
            exporter,
            batches_rx,
            config.mlflow.export_concurrency,
            backlog.clone(),
        ));
        let infos = tokio::spawn(run_trace_info_workers(
            client.clone(),
            policy,
            health.clone(),
            infos_rx,
            config.mlflow.trace_info_concurrency,
            config.mlflow.trace_info_pipeline_depth,
            backlog,
        ));
        let pipeline = tokio::spawn(async move {
            let _ = batcher.await;
            let _ = spans.await;
            let _ = infos.await;
        });

        let grpc_listener = bind("otlp_grpc", addrs.otlp_grpc).await?;
        let http_listener = bind("otlp_http", addrs.otlp_http).await?;
        let api_listener = bind("api", addrs.api).await?;
        let local = |l: &TcpListener, fallback| l.local_addr().unwrap_or(fallback);
        let otlp_grpc_addr = local(&grpc_listener, addrs.otlp_grpc);
        let otlp_http_addr = local(&http_listener, addrs.otlp_http);
        let api_addr = local(&api_listener, addrs.api);

        let stop_receivers = CancellationToken::new();
        let stop_api = CancellationToken::new();
        let grpc = {
            let service = receive::grpc::GrpcReceiver::service(
                ingest.clone(),
                config.receiver.max_message_bytes,
                decode_limits.clone(),
            );
            let feedback_service = feedback::grpc::GrpcFeedback::server(feedback.clone());
            let stop = stop_receivers.clone();
            tokio::spawn(async move {
                // Without TCP_NODELAY, gRPC's trailers wait for the client's delayed ACK (~40 ms).
                let incoming = tonic::transport::server::TcpIncoming::from(grpc_listener)
                    .with_nodelay(Some(true));
                if let Err(e) = tonic::transport::Server::builder()
                    .add_service(service)
                    .add_service(feedback_service)
                    .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                    .await
                {
                    tracing::error!(error = %e, "OTLP gRPC server failed");
                }
            })
        };
        let http = {
            let router = receive::http::router(receive::http::HttpReceiver {
                ingest: ingest.clone(),
                max_message_bytes: config.receiver.max_message_bytes,
                limits: decode_limits.clone(),
            });
            let stop = stop_receivers.clone();
            tokio::spawn(async move {
                let listener = http_listener.tap_io(|tcp| {
                    let _ = tcp.set_nodelay(true);
                });
                if let Err(e) = axum::serve(listener, router)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await
                {
                    tracing::error!(error = %e, "OTLP HTTP server failed");
                }
            })
        };
        let api = {
            let router = ops::api::router(ops::api::ApiState {
                health: health.clone(),
                metrics,
            })
            .merge(feedback::http::router(feedback.clone()));
            let stop = stop_api.clone();
            tokio::spawn(async move {
                let service = router.into_make_service_with_connect_info::<SocketAddr>();
                if let Err(e) = axum::serve(api_listener, service)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await
                {
                    tracing::error!(error = %e, "API server failed");
                }
            })
        };

        let checker = {
            let health = health.clone();
            let stop = stop_api.clone();
            let interval = config.mlflow.health_interval;
            tokio::spawn(async move {
                loop {
                    let problem = match client.health().await {
                        Err(e) => Some(format!(
                            "MLflow at {} does not answer: {e}",
                            client.base_url()
                        )),
                        Ok(()) => match client.check_auth().await {
                            Err(e) if e.class() == mlflow::ErrorClass::Auth => {
                                Some(format!("MLflow refused the gateway's credentials: {e}"))
                            }
                            _ => None,
                        },
                    };
                    health.set_mlflow_problem(problem);
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(interval) => {}
                    }
                }
            })
        };
        let housekeeping = {
            let stop = stop_api.clone();
            let spool = spool.clone();
            let metrics_handle = ops::metrics::handle();
            let mut last_reclaim = std::time::Instant::now();
            let mut last_upkeep = std::time::Instant::now();
            tokio::spawn(async move {
                loop {
                    let forgotten = tracker.sweep().without_root;
                    if forgotten > 0 {
                        metrics::counter!("gateway_traces_without_root_total")
                            .increment(forgotten as u64);
                        tracing::info!(forgotten, "traces expired without their root span");
                    }
                    metrics::gauge!("gateway_traces_awaiting_root").set(tracker.awaiting() as f64);
                    let stats = spool.stats();
                    metrics::gauge!("gateway_queue_bytes").set(stats.memory_bytes as f64);
                    metrics::gauge!("gateway_spool_disk_bytes").set(stats.disk_bytes as f64);
                    metrics::gauge!("gateway_spool_records").set(stats.records as f64);
                    let age = stats
                        .oldest_ms
                        .map(|t| vocab::now_ms().saturating_sub(t) as f64 / 1000.0)
                        .unwrap_or(0.0);
                    metrics::gauge!("gateway_spool_oldest_record_age_seconds").set(age);
                    // The recorder keeps every histogram sample until it is drained; nothing
                    // else drains it while no one scrapes /metrics (a sidecar without
                    // Prometheus), and RSS grew ~27 KiB/s at 10k spans/s.
                    if last_upkeep.elapsed() >= METRICS_UPKEEP_INTERVAL {
                        metrics_handle.run_upkeep();
                        last_upkeep = std::time::Instant::now();
                    }

                    if last_reclaim.elapsed() >= RECLAIM_INTERVAL {
                        spool.reclaim().await;
                        last_reclaim = std::time::Instant::now();
                    }
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(HOUSEKEEPING_INTERVAL) => {}
                    }
                }
            })
        };

        let feedback_worker = tokio::spawn(feedback.clone().run(stop_api.clone()));

        {
            // Not ready when one more large request could not be taken, so Kubernetes routes
            // elsewhere before clients see refusals.
            let spool = spool.clone();
            let max_memory = config.queue.max_bytes as u64;
            let max_disk = config.spool.max_disk_bytes;
            let headroom = config.receiver.max_decompressed_bytes as u64;
            health.set_spool_check(Box::new(move || {
                let stats = spool.stats();
                if spool.is_durable() {
                    (stats.disk_bytes + headroom > max_disk).then(|| {
                        format!(
                            "spool disk nearly full ({} of {max_disk} bytes)",
                            stats.disk_bytes
                        )
                    })
                } else {
                    (stats.memory_bytes as u64 + headroom > max_memory).then(|| {
                        format!(
                            "memory queue nearly full ({} of {max_memory} bytes)",
                            stats.memory_bytes
                        )
                    })
                }
            }));
        }
        health.set_listeners_up(true);
        tracing::info!(
            otlp_grpc = %otlp_grpc_addr,
            otlp_http = %otlp_http_addr,
            api = %api_addr,
            mlflow = %config.mlflow.tracking_uri,
            default_experiment = %config.default_experiment(),
            "gateway started"
        );
        Ok(Self {
            otlp_grpc_addr,
            otlp_http_addr,
            api_addr,
            health,
            stop_receivers,
            spool,
            stop_api,
            receivers: vec![grpc, http],
            pipeline: Some(pipeline),
            api: Some(api),
            background: vec![checker, housekeeping, feedback_worker],
            shutdown_timeout: config.shutdown_timeout,
        })
    }

    /// Readiness as `/readyz` reports it.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        self.health.readiness()
    }

    /// Stops accepting, delivers what is queued within the shutdown deadline, then stops.
    pub async fn shutdown(mut self) -> ShutdownReport {
        tracing::info!(timeout = ?self.shutdown_timeout, "shutting down: draining to MLflow");
        self.health.set_draining();
        self.stop_receivers.cancel();
        let deadline = tokio::time::Instant::now() + self.shutdown_timeout;
        for r in self.receivers.drain(..) {
            let _ = tokio::time::timeout_at(deadline, r).await;
        }
        self.spool.close().await;
        let drained = match self.pipeline.take() {
            Some(p) => {
                let abort = p.abort_handle();
                match tokio::time::timeout_at(deadline, p).await {
                    Ok(_) => true,
                    Err(_) => {
                        abort.abort();
                        false
                    }
                }
            }
            None => true,
        };
        self.spool.reclaim().await;
        let stats = self.spool.stats();
        let undelivered_bytes = if drained {
            0
        } else {
            stats.memory_bytes.max(stats.disk_bytes as usize)
        };
        if drained {
            tracing::info!("drained: everything accepted was delivered to MLflow");
        } else if self.spool.is_durable() {
            tracing::warn!(
                records = stats.records,
                disk_bytes = stats.disk_bytes,
                "shutdown deadline passed; undelivered records stay in the spool for the next start"
            );
        } else {
            tracing::error!(
                undelivered_bytes,
                "shutdown deadline passed with spans or TraceInfos not delivered (memory mode: lost)"
            );
        }
        self.stop_api.cancel();
        if let Some(api) = self.api.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), api).await;
        }
        ShutdownReport {
            drained,
            undelivered_bytes,
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop_receivers.cancel();
        self.stop_api.cancel();
        for t in self
            .receivers
            .iter()
            .chain(self.background.iter())
            .chain(self.pipeline.iter())
            .chain(self.api.iter())
        {
            t.abort();
        }
    }
}
