//! The composition root: a `Gateway` built from its configuration, started, and shut down.
//! Building its parts is `build`, its listeners `servers`, its loops `background`.

mod background;
mod build;
mod servers;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::Tenants;
use crate::auth::tenants::TenantsError;
use crate::config::{self, Config};
use crate::map::traces::TraceTracker;
use crate::mlflow::experiments::Experiments;
use crate::mlflow::{self, Identities};
use crate::ops::api::ApiState;
use crate::ops::health::Health;
use crate::pipeline::ingest::{Ingest, Parts};
use crate::pipeline::request_ids::RequestIdIndex;
use crate::receive::grpc::GrpcReceiver;
use crate::receive::http::HttpReceiver;
use crate::spool::Spool;
use crate::tls::{ServerTls, TlsError};

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
    #[error(transparent)]
    Tenants(#[from] TenantsError),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
}

/// What was left when shutdown finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Whether everything accepted was handed to MLflow within the deadline.
    pub drained: bool,
    /// Encoded span bytes still undelivered at the deadline.
    pub undelivered_bytes: usize,
}

/// A started gateway. Dropping it without `shutdown` aborts its tasks.
pub struct Gateway {
    pub otlp_grpc_addr: SocketAddr,
    pub otlp_http_addr: SocketAddr,
    pub api_addr: SocketAddr,
    /// The plain probe port, when `server.probe_addr` is set.
    pub probe_addr: Option<SocketAddr>,
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
        let metrics = crate::ops::metrics::handle();
        let tenants = Arc::new(Tenants::from_config(&config)?);
        let tls = config
            .server
            .tls
            .as_ref()
            .map(ServerTls::load)
            .transpose()?
            .map(Arc::new);
        let identities = Identities::new(&config)?;
        let client = identities.gateway().clone();
        let experiments =
            Experiments::new(identities.clone(), config.mlflow.create_missing_experiments);
        let health = Arc::new(Health::new());
        let tracker = Arc::new(TraceTracker::new(
            config.traces.max_pending,
            config.traces.root_wait,
        ));
        let spool = build::open_spool(&config)?;
        let sampler = build::open_sampler(&config, &spool)?;
        let request_ids = Arc::new(RequestIdIndex::new(config.feedback.index_capacity));
        let ingest = Arc::new(Ingest::new(
            &config,
            tracker.clone(),
            Parts {
                experiments: experiments.clone(),
                tenants: tenants.clone(),
                spool: spool.clone(),
                request_ids: request_ids.clone(),
                sampler: sampler.clone(),
            },
        ));
        let feedback = Arc::new(build::build_feedback(
            &config,
            request_ids,
            tenants.clone(),
            identities.clone(),
            experiments.clone(),
            sampler.clone(),
        )?);
        let pipeline = build::start_pipeline(
            &config,
            &identities,
            tenants.clone(),
            experiments,
            &spool,
            &health,
            sampler.clone(),
        )?;

        let grpc_listener = servers::bind("otlp_grpc", addrs.otlp_grpc).await?;
        let http_listener = servers::bind("otlp_http", addrs.otlp_http).await?;
        let api_listener = servers::bind("api", addrs.api).await?;
        let probe_listener = match addrs.probe {
            Some(addr) => Some(servers::bind("probe", addr).await?),
            None => None,
        };
        let local = |l: &TcpListener, fallback| l.local_addr().unwrap_or(fallback);
        let otlp_grpc_addr = local(&grpc_listener, addrs.otlp_grpc);
        let otlp_http_addr = local(&http_listener, addrs.otlp_http);
        let api_addr = local(&api_listener, addrs.api);
        let probe_addr = probe_listener.as_ref().and_then(|l| l.local_addr().ok());

        let stop_receivers = CancellationToken::new();
        let stop_api = CancellationToken::new();
        let limits = build::decode_limits(&config);
        let grpc = servers::serve_grpc(
            grpc_listener,
            tls.clone(),
            GrpcReceiver::service(
                ingest.clone(),
                config.receiver.max_message_bytes,
                limits.clone(),
            ),
            feedback.clone(),
            stop_receivers.clone(),
        );
        let http = servers::serve_http(
            http_listener,
            tls.clone(),
            HttpReceiver {
                ingest: ingest.clone(),
                max_message_bytes: config.receiver.max_message_bytes,
                limits,
            },
            stop_receivers.clone(),
        );
        let api_state = ApiState {
            health: health.clone(),
            metrics,
        };
        let api = servers::serve_api(
            api_listener,
            tls.clone(),
            api_state.clone(),
            feedback.clone(),
            stop_api.clone(),
        );
        let mut background_tasks = vec![
            background::watch_credentials(tenants, tls.clone(), stop_api.clone()),
            background::watch_mlflow(
                client,
                health.clone(),
                config.mlflow.health_interval,
                stop_api.clone(),
            ),
            background::housekeeping(
                tracker,
                spool.clone(),
                config.traces.finalize_without_root.then(|| ingest.clone()),
                sampler,
                stop_api.clone(),
            ),
            tokio::spawn(feedback.run(stop_api.clone())),
        ];
        if let Some(listener) = probe_listener {
            background_tasks.push(servers::serve_probes(listener, api_state, stop_api.clone()));
        }
        health.set_spool_check(background::spool_room(
            spool.clone(),
            config.queue.max_bytes as u64,
            config.spool.max_disk_bytes,
            config.receiver.max_decompressed_bytes as u64,
        ));
        health.set_listeners_up(true);
        tracing::info!(
            otlp_grpc = %otlp_grpc_addr,
            otlp_http = %otlp_http_addr,
            api = %api_addr,
            tls = tls.is_some(),
            mtls = tls.as_ref().is_some_and(|t| t.requires_client_certs()),
            tenants = config.tenants.len(),
            auth_required = config.auth.required,
            mlflow = %config.mlflow.tracking_uri,
            default_experiment = %config.default_experiment(),
            "gateway started"
        );
        Ok(Self {
            otlp_grpc_addr,
            otlp_http_addr,
            api_addr,
            probe_addr,
            health,
            stop_receivers,
            spool,
            stop_api,
            receivers: vec![grpc, http],
            pipeline: Some(pipeline),
            api: Some(api),
            background: background_tasks,
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
