//! The load generator: N connections sending stamped GenAI trace requests over OTLP/gRPC or
//! OTLP/HTTP, at a fixed rate or flat out. Reports acknowledged spans, ack latency and errors.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{Buf, BufMut, Bytes};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Channel, Endpoint};

use crate::payload::Template;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    Http,
}

#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub protocol: Protocol,
    /// Base URL: `http://127.0.0.1:4317` (gRPC) or `http://127.0.0.1:4318` (HTTP, `/v1/traces`
    /// appended).
    pub target: String,
    pub connections: usize,
    /// Spans per request; 1 sends each trace span by span (children first, root last).
    pub spans_per_request: usize,
    /// Spans per trace (the last trace of a request may have fewer).
    pub trace_spans: usize,
    /// Offered spans/s over all connections; `None` sends flat out (closed loop).
    pub rate: Option<f64>,
    pub duration: Duration,
    /// Extra headers / gRPC metadata (e.g. `x-mlflow-experiment-id` for MLflow itself).
    pub headers: Vec<(String, String)>,
    /// With TLS (`https://` targets): the CA the gateway's certificate is trusted by.
    pub ca: Option<std::path::PathBuf>,
}

/// Live counters, readable while the load runs (for windowed rates).
#[derive(Default)]
pub struct Live {
    pub acked_spans: AtomicU64,
    pub acked_traces: AtomicU64,
}

#[derive(Debug, Default)]
pub struct LoadReport {
    pub elapsed: Duration,
    pub requests: u64,
    pub acked_spans: u64,
    pub acked_traces: u64,
    /// Latency of acknowledged requests, microseconds, sorted.
    pub latencies_us: Vec<u32>,
    pub errors: BTreeMap<String, u64>,
}

