//! The MLflow REST client: span ingest, TraceInfo, experiments, health.
//!
//! Two connection pools. `/v1/traces` and StartTraceV3 reuse connections; the other Flask-served
//! `/api/...` routes (feedback, experiments, health) get a fresh connection per call, because on a
//! reused connection every reply of those routes arrives ~40 ms late (delayed ACK between its two
//! TCP writes). StartTraceV3 is the exception because it is the one REST
//! call made per trace: with several calls in flight the 40 ms is hidden (MLflow's StartTraceV3
//! rate was the same kept-alive and fresh), while a fresh connection per trace cost the gateway
//! about a quarter of its CPU at 1000 traces/s (BENCHMARKS.md, "Decisions").
//!
//! After a payload call times out, MLflow may be frozen (a GC or VM pause, a stopped process, a
//! saturated worker) with the request still waiting in its socket. Resending the payload on every
//! retry would leave it a pile of stale copies to work through once it wakes (each is written to
//! its database again), so until it answers again payload calls first probe `/health`, one probe
//! at a time (`StallGate`).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use base64::Engine;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue, USER_AGENT};
use reqwest::{Client, Url};

use super::error::MlflowError;
use super::pipelined::{self, PipelinedConnection, Target};
use super::trace_info::TraceInfoConnection;

use crate::config::{MlflowConfig, Secret, TenantMlflowIdentity};
use stall::StallGate;

mod rest;
mod stall;

pub use rest::Experiment;

/// Errors building the client (bad URI or TLS setup).
#[derive(Debug, thiserror::Error)]
#[error("cannot build the MLflow client: {0}")]
pub struct ClientBuildError(String);

/// A cheap-to-clone handle to one MLflow tracking server.
#[derive(Clone)]
pub struct MlflowClient {
    base: Url,
    spans_url: Url,
    start_trace_url: Url,
    /// Kept-alive connections: `/v1/traces` and StartTraceV3.
    pooled: Client,
    rest: Client,
    /// Where TraceInfo writers open connections of their own, if they can (`pipelined`).
    start_trace_target: Option<Target>,
    timeout: Duration,
    stall: Arc<StallGate>,
    /// The tenant whose own identity this client carries (`for_tenant`); None: the gateway's.
    tenant: Option<Arc<str>>,
}

/// What goes in `Authorization`.
enum Credentials<'a> {
    None,
    Bearer(&'a Secret),
    Basic(&'a str, &'a Secret),
}

impl Credentials<'_> {
    fn header(&self) -> Result<Option<HeaderValue>, ClientBuildError> {
        let text = match self {
            Credentials::None => return Ok(None),
            Credentials::Bearer(token) => format!("Bearer {}", token.expose()),
            Credentials::Basic(user, password) => {
                let pair = base64::engine::general_purpose::STANDARD
                    .encode(format!("{user}:{}", password.expose()));
                format!("Basic {pair}")
            }
        };
        let mut v = HeaderValue::from_str(&text)
            .map_err(|_| ClientBuildError("MLflow credentials are not valid in a header".into()))?;
        v.set_sensitive(true);
        Ok(Some(v))
    }
}

/// Connecting takes a round trip; longer than this means the host is not there.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

const USER_AGENT_VALUE: &str = concat!("mlflow-otlp-gateway/", env!("CARGO_PKG_VERSION"));

impl std::fmt::Debug for MlflowClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MlflowClient")
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

impl MlflowClient {
    /// A client with the gateway's own identity (`mlflow.token`, or `username`/`password`).
    pub fn new(cfg: &MlflowConfig) -> Result<Self, ClientBuildError> {
        let identity = match (&cfg.username, &cfg.password, &cfg.token) {
            (Some(user), Some(password), _) => Credentials::Basic(user, password),
            (_, _, Some(token)) => Credentials::Bearer(token),
            _ => Credentials::None,
        };
        Self::build(cfg, identity, Arc::default(), None)
    }

