//! The processes a benchmark runs against: the gateway binary, rotel, and MLflow (SQLite or
//! PostgreSQL, from the shared fixtures) warmed up before anything is measured.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fixtures::mlflow_server::{Launch, MlflowServer};
use fixtures::net::wait_for_port;
pub use fixtures::postgres::Postgres;
pub use fixtures::procfs::{cpu_seconds, peak_rss_mib};
pub use fixtures::{free_port, repo_root};

use crate::load::Protocol;

/// A working directory for one process; `BENCH_KEEP=1` keeps it (logs) after the run.
fn tempdir(prefix: &str) -> std::io::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(prefix)
        .disable_cleanup(std::env::var_os("BENCH_KEEP").is_some())
        .tempdir()
}

/// A collector under test: the gateway or rotel, killed on drop.
pub struct Collector {
    pub grpc_url: String,
    pub http_url: String,
    /// The gateway's ops API (metrics), when it is the gateway.
    pub api_url: Option<String>,
    /// With TLS, the CA its certificate chains to (the load trusts it).
    pub ca: Option<PathBuf>,
    /// What each request carries to authenticate (the first tenant's token).
    pub headers: Vec<(String, String)>,
    /// Reaches the ops API (over TLS when the gateway speaks it).
    api_client: reqwest::Client,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Collector {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.pid())
    }

    pub fn peak_rss_mib(&self) -> f64 {
        peak_rss_mib(self.pid())
    }

    /// The OTLP endpoint the load generator sends `protocol` to.
    pub fn url(&self, protocol: Protocol) -> String {
        match protocol {
            Protocol::Grpc => self.grpc_url.clone(),
            Protocol::Http => self.http_url.clone(),
        }
    }

    /// `spec` aimed at this collector: its endpoint, its CA and its credentials.
    pub fn aim(&self, mut spec: crate::load::LoadSpec) -> crate::load::LoadSpec {
        spec.target = self.url(spec.protocol);
        spec.ca = self.ca.clone();
        spec.headers.extend(self.headers.iter().cloned());
        spec
    }

    /// A counter or gauge from the gateway's /metrics (summed over labels).
    pub async fn metric(&self, name: &str) -> f64 {
        let Some(api) = &self.api_url else {
            return f64::NAN;
        };
        let Ok(r) = self.api_client.get(format!("{api}/metrics")).send().await else {
            return f64::NAN;
        };
        let text = r.text().await.unwrap_or_default();
        let sum: f64 = text
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        // A metric never incremented is absent, and an empty f64 sum is -0.0 (printed "-0").
        sum + 0.0
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How the gateway is run in a scenario.
#[derive(Clone, Debug)]
pub struct GatewayOptions {
    pub mlflow_url: String,
    /// Durable spool on disk (fsync always, the shipped default) instead of memory.
    pub durable: bool,
    pub trace_info_concurrency: usize,
    /// Another build of the gateway (`--ab`); `None` runs `BENCH_GATEWAY_BIN` or this build.
    pub binary: Option<PathBuf>,
    /// `receiver.ingest_concurrency`; `None` keeps the default (the CPUs less one).
    pub ingest_concurrency: Option<usize>,
    /// TLS on every listener with these files.
    pub tls: Option<TlsFiles>,
    /// Tenants (`auth.required = true` when any): the load sends the first one's token.
    pub tenants: Vec<BenchTenant>,
}

/// A server certificate for localhost, its key, and the CA clients trust (from a
/// `fixtures::TestPki`, which must outlive the gateway).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    pub fn new(pki: &fixtures::TestPki) -> anyhow::Result<Self> {
        let server = pki.server("server")?;
        Ok(Self {
            ca: pki.ca_file(),
            cert: server.cert,
            key: server.key,
        })
    }
}

/// A tenant of the gateway under test, allowed every experiment.
#[derive(Clone, Debug)]
pub struct BenchTenant {
    pub name: &'static str,
    pub token: &'static str,
    /// 0: no quota.
    pub max_spans_per_second: f64,
}

pub async fn start_gateway(opts: &GatewayOptions) -> anyhow::Result<Collector> {
    start_gateway_with(opts, "").await
}