impl LoadReport {
    pub fn spans_per_sec(&self) -> f64 {
        self.acked_spans as f64 / self.elapsed.as_secs_f64()
    }

    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[i] as f64 / 1000.0
    }

    pub fn max_ms(&self) -> f64 {
        self.latencies_us
            .last()
            .map_or(f64::NAN, |&v| v as f64 / 1000.0)
    }

    /// Adds another run's requests to this report (an A/B's windows); latencies stay sorted.
    pub fn absorb(&mut self, other: LoadReport) {
        self.elapsed += other.elapsed;
        self.requests += other.requests;
        self.acked_spans += other.acked_spans;
        self.acked_traces += other.acked_traces;
        self.latencies_us.extend(other.latencies_us);
        self.latencies_us.sort_unstable();
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn errors_text(&self) -> String {
        if self.errors.is_empty() {
            return "none".into();
        }
        self.errors
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Sends pre-encoded request bytes as a gRPC message and returns the reply's bytes.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Self::Error> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

enum Sender {
    Grpc(tonic::client::Grpc<Channel>, Vec<(String, String)>),
    Http(reqwest::Client, String, Vec<(String, String)>),
}

/// A rustls client trusting only `ca`, offering `alpn`.
fn client_tls(ca: &Path, alpn: &[&[u8]]) -> anyhow::Result<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// An HTTP client with one connection (a pool of one keeps requests on one socket), trusting
/// `ca` when given.
pub fn http_client(ca: Option<&Path>, timeout: Duration) -> anyhow::Result<reqwest::Client> {
    let builder = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .tcp_nodelay(true)
        .timeout(timeout);
    let builder = match ca {
        Some(ca) => builder.use_preconfigured_tls(client_tls(ca, &[b"h2", b"http/1.1"])?),
        None => builder,
    };
    Ok(builder.build()?)
}

impl Sender {
    async fn new(spec: &LoadSpec) -> anyhow::Result<Self> {
        Ok(match spec.protocol {
            Protocol::Grpc => {
                let endpoint = Endpoint::from_shared(spec.target.clone())?.tcp_nodelay(true);
                let channel = match &spec.ca {
                    None => endpoint.connect().await?,
                    Some(ca) => {
                        // tonic is built without TLS: the connection is the load's own.
                        let tls = Arc::new(client_tls(ca, &[b"h2"])?);
                        let authority = endpoint.uri().authority().cloned();
                        let authority = authority.context("gRPC target without a host")?;
                        endpoint
                            .connect_with_connector(tower::service_fn(move |_| {
                                let (tls, authority) = (tls.clone(), authority.clone());
                                async move {
                                    let tcp =
                                        tokio::net::TcpStream::connect(authority.as_str()).await?;
                                    tcp.set_nodelay(true)?;
                                    let name = rustls::pki_types::ServerName::try_from(
                                        authority.host().to_string(),
                                    )
                                    .map_err(std::io::Error::other)?;
                                    let stream = tokio_rustls::TlsConnector::from(tls)
                                        .connect(name, tcp)
                                        .await?;
                                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                                }
                            }))
                            .await?
                    }
                };
                Sender::Grpc(tonic::client::Grpc::new(channel), spec.headers.clone())
            }
            Protocol::Http => {
                // One client per connection slot.
                let client = http_client(spec.ca.as_deref(), Duration::from_secs(60))?;
                let url = format!("{}/v1/traces", spec.target.trim_end_matches('/'));
                Sender::Http(client, url, spec.headers.clone())
            }
        })
    }

    /// Ok on acknowledgement; Err(code) otherwise. A partial success counts as an error.
    async fn send(&mut self, body: Vec<u8>) -> Result<(), String> {
        match self {
            Sender::Grpc(grpc, headers) => {
                grpc.ready()
                    .await
                    .map_err(|e| format!("grpc connect: {e}"))?;
                let mut req = tonic::Request::new(Bytes::from(body));
                for (k, v) in headers.iter() {
                    if let (Ok(k), Ok(v)) = (
                        tonic::metadata::MetadataKey::from_bytes(k.as_bytes()),
                        v.parse(),
                    ) {
                        req.metadata_mut().insert(k, v);
                    }
                }
                let path = tonic::codegen::http::uri::PathAndQuery::from_static(
                    "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                );
                match grpc.unary(req, path, RawCodec).await {
                    Ok(reply) => {
                        if partial_rejections(reply.get_ref()) > 0 {
                            Err("grpc partial_success".into())
                        } else {
                            Ok(())
                        }
                    }
                    Err(status) => Err(format!("grpc {:?}", status.code())),
                }
            }
            Sender::Http(client, url, headers) => {
                let mut req = client
                    .post(url.as_str())
                    .header("content-type", "application/x-protobuf")
                    .body(body);
                for (k, v) in headers.iter() {
                    req = req.header(k.as_str(), v.as_str());
                }
                let reply = req.send().await.map_err(|e| {
                    if e.is_timeout() {
                        "http timeout".to_string()
                    } else {
                        "http connect".to_string()
                    }
                })?;
                let status = reply.status();
                let body = reply.bytes().await.map_err(|_| "http body".to_string())?;
                if !status.is_success() {
                    return Err(format!("http {}", status.as_u16()));
                }
                if partial_rejections(&body) > 0 {
                    return Err("http partial_success".into());
                }
                Ok(())
            }
        }
    }
}

/// `rejected_spans` of an ExportTraceServiceResponse (0 for an empty reply).
fn partial_rejections(reply: &[u8]) -> i64 {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
    use prost::Message;
    ExportTraceServiceResponse::decode(reply)
        .ok()
        .and_then(|r| r.partial_success)
        .map_or(0, |p| p.rejected_spans)
}

/// Runs the load to completion. `live` is updated as requests are acknowledged.
pub async fn run(spec: LoadSpec, live: Arc<Live>) -> anyhow::Result<LoadReport> {
    let templates = Arc::new(if spec.spans_per_request == 1 {
        Template::span_by_span()
    } else {
        vec![Template::with_trace_spans(
            spec.spans_per_request,
            spec.trace_spans,
        )]
    });
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut latency_log = LatencyLog::from_env(&spec);
    let log_sends = latency_log.is_some();
    let deadline = started + spec.duration;
    let mut tasks = Vec::new();
    for worker in 0..spec.connections {
        let mut sender = Sender::new(&spec).await?;
        let templates = templates.clone();
        let live = live.clone();
        let stop = stop.clone();
        // Each connection sends every `connections`-th slot of the global schedule.
        let interval = spec.rate.map(|r| {
            Duration::from_secs_f64(spec.connections as f64 * spec.spans_per_request as f64 / r)
        });
        let offset = interval.map(|i| i.mul_f64(worker as f64 / spec.connections as f64));
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut sent_offsets_us = Vec::new();
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            let mut requests = 0u64;
            let mut next = started + offset.unwrap_or_default();
            let mut ids = Vec::new();
            for turn in 0usize.. {
                if let Some(interval) = interval {
                    if next >= deadline {
                        break;
                    }
                    tokio::time::sleep_until(next.into()).await;
                    next += interval;
                } else if Instant::now() >= deadline || stop.load(Ordering::Relaxed) {
                    break;
                }
                // A new set of trace ids each time the cycle of templates starts over.
                let template = &templates[turn % templates.len()];
                if turn % templates.len() == 0 {
                    ids = crate::payload::fresh_ids(template.traces);
                }
                let body = template.stamp_with(&ids);
                let sent_at = Instant::now();
                requests += 1;
                match sender.send(body).await {
                    Ok(()) => {
                        latencies.push(sent_at.elapsed().as_micros().min(u32::MAX as u128) as u32);
                        if log_sends {
                            sent_offsets_us.push(sent_at.duration_since(started).as_micros());
                        }
                        live.acked_spans
                            .fetch_add(template.spans as u64, Ordering::Relaxed);
                        live.acked_traces
                            .fetch_add(template.roots as u64, Ordering::Relaxed);
                    }
                    Err(code) => {
                        *errors.entry(code).or_default() += 1;
                        // Back off like an SDK would, without hammering a refusing server.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            (requests, latencies, sent_offsets_us, errors)
        }));
    }
    let mut report = LoadReport::default();
    for (connection, task) in tasks.into_iter().enumerate() {
        let (requests, latencies, sent_offsets_us, errors) = task.await?;
        if let Some(log) = &mut latency_log {
            log.add(connection, &sent_offsets_us, &latencies);
        }
        report.requests += requests;
        report.latencies_us.extend(latencies);
        for (k, v) in errors {
            *report.errors.entry(k).or_default() += v;
        }
    }
    stop.store(true, Ordering::Relaxed);
    report.elapsed = started.elapsed();
    report.latencies_us.sort_unstable();
    report.acked_spans = live.acked_spans.load(Ordering::Relaxed);
    report.acked_traces = live.acked_traces.load(Ordering::Relaxed);
    if let Some(log) = latency_log {
        // Written once every connection has finished, so no file I/O runs beside a measurement.
        log.append_to_file();
    }
    Ok(report)
}

/// `BENCH_LATENCY_LOG=<file>`: every acknowledged request of every load run appended to the file,
/// one line each: protocol, target, the run's start (ms since the epoch), connection, when it was
/// sent (µs after the start) and its ack latency (µs). For finding what the slow acks share (a
/// connection, a period, a moment), which a percentile cannot show.
struct LatencyLog {
    path: std::path::PathBuf,
    label: String,
    lines: String,
}

impl LatencyLog {
    fn from_env(spec: &LoadSpec) -> Option<Self> {
        let path = std::env::var_os("BENCH_LATENCY_LOG")?;
        let start_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        Some(Self {
            path: path.into(),
            label: format!("{:?} {} {start_ms}", spec.protocol, spec.target),
            lines: String::new(),
        })
    }

    fn add(&mut self, connection: usize, sent_offsets_us: &[u128], latencies_us: &[u32]) {
        use std::fmt::Write as _;
        for (sent, latency) in sent_offsets_us.iter().zip(latencies_us) {
            let _ = writeln!(self.lines, "{} {connection} {sent} {latency}", self.label);
        }
    }

    /// One append per run: runs logged to the same file never interleave their lines.
    fn append_to_file(self) {
        use std::io::Write as _;
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut file| file.write_all(self.lines.as_bytes()));
        if let Err(e) = appended {
            eprintln!("bench: cannot append to {}: {e}", self.path.display());
        }
    }
}
