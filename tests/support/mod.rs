//! Test harness: a real MLflow 3.17.2 server (SQLite, loopback), gateways on ephemeral ports,
//! OTLP builders and MLflow queries through MLflow's own REST API.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use mlflow_otlp_gateway::Gateway;
use mlflow_otlp_gateway::config::Config;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use serde_json::{Value as Json, json};

/// A running MLflow server. Dropping it stops the server (its launcher watches stdin).
pub struct MlflowServer {
    pub url: String,
    pub port: u16,
    pub state_dir: PathBuf,
    child: Child,
    stdin: Option<ChildStdin>,
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn mlflow_executable() -> PathBuf {
    if let Ok(p) = std::env::var("GATEWAY_TEST_MLFLOW") {
        return PathBuf::from(p);
    }
    let p = repo_root().join(".venv/bin/mlflow");
    assert!(
        p.exists(),
        "MLflow is not installed at {}; run scripts/test.sh (it creates the venv)",
        p.display()
    );
    p
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl MlflowServer {
    /// Starts a server on `port` over the SQLite database in `state_dir` (reused if present).
    pub fn start_at(port: u16, state_dir: &Path) -> Self {
        Self::launch(port, state_dir, false)
    }

    /// `remove_state`: the launcher deletes `state_dir` once the server is down.
    fn launch(port: u16, state_dir: &Path, remove_state: bool) -> Self {
        std::fs::create_dir_all(state_dir).expect("state dir");
        let python = repo_root().join(".venv/bin/python");
        let python = if python.exists() {
            python
        } else {
            PathBuf::from("python3")
        };
        let mut child = Command::new(python)
            .arg(repo_root().join("tests/support/mlflow_server.py"))
            .arg(mlflow_executable())
            .arg(port.to_string())
            .arg(state_dir)
            .env(
                "GATEWAY_TEST_REMOVE_STATE",
                if remove_state { "1" } else { "0" },
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("GATEWAY_TEST_MLFLOW_LOGS").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("spawn MLflow launcher");
        let stdin = child.stdin.take();
        let server = Self {
            url: format!("http://127.0.0.1:{port}"),
            port,
            state_dir: state_dir.to_owned(),
            child,
            stdin,
        };
        server.wait_healthy(Duration::from_secs(120));
        server
    }

    /// Starts a server on a throwaway database, removed when the server stops (which for the
    /// shared server is when the test binary exits).
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("gw-mlflow-")
            .tempdir()
            .expect("tempdir")
            .keep();
        Self::launch(free_port(), &dir, true)
    }

    fn wait_healthy(&self, limit: Duration) {
        let started = Instant::now();
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        while started.elapsed() < limit {
            if let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                use std::io::{Read, Write};
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let req = format!(
                    "GET /health HTTP/1.0\r\nHost: 127.0.0.1:{}\r\n\r\n",
                    self.port
                );
                let mut buf = String::new();
                if s.write_all(req.as_bytes()).is_ok()
                    && s.read_to_string(&mut buf).is_ok()
                    && (buf.starts_with("HTTP/1.1 200") || buf.starts_with("HTTP/1.0 200"))
                {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!(
            "MLflow did not become healthy on port {} within {limit:?}",
            self.port
        );
    }

    /// The launcher's pid, which is also the server's process group id.
    pub fn pgid(&self) -> u32 {
        self.child.id()
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the whole server: a real MLflow that stalls.
    pub fn signal_group(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, "--", &format!("-{}", self.pgid())])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal}");
    }

    /// Stops the server and waits for its process group to go.
    pub fn stop(mut self) {
        self.thaw();
        self.stdin.take();
        let _ = self.child.wait();
    }
}

impl MlflowServer {
    /// A frozen launcher could not notice its stdin closing.
    fn thaw(&self) {
        let _ = Command::new("kill")
            .args(["-CONT", "--", &format!("-{}", self.pgid())])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for MlflowServer {
    fn drop(&mut self) {
        self.thaw();
        self.stdin.take();
        let _ = self.child.wait();
    }
}

/// One MLflow server shared by every test in a test binary, started on first use on a thread
/// that lives as long as the process (the launcher ends when the process does).
pub fn shared_mlflow() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("GATEWAY_TEST_MLFLOW_URL") {
            return url;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let server = MlflowServer::start();
            tx.send(server.url.clone()).unwrap();
            // Keep the handle alive until the process exits.
            loop {
                std::thread::park();
                let _ = &server;
            }
        });
        rx.recv().expect("MLflow server started")
    })
}