/// `start_gateway` with `tables` (whole TOML tables, such as `[sampling]`) at the end of its
/// configuration.
pub async fn start_gateway_with(opts: &GatewayOptions, tables: &str) -> anyhow::Result<Collector> {
    let dir = tempdir("bench-gw-")?;
    let (grpc, http, api) = (free_port(), free_port(), free_port());
    let data_dir = if opts.durable {
        format!(
            "data_dir = {:?}\n",
            dir.path().join("data").display().to_string()
        )
    } else {
        String::new()
    };
    // BENCH_GATEWAY_TOML: extra settings for experiments, appended inside [mlflow] (its keys
    // first, then any further tables); a `trace_info_concurrency` there replaces the scenario's.
    let extra = std::env::var("BENCH_GATEWAY_TOML").unwrap_or_default();
    let writers = if extra.contains("trace_info_concurrency") {
        String::new()
    } else {
        format!("trace_info_concurrency = {}\n", opts.trace_info_concurrency)
    };
    let receiver = opts
        .ingest_concurrency
        .map(|n| format!("[receiver]\ningest_concurrency = {n}\n"))
        .unwrap_or_default();
    let (access, ca, scheme) = access_config(opts);
    let config = format!(
        "{data_dir}\n{receiver}[log]\nlevel = \"warn\"\n\n{access}[server]\notlp_grpc_addr = \"127.0.0.1:{grpc}\"\n\
         otlp_http_addr = \"127.0.0.1:{http}\"\napi_addr = \"127.0.0.1:{api}\"\n{tls}\n[mlflow]\n\
         tracking_uri = {:?}\n{writers}{extra}\n{tables}\n",
        opts.mlflow_url,
        tls = tls_config(opts),
    );
    let config_path = dir.path().join("gateway.toml");
    std::fs::write(&config_path, config)?;
    // BENCH_GATEWAY_BIN: another build of the gateway (an A/B against an older commit).
    let binary = opts
        .binary
        .clone()
        .map(Into::into)
        .or_else(|| std::env::var_os("BENCH_GATEWAY_BIN"))
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_mlflow-otlp-gateway").into());
    let child = Command::new(binary)
        .arg("--config")
        .arg(&config_path)
        .env_remove("MLFLOW_TRACKING_URI")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("gateway.log"))?)
        .spawn()
        .context("start the gateway binary")?;
    // The certificate names localhost.
    let host = if ca.is_some() {
        "localhost"
    } else {
        "127.0.0.1"
    };
    let collector = Collector {
        grpc_url: format!("{scheme}://{host}:{grpc}"),
        http_url: format!("{scheme}://{host}:{http}"),
        api_url: Some(format!("{scheme}://{host}:{api}")),
        api_client: crate::load::http_client(ca.as_deref(), Duration::from_secs(10))?,
        headers: opts
            .tenants
            .first()
            .map(|t| vec![("authorization".to_string(), format!("Bearer {}", t.token))])
            .unwrap_or_default(),
        ca,
        child,
        _dir: dir,
    };
    collector.wait_ready(Duration::from_secs(30)).await?;
    Ok(collector)
}

/// `[server.tls]` for `opts`, or nothing.
fn tls_config(opts: &GatewayOptions) -> String {
    let Some(tls) = &opts.tls else {
        return String::new();
    };
    format!(
        "\n[server.tls]\ncert_file = {:?}\nkey_file = {:?}\n",
        tls.cert, tls.key
    )
}

/// `[auth]` and `[[tenants]]` for `opts` (before the `[server]` table), the CA clients trust,
/// and the URL scheme.
fn access_config(opts: &GatewayOptions) -> (String, Option<PathBuf>, &'static str) {
    let mut access = String::new();
    if !opts.tenants.is_empty() {
        access.push_str("[auth]\nrequired = true\n\n");
        for t in &opts.tenants {
            access.push_str(&format!(
                "[[tenants]]\nname = {:?}\ntokens = [{:?}]\nexperiments = [\"0\", \"*\"]\n\
                 max_spans_per_second = {}\n\n",
                t.name, t.token, t.max_spans_per_second
            ));
        }
    }
    match &opts.tls {
        Some(tls) => (access, Some(tls.ca.clone()), "https"),
        None => (access, None, "http"),
    }
}

