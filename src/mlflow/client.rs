//! The MLflow REST client: span ingest, TraceInfo, experiments, health.
//!
//! Two connection pools. `/v1/traces` and StartTraceV3 reuse connections; the other Flask-served
//! `/api/...` routes (feedback, experiments, health) get a fresh connection per call, because on a
//! reused connection every reply of those routes arrives ~40 ms late (delayed ACK between its two
//! TCP writes; mlflow-rest.md §0.11). StartTraceV3 is the exception because it is the one REST
//! call made per trace: with several calls in flight the 40 ms is hidden (MLflow's StartTraceV3
//! rate was the same kept-alive and fresh, 35 vs 35-38/s on SQLite and PostgreSQL), while a
//! fresh connection per trace cost the gateway about a quarter of its CPU at 1000 traces/s
//! (BENCHMARKS.md).
//!
//! After a payload call times out, MLflow may be frozen (a GC or VM pause, a stopped process, a
//! saturated worker) with the request still waiting in its socket. Resending the payload on every
//! retry would leave it a pile of stale copies to work through once it wakes (each is written to
//! its database again), so until it answers again payload calls first probe `/health`, one probe
//! at a time (`StallGate`).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use reqwest::header::{
    AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER, USER_AGENT,
};
use reqwest::{Client, Response, Url};
use serde::Deserialize;
use serde_json::Value;

use super::direct::{self, OwnConnection, Target};
use super::error::{MlflowError, with_causes};
use crate::config::MlflowConfig;

/// The header MLflow routes new traces by. Never sent empty: MLflow answers 200 and drops.
pub const EXPERIMENT_HEADER: &str = "x-mlflow-experiment-id";

/// An experiment as MLflow describes it.
#[derive(Debug, Clone, Deserialize)]
pub struct Experiment {
    pub experiment_id: String,
    pub name: String,
    #[serde(default)]
    pub lifecycle_stage: String,
}

impl Experiment {
    pub fn is_active(&self) -> bool {
        self.lifecycle_stage.is_empty() || self.lifecycle_stage == "active"
    }
}

#[derive(Deserialize)]
struct ExperimentReply {
    experiment: Experiment,
}

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
    /// Where TraceInfo writers open connections of their own, if they can (`direct`).
    start_trace_direct: Option<Target>,
    timeout: Duration,
    stall: Arc<StallGate>,
}

/// Set when a payload call timed out; cleared by the first `/health` probe that is answered.
#[derive(Debug, Default)]
struct StallGate {
    stalled: AtomicBool,
    probe: tokio::sync::Mutex<()>,
    /// Payload calls that timed out in a row; each doubles the next call's timeout (up to
    /// `MAX_TIMEOUT_DOUBLINGS`), so a batch MLflow needs longer than the configured timeout for
    /// (a big batch on a loaded server) is not abandoned and resent forever.
    timeouts_in_a_row: AtomicU32,
}