/// A REST client for checking results through MLflow's own API.
#[derive(Clone)]
pub struct Mlflow {
    pub url: String,
    http: reqwest::Client,
}

impl Mlflow {
    pub fn new(url: &str) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Self {
            url: url.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    pub async fn get(&self, path: &str, query: &[(&str, &str)]) -> (u16, Json) {
        let r = self
            .http
            .get(format!("{}{path}", self.url))
            .query(query)
            .send()
            .await
            .expect("MLflow GET");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Json::Null))
    }

    pub async fn post(&self, path: &str, body: &Json) -> (u16, Json) {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .json(body)
            .send()
            .await
            .expect("MLflow POST");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Json::Null))
    }

    pub async fn create_experiment(&self, prefix: &str) -> String {
        let name = format!("{prefix}-{}", unique());
        let (status, body) = self
            .post("/api/2.0/mlflow/experiments/create", &json!({"name": name}))
            .await;
        assert_eq!(status, 200, "create experiment: {body}");
        body["experiment_id"].as_str().unwrap().to_string()
    }

    pub async fn delete_experiment(&self, id: &str) {
        let (status, body) = self
            .post(
                "/api/2.0/mlflow/experiments/delete",
                &json!({"experiment_id": id}),
            )
            .await;
        assert_eq!(status, 200, "delete experiment: {body}");
    }

    pub async fn experiment_by_name(&self, name: &str) -> Option<Json> {
        let (status, body) = self
            .get(
                "/api/2.0/mlflow/experiments/get-by-name",
                &[("experiment_name", name)],
            )
            .await;
        (status == 200).then(|| body["experiment"].clone())
    }

    /// `POST /api/3.0/mlflow/traces/search` in one experiment.
    pub async fn search(&self, experiment_id: &str, filter: &str) -> Vec<Json> {
        let (status, body) = self
            .post(
                "/api/3.0/mlflow/traces/search",
                &json!({
                    "locations": [{"type": "MLFLOW_EXPERIMENT",
                                   "mlflow_experiment": {"experiment_id": experiment_id}}],
                    "filter": filter,
                    "max_results": 100,
                }),
            )
            .await;
        assert_eq!(status, 200, "search {filter}: {body}");
        body["traces"].as_array().cloned().unwrap_or_default()
    }

    /// TraceInfo (`GET /api/3.0/mlflow/traces/<id>`), or None while MLflow does not know it.
    pub async fn trace_info(&self, trace_id: &str) -> Option<Json> {
        let (status, body) = self
            .get(&format!("/api/3.0/mlflow/traces/{trace_id}"), &[])
            .await;
        (status == 200).then(|| body["trace"]["trace_info"].clone())
    }

    /// The full trace with spans.
    pub async fn trace(&self, trace_id: &str) -> Option<Json> {
        let (status, body) = self
            .get(
                "/api/3.0/mlflow/traces/get",
                &[("trace_id", trace_id), ("allow_partial", "true")],
            )
            .await;
        (status == 200).then(|| body["trace"].clone())
    }

    /// Polls until the trace's TraceInfo satisfies `done`, returning it.
    pub async fn wait_trace(
        &self,
        trace_id: &str,
        what: &str,
        done: impl Fn(&Json) -> bool,
    ) -> Json {
        let started = Instant::now();
        let mut last = None;
        while started.elapsed() < Duration::from_secs(60) {
            if let Some(info) = self.trace_info(trace_id).await {
                if done(&info) {
                    return info;
                }
                last = Some(info);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("trace {trace_id} never got {what}; last TraceInfo: {last:#?}");
    }

    /// Polls until the trace has `n` spans, returning them.
    pub async fn wait_spans(&self, trace_id: &str, n: usize) -> Vec<Json> {
        let started = Instant::now();
        let mut last = 0;
        while started.elapsed() < Duration::from_secs(60) {
            if let Some(t) = self.trace(trace_id).await {
                let spans = t["spans"].as_array().cloned().unwrap_or_default();
                if spans.len() >= n {
                    return spans;
                }
                last = spans.len();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("trace {trace_id} has {last} spans, expected {n}");
    }
}

pub fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{:x}{:x}",
        t & 0xffff_ffff_ffff,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A gateway on ephemeral loopback ports in front of `mlflow_url`.
pub async fn gateway(
    mlflow_url: &str,
    experiment_id: &str,
    tweak: impl FnOnce(&mut Config),
) -> Gateway {
    let mut cfg = Config::default();
    cfg.server.otlp_grpc_addr = "127.0.0.1:0".into();
    cfg.server.otlp_http_addr = "127.0.0.1:0".into();
    cfg.server.api_addr = "127.0.0.1:0".into();
    cfg.mlflow.tracking_uri = mlflow_url.into();
    cfg.mlflow.experiment_id = Some(experiment_id.into());
    cfg.batch.timeout = Duration::from_millis(50);
    cfg.retry.initial_backoff = Duration::from_millis(100);
    cfg.retry.max_backoff = Duration::from_secs(1);
    cfg.mlflow.health_interval = Duration::from_millis(500);
    tweak(&mut cfg);
    Gateway::start(cfg).await.expect("gateway starts")
}

// ---- OTLP builders ----

pub fn random_trace_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    for b in id.iter_mut() {
        *b = fastrand::u8(..);
    }
    id[0] |= 1;
    id
}

pub fn random_span_id() -> [u8; 8] {
    let mut id = [0u8; 8];
    for b in id.iter_mut() {
        *b = fastrand::u8(..);
    }
    id[0] |= 1;
    id
}

pub fn tr_id(trace_id: &[u8; 16]) -> String {
    format!(
        "tr-{}",
        trace_id
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

pub fn s(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// A captured request header, as OTel SDKs record it: a string array.
pub fn header(name: &str, value: &str) -> KeyValue {
    KeyValue {
        key: format!("http.request.header.{name}"),
        value: Some(AnyValue {
            value: Some(Value::ArrayValue(ArrayValue {
                values: vec![AnyValue {
                    value: Some(Value::StringValue(value.into())),
                }],
            })),
        }),
        ..Default::default()
    }
}

pub fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

pub struct SpanSpec {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent: Option<[u8; 8]>,
    pub name: String,
    pub start: u64,
    pub end: u64,
    pub attrs: Vec<KeyValue>,
    pub error: bool,
}

impl SpanSpec {
    pub fn root(trace_id: [u8; 16], name: &str, start: u64, dur_ms: u64) -> Self {
        Self {
            trace_id,
            span_id: random_span_id(),
            parent: None,
            name: name.into(),
            start,
            end: start + dur_ms * 1_000_000,
            attrs: vec![],
            error: false,
        }
    }

    pub fn child(parent: &SpanSpec, name: &str, offset_ms: u64, dur_ms: u64) -> Self {
        let start = parent.start + offset_ms * 1_000_000;
        Self {
            trace_id: parent.trace_id,
            span_id: random_span_id(),
            parent: Some(parent.span_id),
            name: name.into(),
            start,
            end: start + dur_ms * 1_000_000,
            attrs: vec![],
            error: false,
        }
    }

    pub fn with(mut self, attrs: Vec<KeyValue>) -> Self {
        self.attrs.extend(attrs);
        self
    }

    pub fn build(&self) -> Span {
        Span {
            trace_id: self.trace_id.to_vec(),
            span_id: self.span_id.to_vec(),
            parent_span_id: self.parent.map(|p| p.to_vec()).unwrap_or_default(),
            name: self.name.clone(),
            kind: 2,
            start_time_unix_nano: self.start,
            end_time_unix_nano: self.end,
            attributes: self.attrs.clone(),
            status: Some(Status {
                code: if self.error { 2 } else { 1 },
                message: String::new(),
            }),
            ..Default::default()
        }
    }
}

pub fn request(resource: Vec<KeyValue>, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: resource,
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// The resource attributes of a typical production service.
pub fn service_resource(service: &str) -> Vec<KeyValue> {
    vec![
        s("service.name", service),
        s("service.version", "1.4.2"),
        s("deployment.environment.name", "production"),
        s("k8s.deployment.name", "chat-deploy"),
        s("cloud.region", "eu-west-1"),
    ]
}

// ---- senders ----

pub async fn post_http(
    addr: SocketAddr,
    body: Vec<u8>,
    content_type: &str,
    encoding: Option<&str>,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let mut req = client
        .post(format!("http://{addr}/v1/traces"))
        .header("content-type", content_type)
        .body(body);
    if let Some(e) = encoding {
        req = req.header("content-encoding", e);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.expect("POST /v1/traces")
}

/// POSTs an OTLP/HTTP protobuf request with no encoding or extra headers.
pub async fn post_protobuf(addr: SocketAddr, req: &ExportTraceServiceRequest) -> reqwest::Response {
    post_http(
        addr,
        prost::Message::encode_to_vec(req),
        "application/x-protobuf",
        None,
        &[],
    )
    .await
}

/// The gateway's `/metrics` text.
pub async fn metrics_text(api: SocketAddr) -> String {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::get(format!("http://{api}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body")
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Sends a two-span trace whose root carries `client_request_id` through the gateway's OTLP/HTTP
/// port and returns its MLflow trace id.
pub async fn send_trace(http: SocketAddr, client_request_id: &str) -> String {
    let root = SpanSpec::root(
        random_trace_id(),
        "POST /chat",
        now_nanos() - 1_000_000_000,
        30,
    )
    .with(vec![header("x-request-id", client_request_id)]);
    let child = SpanSpec::child(&root, "llm", 1, 10);
    let r = post_protobuf(
        http,
        &request(service_resource("chat"), vec![child.build(), root.build()]),
    )
    .await;
    assert_eq!(r.status(), 200);
    tr_id(&root.trace_id)
}

impl Mlflow {
    /// The trace's assessments, as `GET /api/3.0/mlflow/traces/<id>` returns them.
    pub async fn assessments(&self, trace_id: &str) -> Vec<Json> {
        self.trace_info(trace_id)
            .await
            .and_then(|i| i["assessments"].as_array().cloned())
            .unwrap_or_default()
    }
}

/// Sends one trace (root + `children` spans, the root carrying `client_request_id`) and returns
/// the HTTP status, or None when the request failed at the transport level.
pub async fn try_send_trace(
    client: &reqwest::Client,
    http: SocketAddr,
    client_request_id: &str,
    children: usize,
    resource: Vec<KeyValue>,
) -> (String, Option<u16>) {
    let root = SpanSpec::root(random_trace_id(), "turn", now_nanos() - 1_000_000_000, 30)
        .with(vec![s("client_request_id", client_request_id)]);
    let mut spans: Vec<Span> = (0..children)
        .map(|i| SpanSpec::child(&root, &format!("step-{i}"), 1, 5).build())
        .collect();
    spans.push(root.build());
    let body = prost::Message::encode_to_vec(&request(resource, spans));
    let r = client
        .post(format!("http://{http}/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(body)
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    (tr_id(&root.trace_id), r.ok().map(|r| r.status().as_u16()))
}

/// The shipped binary, started with `args` and `envs`; killed when dropped.
pub struct GatewayProcess {
    pub child: Child,
    pub http: SocketAddr,
    pub api: SocketAddr,
    /// The gateway's stderr; shown with its metrics when a test fails (see `Drop`).
    log: Option<tempfile::NamedTempFile>,
}

impl GatewayProcess {
    pub fn start(
        mlflow_url: &str,
        experiment_id: &str,
        data_dir: Option<&Path>,
        extra: &[&str],
    ) -> Self {
        let (grpc, http, api) = (free_port(), free_port(), free_port());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mlflow-otlp-gateway"));
        cmd.args(["--otlp-grpc-addr", &format!("127.0.0.1:{grpc}")])
            .args(["--otlp-http-addr", &format!("127.0.0.1:{http}")])
            .args(["--api-addr", &format!("127.0.0.1:{api}")])
            .args(["--log-level", "warn"])
            .args(extra)
            .env("MLFLOW_TRACKING_URI", mlflow_url)
            .env("MLFLOW_EXPERIMENT_ID", experiment_id)
            .env_remove("GATEWAY_CONFIG")
            .env_remove("GATEWAY_DATA_DIR")
            .stdout(Stdio::null());
        let log = if std::env::var_os("GATEWAY_TEST_LOGS").is_some() {
            cmd.stderr(Stdio::inherit());
            None
        } else {
            let log = tempfile::NamedTempFile::new().expect("log file");
            cmd.stderr(log.reopen().expect("log file"));
            Some(log)
        };
        if let Some(d) = data_dir {
            cmd.arg("--data-dir").arg(d);
        }
        let child = cmd.spawn().expect("spawn gateway");
        let http: SocketAddr = format!("127.0.0.1:{http}").parse().unwrap();
        let started = Instant::now();
        while std::net::TcpStream::connect(http).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "gateway did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            http,
            api: format!("127.0.0.1:{api}").parse().unwrap(),
            log,
        }
    }

    /// The last lines of the gateway's log and its metrics, for a failing test's output.
    fn diagnostics(&self) -> String {
        use std::io::{Read, Write};
        let log = self
            .log
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f.path()).ok())
            .unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let mut metrics = String::new();
        if let Ok(mut conn) =
            std::net::TcpStream::connect_timeout(&self.api, Duration::from_secs(2))
        {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: gateway\r\n\r\n");
            let _ = conn.read_to_string(&mut metrics);
        }
        let metrics: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with("gateway_") && !l.contains("_bucket"))
            .collect();
        format!(
            "--- gateway log (last {} lines) ---\n{}\n--- gateway metrics ---\n{}",
            tail.len(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            metrics.join("\n")
        )
    }

    /// Resident set size in bytes (Linux).
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.diagnostics());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls until every listed trace is complete in MLflow: its TraceInfo has the client request
/// id and it holds exactly `spans` spans. Returns how many were checked.
pub async fn assert_all_delivered(
    mlflow: &Mlflow,
    traces: &[(String, String)],
    spans: usize,
    limit: Duration,
) {
    let started = Instant::now();
    let mut missing: Vec<&(String, String)> = traces.iter().collect();
    while !missing.is_empty() {
        let mut still = Vec::new();
        for t in missing {
            let ok = match mlflow.trace(&t.0).await {
                Some(tr) => {
                    tr["spans"].as_array().map_or(0, |a| a.len()) == spans
                        && tr["trace_info"]["client_request_id"] == t.1.as_str()
                }
                None => false,
            };
            if !ok {
                still.push(t);
            }
        }
        missing = still;
        if missing.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < limit,
            "{} of {} acknowledged traces incomplete in MLflow after {limit:?}, e.g. {:?}",
            missing.len(),
            traces.len(),
            missing.first()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
