//! A fast sink that stands in for MLflow's endpoints so a collector's own ceiling can be found.
//! It is a sink, not an MLflow: it stores nothing and only counts what arrives. It answers as
//! MLflow does where a collector could notice: StartTraceV3 gets its TraceInfo back, and
//! accepted connections set `TCP_NODELAY` as uvicorn does (`Sink::start_with_nagle` leaves
//! Nagle's algorithm on, as a server or proxy that does not set it would).

use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use serde_json::json;

use crate::payload::count_spans;

#[derive(Default)]
pub struct SinkCounts {
    pub spans: AtomicU64,
    pub span_requests: AtomicU64,
    pub trace_infos: AtomicU64,
    pub bad_requests: AtomicU64,
}

pub struct Sink {
    pub addr: SocketAddr,
    pub counts: Arc<SinkCounts>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The sink's own runtime threads. It stands in for a server in another process: sharing the
/// benchmark's runtime, its replies queued behind the flat-out load generator's tasks, so a
/// collector that waits for replies (the gateway's StartTraceV3 calls) was slowed by the load
/// generator rather than by its own work.
const SINK_THREADS: usize = 2;

impl Sink {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(true).await
    }

    /// A sink whose connections keep Nagle's algorithm on.
    pub async fn start_with_nagle() -> anyhow::Result<Self> {
        Self::start_with(false).await
    }

    async fn start_with(nodelay: bool) -> anyhow::Result<Self> {
        let counts = Arc::new(SinkCounts::default());
        let app = Router::new()
            .route("/v1/traces", post(spans))
            .route("/api/3.0/mlflow/traces", post(trace_info))
            .route("/health", get(|| async { "OK" }))
            .route("/api/2.0/mlflow/experiments/get", get(experiment))
            .route("/api/2.0/mlflow/experiments/get-by-name", get(experiment))
            .route(
                "/api/2.0/mlflow/experiments/create",
                post(|| async { axum::Json(json!({"experiment_id": "1"})) }),
            )
            .with_state(counts.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(SINK_THREADS)
            .thread_name("sink")
            .enable_all()
            .build()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("sink".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    let listener = listener.tap_io(move |tcp| {
                        let _ = tcp.set_nodelay(nodelay);
                    });
                    tokio::select! {
                        _ = axum::serve(listener, app) => {}
                        _ = stopped => {}
                    }
                });
                // Kept-alive connections from the collector would hold a graceful shutdown.
                runtime.shutdown_background();
            })?;
        Ok(Self {
            addr,
            counts,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn spans(&self) -> u64 {
        self.counts.spans.load(Ordering::Relaxed)
    }

    pub fn trace_infos(&self) -> u64 {
        self.counts.trace_infos.load(Ordering::Relaxed)
    }

    pub fn bad_requests(&self) -> u64 {
        self.counts.bad_requests.load(Ordering::Relaxed)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn spans(
    State(c): State<Arc<SinkCounts>>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    let counted = if gzip {
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut plain)
            .ok()
            .and_then(|_| count_spans(&plain))
    } else {
        count_spans(&body)
    };
    match counted {
        Some(n) => {
            c.spans.fetch_add(n, Ordering::Relaxed);
            c.span_requests.fetch_add(1, Ordering::Relaxed);
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/x-protobuf")],
                Vec::new(),
            )
        }
        None => {
            c.bad_requests.fetch_add(1, Ordering::Relaxed);
            (
                StatusCode::BAD_REQUEST,
                [(header::CONTENT_TYPE, "text/plain")],
                b"not an ExportTraceServiceRequest".to_vec(),
            )
        }
    }
}

/// StartTraceV3 answers `{"trace": {"trace_info": ...}}` with the TraceInfo as stored: the
/// request has that very shape, so it is echoed (MLflow's own reply adds a few fields).
async fn trace_info(State(c): State<Arc<SinkCounts>>, body: Bytes) -> impl IntoResponse {
    c.trace_infos.fetch_add(1, Ordering::Relaxed);
    ([(header::CONTENT_TYPE, "application/json")], body)
}

async fn experiment(Query(q): Query<HashMap<String, String>>) -> impl IntoResponse {
    let id = q
        .get("experiment_id")
        .cloned()
        .unwrap_or_else(|| "1".into());
    let name = q
        .get("experiment_name")
        .cloned()
        .unwrap_or_else(|| "bench".into());
    axum::Json(json!({"experiment": {
        "experiment_id": id, "name": name, "lifecycle_stage": "active"
    }}))
}