/// A payload call's timeout grows to at most 2^4 = 16 times `mlflow.request_timeout`.
const MAX_TIMEOUT_DOUBLINGS: u32 = 4;

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
    pub fn new(cfg: &MlflowConfig) -> Result<Self, ClientBuildError> {
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
        if let (Some(user), Some(password)) = (&cfg.username, &cfg.password) {
            let token = base64::engine::general_purpose::STANDARD
                .encode(format!("{user}:{}", password.expose()));
            let mut v = HeaderValue::from_str(&format!("Basic {token}"))
                .map_err(|_| ClientBuildError("username/password not valid in a header".into()))?;
            v.set_sensitive(true);
            headers.insert(AUTHORIZATION, v);
        } else if let Some(token) = &cfg.token {
            let mut v = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                .map_err(|_| ClientBuildError("token not valid in a header".into()))?;
            v.set_sensitive(true);
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
            start_trace_direct: Target::for_url(
                &start_trace_url,
                direct_headers,
                connect_timeout,
                direct::proxy_configured(),
            ),
            start_trace_url,
            base,
            pooled: build(usize::MAX)?,
            rest: build(0)?,
            timeout: cfg.request_timeout,
            stall: Arc::default(),
        })
    }

    /// Lets a payload call through unless MLflow stalled: then `/health` must answer first.
    /// A caller that finds another one probing gets `Stalled` at once and backs off.
    async fn pass_stall_gate(&self) -> Result<(), MlflowError> {
        if !self.stall.stalled.load(Ordering::Acquire) {
            return Ok(());
        }
        let Ok(_probing) = self.stall.probe.try_lock() else {
            return Err(MlflowError::Stalled);
        };
        if !self.stall.stalled.load(Ordering::Acquire) {
            return Ok(());
        }
        match self.health().await {
            Ok(()) => {
                tracing::info!("MLflow answers again; resuming deliveries");
                self.stall.stalled.store(false, Ordering::Release);
                Ok(())
            }
            Err(MlflowError::Timeout) => Err(MlflowError::Stalled),
            Err(e) => Err(e),
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

    /// Posts an encoded `ExportTraceServiceRequest` to `/v1/traces`.
    pub async fn post_spans(&self, experiment_id: &str, body: Bytes) -> Result<(), MlflowError> {
        if experiment_id.is_empty() {
            return Err(MlflowError::BadReply(
                "refusing to send an empty experiment id".into(),
            ));
        }
        let request = self
            .pooled
            .post(self.spans_url.clone())
            .header(CONTENT_TYPE, "application/x-protobuf")
            .header(EXPERIMENT_HEADER, experiment_id)
            .body(body);
        self.send_payload("spans", request).await
    }

    /// StartTraceV3: writes a trace's TraceInfo (on a kept-alive connection, see the module doc).
    pub async fn start_trace(&self, body: Bytes) -> Result<(), MlflowError> {
        let request = self
            .pooled
            .post(self.start_trace_url.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        self.send_payload("trace_info", request).await
    }

    /// What one TraceInfo writer sends StartTraceV3 through: a connection of its own, with up
    /// to `pipeline_depth` calls written at once, where that behaves like the shared pool (plain
    /// HTTP, no proxy; see `direct`), else the pool.
    pub fn trace_info_connection(&self, pipeline_depth: usize) -> TraceInfoConnection {
        TraceInfoConnection {
            own: self
                .start_trace_direct
                .clone()
                .map(|t| tokio::sync::Mutex::new(OwnConnection::new(t, pipeline_depth))),
            client: self.clone(),
            pipeline_depth,
            last_call_micros: AtomicU64::new(0),
        }
    }

    /// Sends a payload call through the shared pool.
    async fn send_payload(
        &self,
        kind: &'static str,
        request: reqwest::RequestBuilder,
    ) -> Result<(), MlflowError> {
        self.gated(kind, |timeout| async move {
            match request.timeout(timeout).send().await {
                Ok(reply) => check_status(reply).await,
                Err(e) => Err(transport_error(e)),
            }
        })
        .await
    }

    /// Runs a payload call of `kind` (a metric label) through the stall gate, with the timeout
    /// it is due, times it, and notes a timeout for the calls after it.
    async fn gated<F, Fut>(&self, kind: &'static str, call: F) -> Result<(), MlflowError>
    where
        F: FnOnce(Duration) -> Fut,
        Fut: Future<Output = Result<(), MlflowError>>,
    {
        let mut outcomes = self
            .gated_each(kind, 1, |timeout| async move { vec![call(timeout).await] })
            .await;
        outcomes.pop().unwrap_or(Err(MlflowError::BadReply(format!(
            "no outcome for a {kind} call"
        ))))
    }

    /// `gated` for `calls` payload calls made together (a pipelined run): one gate, one timeout
    /// per reply, each call observed as its share of the run's time; one outcome per call. A
    /// closed gate answers every call with its error.
    async fn gated_each<F, Fut>(
        &self,
        kind: &'static str,
        calls: usize,
        call: F,
    ) -> Vec<Result<(), MlflowError>>
    where
        F: FnOnce(Duration) -> Fut,
        Fut: Future<Output = Vec<Result<(), MlflowError>>>,
    {
        if let Err(e) = self.pass_stall_gate().await {
            return vec![Err(e); calls];
        }
        let timeout = self.call_timeout();
        let started = Instant::now();
        let outcomes = call(timeout).await;
        let timed_out = outcomes
            .iter()
            .any(|o| matches!(o, Err(MlflowError::Timeout)));
        self.note_calls(kind, calls, started.elapsed(), timed_out, timeout);
        outcomes
    }

    /// The timeout a payload call is due: the configured one, doubled after each timeout in a
    /// row.
    fn call_timeout(&self) -> Duration {
        let doublings = self
            .stall
            .timeouts_in_a_row
            .load(Ordering::Relaxed)
            .min(MAX_TIMEOUT_DOUBLINGS);
        self.timeout.saturating_mul(1 << doublings)
    }

    /// Records `calls` payload calls of `kind` that took `elapsed` together (each is observed
    /// as its share), and whether one of them timed out: then MLflow may be frozen, and the
    /// calls after it wait for `/health` and get twice as long.
    fn note_calls(
        &self,
        kind: &'static str,
        calls: usize,
        elapsed: Duration,
        timed_out: bool,
        timeout: Duration,
    ) {
        let share = elapsed.as_secs_f64() / calls.max(1) as f64;
        let histogram = metrics::histogram!("gateway_mlflow_request_seconds", "kind" => kind);
        for _ in 0..calls {
            histogram.record(share);
        }
        if timed_out {
            self.stall.timeouts_in_a_row.fetch_add(1, Ordering::Relaxed);
            if !self.stall.stalled.swap(true, Ordering::AcqRel) {
                tracing::warn!(
                    timeout_s = timeout.as_secs_f64(),
                    "an MLflow call timed out; probing /health before sending more data, \
                     and giving the next call twice as long"
                );
            }
        } else {
            self.stall.timeouts_in_a_row.store(0, Ordering::Relaxed);
        }
    }

    /// An experiment by id; `None` when MLflow does not know it.
    pub async fn get_experiment(&self, id: &str) -> Result<Option<Experiment>, MlflowError> {
        self.experiment_query("api/2.0/mlflow/experiments/get", ("experiment_id", id))
            .await
    }

    /// An experiment by name (deleted ones included; check `is_active`).
    pub async fn get_experiment_by_name(
        &self,
        name: &str,
    ) -> Result<Option<Experiment>, MlflowError> {
        self.experiment_query(
            "api/2.0/mlflow/experiments/get-by-name",
            ("experiment_name", name),
        )
        .await
    }

    async fn experiment_query(
        &self,
        path: &str,
        query: (&str, &str),
    ) -> Result<Option<Experiment>, MlflowError> {
        let reply = self
            .rest
            .get(self.url(path))
            .query(&[query])
            .send()
            .await
            .map_err(transport_error)?;
        not_found_as_none(check(reply).await)?
            .map(|v| parse::<ExperimentReply>(v).map(|r| r.experiment))
            .transpose()
    }

    /// Creates an experiment; on a name race, returns the one that won.
    pub async fn create_experiment(&self, name: &str) -> Result<String, MlflowError> {
        let reply = self
            .rest
            .post(self.url("api/2.0/mlflow/experiments/create"))
            .json(&serde_json::json!({
                "name": name,
                "tags": [{"key": "mlflow.note.content", "value": "Created by mlflow-otlp-gateway"}]
            }))
            .send()
            .await
            .map_err(transport_error)?;
        match check(reply).await {
            Ok(v) => v
                .get("experiment_id")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| MlflowError::BadReply("create experiment: no experiment_id".into())),
            Err(e)
                if e.status() == Some(400) && e.to_string().contains("RESOURCE_ALREADY_EXISTS") =>
            {
                match self.get_experiment_by_name(name).await? {
                    Some(exp) => Ok(exp.experiment_id),
                    None => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// GET `/health`: whether the server answers at all.
    pub async fn health(&self) -> Result<(), MlflowError> {
        let reply = self
            .rest
            .get(self.url("health"))
            .timeout(self.timeout.min(Duration::from_secs(5)))
            .send()
            .await
            .map_err(transport_error)?;
        check(reply).await.map(drop)
    }

    /// GET on an authenticated, cheap REST route, to find out whether credentials work.
    pub async fn check_auth(&self) -> Result<(), MlflowError> {
        self.get_experiment("0").await.map(drop)
    }

    /// Any JSON GET on the REST API (used by tests and the feedback path).
    pub async fn get_json(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, MlflowError> {
        let reply = self
            .rest
            .get(self.url(path))
            .query(query)
            .send()
            .await
            .map_err(transport_error)?;
        check(reply).await
    }

    /// Any JSON POST on the REST API.
    pub async fn post_json(&self, path: &str, body: &Value) -> Result<Value, MlflowError> {
        let reply = self
            .rest
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .map_err(transport_error)?;
        check(reply).await
    }
}

fn transport_error(e: reqwest::Error) -> MlflowError {
    if e.is_timeout() {
        MlflowError::Timeout
    } else {
        MlflowError::Connect(with_causes(&e))
    }
}

fn parse<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, MlflowError> {
    serde_json::from_value(v).map_err(|e| MlflowError::BadReply(e.to_string()))
}

fn not_found_as_none(r: Result<Value, MlflowError>) -> Result<Option<Value>, MlflowError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.status() == Some(404) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Turns a reply into its JSON body, or a classified error carrying MLflow's message.
async fn check(reply: Response) -> Result<Value, MlflowError> {
    let is_json = reply
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    let body = reply_body(reply).await?;
    if !is_json || body.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&body).map_err(|e| MlflowError::BadReply(e.to_string()))
}

/// A payload call's outcome: success, or a classified error. A successful reply's body is read
/// (so the connection is reused) but not parsed: StartTraceV3 echoes the whole TraceInfo
/// (~1-2 KiB of JSON per trace) and nothing reads it.
async fn check_status(reply: Response) -> Result<(), MlflowError> {
    reply_body(reply).await.map(drop)
}

/// The body of a successful reply, or the classified error a failed one carries.
async fn reply_body(reply: Response) -> Result<Bytes, MlflowError> {
    let status = reply.status();
    let retry_after = retry_after(reply.headers());
    let body = reply.bytes().await.map_err(transport_error)?;
    status_outcome(status.as_u16(), retry_after, body)
}

/// A reply's `Retry-After`, in the delay-seconds form MLflow and proxies send.
pub(super) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)
        .and_then(|v| parse_retry_after(v.as_bytes()))
}

/// A `Retry-After` value in the delay-seconds form.
pub(super) fn parse_retry_after(value: &[u8]) -> Option<Duration> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// A reply's body if its status is a success, else the classified error it carries.
fn status_outcome(
    status: u16,
    retry_after: Option<Duration>,
    body: Bytes,
) -> Result<Bytes, MlflowError> {
    if (200..300).contains(&status) {
        return Ok(body);
    }
    Err(MlflowError::Status {
        status,
        message: error_message(&body),
        retry_after,
    })
}

/// A TraceInfo writer's way to StartTraceV3 (`MlflowClient::trace_info_connection`).
pub struct TraceInfoConnection {
    client: MlflowClient,
    /// `mlflow.trace_info_pipeline_depth`.
    pipeline_depth: usize,
    /// Mean time per call of the last run, in microseconds.
    last_call_micros: AtomicU64,
    /// Used by one writer at a time; the lock is never contended, it only lets a retry loop
    /// borrow the connection from a shared reference.
    own: Option<tokio::sync::Mutex<OwnConnection>>,
}

/// Pipelining saves the gateway's own cost of a call, a few tens of microseconds; it is worth a
/// writer taking a run of TraceInfos only while calls take less than this. Slower calls are the
/// server's time (StartTraceV3 on a real MLflow: 10-20 ms or more), and a writer holding a run
/// then makes its batch wait for it while the other writers could have shared it.
const PIPELINE_WORTHWHILE_CALL: Duration = Duration::from_millis(1);

impl TraceInfoConnection {
    /// How many TraceInfos this writer should take for its next run: the pipeline depth while
    /// calls are quick (and on its own connection), else one.
    pub fn run_limit(&self) -> usize {
        let quick = self.last_call_micros.load(Ordering::Relaxed)
            < PIPELINE_WORTHWHILE_CALL.as_micros() as u64;
        if self.own.is_some() && quick {
            self.pipeline_depth
        } else {
            1
        }
    }

    /// StartTraceV3 once per body, with the same stall gate, timeouts and error classes as the
    /// shared pool; one outcome per body, in order. On a connection of its own the calls are
    /// pipelined (`direct`); through the pool they go one after another.
    pub async fn start_traces(&self, bodies: &[Bytes]) -> Vec<Result<(), MlflowError>> {
        let Some(own) = &self.own else {
            let mut outcomes = Vec::with_capacity(bodies.len());
            for body in bodies {
                outcomes.push(self.client.start_trace(body.clone()).await);
            }
            return outcomes;
        };
        self.client
            .gated_each("trace_info", bodies.len(), |timeout| async move {
                let started = Instant::now();
                let replies = own.lock().await.post_json_each(bodies, timeout).await;
                self.last_call_micros.store(
                    (started.elapsed().as_micros() / bodies.len().max(1) as u128) as u64,
                    Ordering::Relaxed,
                );
                replies
                    .into_iter()
                    .map(|reply| {
                        reply.and_then(|(status, retry_after, body)| {
                            status_outcome(status, retry_after, body).map(drop)
                        })
                    })
                    .collect()
            })
            .await
    }

    /// StartTraceV3 once.
    pub async fn start_trace(&self, body: Bytes) -> Result<(), MlflowError> {
        let mut outcomes = self.start_traces(&[body]).await;
        outcomes.pop().unwrap_or(Err(MlflowError::BadReply(
            "no outcome for a StartTraceV3 call".into(),
        )))
    }
}

/// MLflow's two error shapes: `{"error_code","message"}` and FastAPI's `{"detail"}`.
fn error_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return text.chars().take(500).collect();
    };
    if let Some(msg) = v.get("message").and_then(Value::as_str) {
        let code = v.get("error_code").and_then(Value::as_str).unwrap_or("");
        return format!("{code} {msg}").trim().chars().take(1000).collect();
    }
    if let Some(detail) = v.get("detail") {
        return match detail {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
        .chars()
        .take(1000)
        .collect();
    }
    text.chars().take(500).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_from_both_shapes() {
        assert_eq!(
            error_message(br#"{"error_code":"RESOURCE_DOES_NOT_EXIST","message":"No Experiment"}"#),
            "RESOURCE_DOES_NOT_EXIST No Experiment"
        );
        assert_eq!(
            error_message(br#"{"detail":"Invalid OpenTelemetry format"}"#),
            "Invalid OpenTelemetry format"
        );
        assert_eq!(error_message(b"<html>oops"), "<html>oops");
    }

    /// A stand-in for a frozen MLflow (a fault a real server cannot be made to produce on
    /// demand here): accepts connections, counts request lines, answers only once `wake` is set.
    async fn frozen_server(wake: Arc<AtomicBool>) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (log, wake) = (log.clone(), wake.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    let Ok(n) = socket.read(&mut buf).await else {
                        return;
                    };
                    let head = String::from_utf8_lossy(&buf[..n]);
                    let line = head.lines().next().unwrap_or_default().to_string();
                    log.lock().unwrap().push(line);
                    while !wake.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    let _ = socket
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
                        .await;
                });
            }
        });
        (url, seen)
    }

    /// A client that gives up on a call after 300 ms.
    fn impatient_client(url: String) -> MlflowClient {
        MlflowClient::new(&MlflowConfig {
            tracking_uri: url,
            request_timeout: Duration::from_millis(300),
            ..MlflowConfig::default()
        })
        .unwrap()
    }

    #[tokio::test]
    async fn after_a_timeout_only_health_probes_reach_a_stalled_mlflow() {
        let wake = Arc::new(AtomicBool::new(false));
        let (url, seen) = frozen_server(wake.clone()).await;
        let client = impatient_client(url);
        let spans = || client.post_spans("1", Bytes::from_static(b"payload"));
        assert!(matches!(spans().await, Err(MlflowError::Timeout)));
        assert!(matches!(spans().await, Err(MlflowError::Stalled)));
        assert!(matches!(
            client.start_trace(Bytes::from_static(b"{}")).await,
            Err(MlflowError::Stalled)
        ));
        let lines = |prefix: &str| {
            seen.lock()
                .unwrap()
                .iter()
                .filter(|l| l.starts_with(prefix))
                .count()
        };
        assert_eq!(
            lines("POST"),
            1,
            "one payload, then probes: {:?}",
            seen.lock().unwrap()
        );
        assert_eq!(lines("GET /health"), 2);

        wake.store(true, Ordering::SeqCst);
        spans().await.unwrap();
        assert_eq!(
            lines("POST /v1/traces"),
            2,
            "the payload goes again once /health answers"
        );
        spans().await.unwrap();
        assert_eq!(lines("GET /health"), 3, "no probe once MLflow answers");
    }

    #[tokio::test]
    async fn a_trace_info_writer_s_own_connection_shares_timeouts_and_the_stall_gate() {
        let wake = Arc::new(AtomicBool::new(false));
        let (url, seen) = frozen_server(wake.clone()).await;
        let client = impatient_client(url);
        let writer = client.trace_info_connection(4);
        let start = || writer.start_trace(Bytes::from_static(b"{}"));
        assert!(matches!(start().await, Err(MlflowError::Timeout)));
        // The shared pool sees the stall too, and the writer's next call waits for /health.
        assert!(matches!(
            client.post_spans("1", Bytes::from_static(b"payload")).await,
            Err(MlflowError::Stalled)
        ));
        assert!(matches!(start().await, Err(MlflowError::Stalled)));
        wake.store(true, Ordering::SeqCst);
        start().await.unwrap();
        let seen = seen.lock().unwrap();
        let posts: Vec<&String> = seen.iter().filter(|l| l.starts_with("POST")).collect();
        assert_eq!(
            posts, ["POST /api/3.0/mlflow/traces HTTP/1.1"; 2],
            "the timed-out call, then the one after /health answered: {seen:?}"
        );
    }

    #[test]
    fn credentials_never_appear_in_debug_output() {
        let cfg = MlflowConfig {
            token: Some(crate::config::Secret::new("tok-123")),
            ..MlflowConfig::default()
        };
        let client = MlflowClient::new(&cfg).unwrap();
        assert!(!format!("{client:?}").contains("tok-123"));
    }

    #[test]
    fn a_ca_file_without_certificates_is_a_clear_error() {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), "not a certificate\n").unwrap();
        let cfg = MlflowConfig {
            tracking_uri: "https://mlflow.internal".into(),
            ca_cert: Some(f.path().to_owned()),
            ..MlflowConfig::default()
        };
        let err = MlflowClient::new(&cfg).unwrap_err().to_string();
        assert!(err.contains("no PEM certificates"), "{err}");
        let missing = MlflowConfig {
            ca_cert: Some("/nonexistent/ca.pem".into()),
            ..MlflowConfig::default()
        };
        assert!(
            MlflowClient::new(&missing)
                .unwrap_err()
                .to_string()
                .contains("ca_cert")
        );
    }

    #[test]
    fn base_url_gets_a_trailing_slash_for_joins() {
        let cfg = MlflowConfig {
            tracking_uri: "http://h:5000/mlflow".into(),
            ..MlflowConfig::default()
        };
        let client = MlflowClient::new(&cfg).unwrap();
        assert_eq!(
            client.url("v1/traces").as_str(),
            "http://h:5000/mlflow/v1/traces"
        );
    }
}