impl Collector {
    /// Polls `/readyz` until it answers 200.
    async fn wait_ready(&self, limit: Duration) -> anyhow::Result<()> {
        let Some(api) = &self.api_url else {
            return Ok(());
        };
        let started = Instant::now();
        loop {
            if let Ok(r) = self.api_client.get(format!("{api}/readyz")).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if started.elapsed() > limit {
                bail!("the gateway at {api} was not ready within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// rotel's binary, as installed by `pip install rotel==0.0.1a15` into the project's venv.
pub fn rotel_binary() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("BENCH_ROTEL") {
        return Some(PathBuf::from(p));
    }
    let lib = repo_root().join(".venv/lib");
    std::fs::read_dir(lib).ok()?.flatten().find_map(|py| {
        let p = py.path().join("site-packages/rotel/rotel-agent");
        p.exists().then_some(p)
    })
}

/// rotel forwarding OTLP/HTTP (uncompressed, like the gateway) to `endpoint` with the
/// experiment header MLflow needs.
pub async fn start_rotel(endpoint: &str, experiment_id: &str) -> anyhow::Result<Collector> {
    let binary = rotel_binary().context("rotel is not installed; run scripts/bench-setup.sh")?;
    let dir = tempdir("bench-rotel-")?;
    let (grpc, http) = (free_port(), free_port());
    let child = Command::new(binary)
        .arg("start")
        .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{grpc}")])
        .args(["--otlp-http-endpoint", &format!("127.0.0.1:{http}")])
        .args(["--exporter", "otlp"])
        .args(["--otlp-exporter-endpoint", endpoint])
        .args(["--otlp-exporter-protocol", "http"])
        .args(["--otlp-exporter-compression", "none"])
        .args([
            "--otlp-exporter-custom-headers",
            &format!("x-mlflow-experiment-id={experiment_id}"),
        ])
        .arg("--pid-file")
        .arg(dir.path().join("rotel.pid"))
        .arg("--log-file")
        .arg(dir.path().join("rotel.log"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("rotel.stderr"))?)
        .spawn()
        .context("start rotel")?;
    let collector = Collector {
        grpc_url: format!("http://127.0.0.1:{grpc}"),
        http_url: format!("http://127.0.0.1:{http}"),
        api_url: None,
        ca: None,
        headers: Vec::new(),
        api_client: reqwest::Client::new(),
        child,
        _dir: dir,
    };
    wait_for_port(grpc, Duration::from_secs(20)).await?;
    wait_for_port(http, Duration::from_secs(20)).await?;
    Ok(collector)
}

/// A post of OTLP/protobuf spans to MLflow's own `/v1/traces`, into one experiment.
pub fn spans_post(
    http: &reqwest::Client,
    mlflow_url: &str,
    experiment_id: &str,
    body: Vec<u8>,
) -> reqwest::RequestBuilder {
    http.post(format!("{mlflow_url}/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .header("x-mlflow-experiment-id", experiment_id)
        .body(body)
}

/// A StartTraceV3 call to MLflow for one of the benchmark's traces, with the gateway's body.
pub fn start_trace_post(
    http: &reqwest::Client,
    mlflow_url: &str,
    experiment_id: &str,
    trace_id: &[u8; 16],
) -> reqwest::RequestBuilder {
    http.post(format!("{mlflow_url}/api/3.0/mlflow/traces"))
        .header("content-type", "application/json")
        .body(crate::payload::start_trace_body(experiment_id, trace_id))
}

/// A real MLflow 3.17.2 server (the project's pinned venv), default worker count.
pub struct Mlflow {
    pub url: String,
    pub backend_uri: String,
    server: MlflowServer,
    _dir: tempfile::TempDir,
}

impl Mlflow {
    /// `backend_uri` None: a fresh SQLite database.
    pub async fn start(backend_uri: Option<String>) -> anyhow::Result<Self> {
        let dir = tempdir("bench-mlflow-")?;
        let backend_uri =
            backend_uri.unwrap_or_else(|| format!("sqlite:///{}/mlflow.db", dir.path().display()));
        let log = std::fs::File::create(dir.path().join("mlflow.log"))?;
        let (state, backend) = (dir.path().to_path_buf(), backend_uri.clone());
        // The launcher waits for /health on a thread: it blocks.
        let server = tokio::task::spawn_blocking(move || {
            MlflowServer::launch(Launch {
                port: free_port(),
                state_dir: &state,
                backend_uri: Some(&backend),
                workers: MLFLOW_WORKERS,
                remove_state: false,
                log: Some(log),
                ready_within: Duration::from_secs(180),
                basic_auth: None,
            })
        })
        .await
        .context("start MLflow (run scripts/setup-mlflow.sh first)")?;
        let mlflow = Self {
            url: server.url.clone(),
            backend_uri,
            server,
            _dir: dir,
        };
        mlflow.warm_up().await?;
        Ok(mlflow)
    }

    /// Each uvicorn worker spends 7-8 s on its first `/v1/traces` call (measured here: one
    /// 10-span post per fresh connection to a fresh server took 7.1-7.9 s four times, 42-51 ms
    /// otherwise), and StartTraceV3 is slow at first too (0.7-1.3 s for 6 of the first 12 calls,
    /// then 80-115 ms). A server in production pays that once; left in, it landed in whichever
    /// measured window first reached a cold worker. So: a 10-span post and a StartTraceV3 for
    /// one of its traces on fresh connections, WARM_UP_CLIENTS at a time, until
    /// WARM_UP_FAST_ROUNDS rounds in a row were all fast.
    async fn warm_up(&self) -> anyhow::Result<()> {
        const WARM_UP_CLIENTS: usize = 2 * MLFLOW_WORKERS;
        const WARM_UP_FAST_ROUNDS: usize = 3;
        const FAST: Duration = Duration::from_secs(1);
        const LIMIT: Duration = Duration::from_secs(120);
        let started = Instant::now();
        let template = crate::payload::Template::new(crate::payload::SPANS_PER_TRACE);
        // No idle connections: every post opens its own, so the kernel spreads them over the
        // workers.
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()?;
        let mut fast_rounds = 0;
        while fast_rounds < WARM_UP_FAST_ROUNDS {
            if started.elapsed() > LIMIT {
                bail!("MLflow still slow to answer after {LIMIT:?} of warm-up");
            }
            let mut posts = tokio::task::JoinSet::new();
            for _ in 0..WARM_UP_CLIENTS {
                let (body, ids) = template.stamp();
                let spans = spans_post(&http, &self.url, "0", body);
                let trace_info = start_trace_post(&http, &self.url, "0", &ids[0]);
                posts.spawn(async move {
                    let t = Instant::now();
                    spans.send().await?.error_for_status()?;
                    let spans_took = t.elapsed();
                    let t = Instant::now();
                    trace_info.send().await?.error_for_status()?;
                    anyhow::Ok(spans_took.max(t.elapsed()))
                });
            }
            let mut times = Vec::new();
            while let Some(done) = posts.join_next().await {
                times.push(done??);
            }
            fast_rounds = if times.iter().all(|t| *t < FAST) {
                fast_rounds + 1
            } else {
                0
            };
        }
        println!(
            "  MLflow warmed up in {:.1} s (first /v1/traces and StartTraceV3 calls)",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// Runs one SQL query against MLflow's own store and returns the first column of the first
    /// row (counting through the REST API would take longer than the measurement).
    pub fn sql_scalar(&self, sql: &str) -> anyhow::Result<f64> {
        let out = Command::new(repo_root().join(".venv/bin/python"))
            .args([
                "-c",
                "import sys, sqlalchemy as s\n\
                 e = s.create_engine(sys.argv[1])\n\
                 with e.connect() as c: print(c.execute(s.text(sys.argv[2])).scalar())",
            ])
            .arg(&self.backend_uri)
            .arg(sql)
            .output()?;
        if !out.status.success() {
            bail!("query failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    }

    /// Every row of one SQL query against MLflow's store, its columns as text.
    pub fn sql_rows(&self, sql: &str) -> anyhow::Result<Vec<Vec<String>>> {
        let out = Command::new(repo_root().join(".venv/bin/python"))
            .args([
                "-c",
                "import sys, sqlalchemy as s\n\
                 e = s.create_engine(sys.argv[1])\n\
                 with e.connect() as c:\n    \
                 for r in c.execute(s.text(sys.argv[2])): print('\\t'.join(str(v) for v in r))",
            ])
            .arg(&self.backend_uri)
            .arg(sql)
            .output()?;
        if !out.status.success() {
            bail!("query failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.split('\t').map(str::to_string).collect())
            .collect())
    }

    /// CPU seconds used so far by the server and its workers.
    pub fn cpu_seconds(&self) -> f64 {
        fixtures::procfs::group_cpu_seconds(self.server.pgid())
    }

    pub async fn create_experiment(&self, name: &str) -> anyhow::Result<String> {
        let reply: serde_json::Value = reqwest::Client::new()
            .post(format!("{}/api/2.0/mlflow/experiments/create", self.url))
            .json(&serde_json::json!({ "name": name }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        reply["experiment_id"]
            .as_str()
            .map(str::to_string)
            .context("no experiment_id")
    }
}

/// MLflow's own default (`mlflow server` starts 4 uvicorn workers).
const MLFLOW_WORKERS: usize = 4;