    /// The same server under a tenant's own identity, sharing this client's stall gate (a
    /// frozen MLflow is frozen for every identity). Its 401s and 403s are `Denied`: permanent
    /// for that tenant's data, never a readiness problem of the gateway.
    pub fn for_tenant(
        &self,
        cfg: &MlflowConfig,
        tenant: &str,
        identity: &TenantMlflowIdentity,
    ) -> Result<Self, ClientBuildError> {
        let credentials = match identity {
            TenantMlflowIdentity::Token(token) => Credentials::Bearer(token),
            TenantMlflowIdentity::Basic { username, password } => {
                Credentials::Basic(username, password)
            }
            TenantMlflowIdentity::Gateway | TenantMlflowIdentity::Missing(_) => {
                return Ok(self.clone());
            }
        };
        Self::build(
            cfg,
            credentials,
            self.stall.clone(),
            Some(Arc::from(tenant)),
        )
    }

    fn build(
        cfg: &MlflowConfig,
        credentials: Credentials<'_>,
        stall: Arc<StallGate>,
        tenant: Option<Arc<str>>,
    ) -> Result<Self, ClientBuildError> {
        // reqwest is built without a default crypto provider; ring is installed once here.
        // An Err only means one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut base =
            Url::parse(&cfg.tracking_uri).map_err(|e| ClientBuildError(e.to_string()))?;
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let mut headers = HeaderMap::new();
        if let Some(v) = credentials.header()? {
            headers.insert(AUTHORIZATION, v);
        }
        let mut roots = Vec::new();
        if let Some(path) = &cfg.ca_cert {
            let pem = std::fs::read(path)
                .map_err(|e| ClientBuildError(format!("ca_cert {}: {e}", path.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| ClientBuildError(format!("ca_cert {}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(ClientBuildError(format!(
                    "ca_cert {}: no PEM certificates found",
                    path.display()
                )));
            }
            roots = certs;
        }
        let connect_timeout = cfg.request_timeout.min(MAX_CONNECT_TIMEOUT);
        let build = |pool_idle: usize| {
            let mut b = Client::builder();
            for cert in &roots {
                b = b.add_root_certificate(cert.clone());
            }
            b.tls_danger_accept_invalid_certs(cfg.insecure_tls)
                .default_headers(headers.clone())
                .timeout(cfg.request_timeout)
                .connect_timeout(connect_timeout)
                .pool_max_idle_per_host(pool_idle)
                .tcp_nodelay(true)
                .user_agent(USER_AGENT_VALUE)
                .build()
                .map_err(|e| ClientBuildError(e.to_string()))
        };
        let join = |path: &str| {
            base.join(path)
                .map_err(|e| ClientBuildError(format!("{path}: {e}")))
        };
        let start_trace_url = join("api/3.0/mlflow/traces")?;
        let mut direct_headers = headers.clone();
        direct_headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
        Ok(Self {
            spans_url: join("v1/traces")?,
            start_trace_target: Target::for_url(
                &start_trace_url,
                direct_headers,
                connect_timeout,
                pipelined::proxy_configured(),
            ),
            start_trace_url,
            base,
            pooled: build(usize::MAX)?,
            rest: build(0)?,
            timeout: cfg.request_timeout,
            stall,
            tenant,
        })
    }

    /// The tenant whose own identity this client carries, if any.
    pub fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    /// A call's outcome as this identity sees it: under a tenant's identity, MLflow refusing
    /// the credentials or the permission is that tenant's (`Denied`).
    pub(crate) fn scoped<T>(&self, r: Result<T, MlflowError>) -> Result<T, MlflowError> {
        match r {
            Err(MlflowError::Status {
                status: status @ (401 | 403),
                message,
                ..
            }) if self.tenant.is_some() => Err(MlflowError::Denied { status, message }),
            other => other,
        }
    }

    pub fn base_url(&self) -> &Url {
        &self.base
    }

    fn url(&self, path: &str) -> Url {
        // `path` is a constant relative path; joining cannot fail for those.
        self.base
            .join(path.trim_start_matches('/'))
            .unwrap_or_else(|_| self.base.clone())
    }

    /// What one TraceInfo writer sends StartTraceV3 through: a connection of its own, with up
    /// to `pipeline_depth` calls written at once, where that behaves like the shared pool (plain
    /// HTTP, no proxy; see `pipelined`), else the pool.
    pub fn trace_info_connection(&self, pipeline_depth: usize) -> TraceInfoConnection {
        TraceInfoConnection {
            own: self
                .start_trace_target
                .clone()
                .map(|t| tokio::sync::Mutex::new(PipelinedConnection::new(t, pipeline_depth))),
            client: self.clone(),
            pipeline_depth,
            last_call_micros: AtomicU64::new(0),
        }
    }
}

#[cfg(test)]
mod tests;
