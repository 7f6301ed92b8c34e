//! The five scenarios of BENCHMARKS.md and the CI smoke check. Peers are measured in the same
//! run, on the same machine, with the same load: one after the other, except in scenario 1,
//! whose CPU ratio is the one drift moved most, where their windows interleave.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

use crate::Options;
use crate::load::{self, Live, LoadReport, LoadSpec, Protocol};
use crate::payload::{SPANS_PER_TRACE, Template};
use crate::procs::{self, Collector, GatewayOptions, Mlflow, Postgres};
use crate::sink::Sink;

/// How long delivered counts may lag acknowledged ones once the load stops.
pub(crate) const DRAIN_LIMIT: Duration = Duration::from_secs(60);
/// Connections of the load generator in the collector scenarios (OTel testbed style).
pub(crate) const CONNECTIONS: usize = 4;
/// The steady load of scenarios 1 and 4 and of `--ab` (the OTel Collector testbed's rate)...
const STEADY_SPANS_PER_SEC: f64 = 10_000.0;
/// ...in requests of this many spans.
pub(crate) const STEADY_SPANS_PER_REQUEST: usize = 100;
/// Client threads used to find MLflow's own StartTraceV3 ceiling: on SQLite, 8 gave more than
/// 1, 2 or 4, so the ceiling the gateway is held to is MLflow's best.
pub(crate) const TRACE_INFO_CLIENTS: usize = 8;
/// The gateway's TraceInfo writers in every scenario but scenario 2's ceiling search: what it
/// ships with. Eight, as many as the ceiling's clients, made fewer complete traces on SQLite
/// (scenario 5 in BENCHMARKS.md).
pub(crate) const GATEWAY_TRACE_INFO_CONCURRENCY: usize =
    mlflow_otlp_gateway::config::DEFAULT_TRACE_INFO_CONCURRENCY;
/// Connections that post the ceiling's traces beforehand. One at a time took 24-44 traces/s,
/// half of scenario 5's run time (52-54 s per reading on PostgreSQL, where the other three of
/// MLflow's four workers sat idle).
const INGEST_CLIENTS: usize = 4;
/// Traces ready for the first ceiling reading, per second of its window: twice the most MLflow
/// has done on two cores, so a fast hour does not run out.
pub(crate) const FIRST_CEILING_TRACES_PER_SEC: f64 = 160.0;
/// The second reading gets at least this multiple of the first's rate in traces (what the first
/// left counts): it has read 0.8-1.4 times the first; running out stops the run.
const AFTER_OVER_BEFORE: f64 = 2.0;
/// ...and never less than this many per second.
const MIN_CEILING_TRACES_PER_SEC: f64 = 40.0;
/// Each of the two StartTraceV3 ceiling readings in scenario 5 (before and after the gateway).
pub(crate) const CEILING_WINDOW_SECS: f64 = 8.0;

pub async fn smoke() -> anyhow::Result<()> {
    check_payloads()?;
    let sink = Sink::start().await?;
    let gateway = procs::start_gateway(&GatewayOptions {
        tls: None,
        tenants: Vec::new(),
        mlflow_url: sink.url(),
        durable: true,
        trace_info_concurrency: GATEWAY_TRACE_INFO_CONCURRENCY,
        binary: None,
        ingest_concurrency: None,
    })
    .await?;
    let mut acked = (0, 0);
    for (protocol, target) in [
        (Protocol::Grpc, gateway.grpc_url.clone()),
        (Protocol::Http, gateway.http_url.clone()),
    ] {
        let report = load::run(
            LoadSpec {
                ca: None,
                protocol,
                target,
                connections: 2,
                spans_per_request: 50,
                trace_spans: crate::payload::SPANS_PER_TRACE,
                rate: Some(2000.0),
                duration: Duration::from_secs(2),
                headers: vec![],
            },
            Arc::new(Live::default()),
        )
        .await?;
        ensure!(
            report.error_count() == 0,
            "{protocol:?} errors: {}",
            report.errors_text()
        );
        acked.0 += report.acked_spans;
        acked.1 += report.acked_traces;
    }
    wait_until(DRAIN_LIMIT, || {
        sink.spans() >= acked.0 && sink.trace_infos() >= acked.1
    })
    .await;
    println!(
        "bench smoke: acknowledged {} spans / {} traces, sink received {} spans / {} TraceInfos",
        acked.0,
        acked.1,
        sink.spans(),
        sink.trace_infos()
    );
    ensure!(sink.spans() == acked.0, "sent != delivered (spans)");
    ensure!(sink.trace_infos() == acked.1, "one TraceInfo per trace");
    ensure!(
        sink.bad_requests() == 0,
        "the sink could not read a request"
    );
    drop(gateway);
    Ok(())
}

/// The stamped templates are what the load claims: every span carries its trace's fresh id, and
/// the root's client request id is that id in hex.
fn check_payloads() -> anyhow::Result<()> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;
    let template = Template::new(25);
    let (bytes, ids) = template.stamp();
    ensure!(
        crate::payload::count_spans(&bytes) == Some(25),
        "span counter"
    );
    ensure!(
        (template.traces, template.roots) == (3, 3),
        "traces of 10, 10 and 5 spans"
    );
    let req = ExportTraceServiceRequest::decode(&bytes[..])?;
    let spans: Vec<_> = req.resource_spans[0].scope_spans[0].spans.iter().collect();
    for (i, span) in spans.iter().enumerate() {
        ensure!(
            span.trace_id == ids[i / SPANS_PER_TRACE],
            "span {i} has its trace's id"
        );
    }
    let request_id = spans[0]
        .attributes
        .iter()
        .find(|kv| kv.key == "client_request_id")
        .and_then(|kv| kv.value.as_ref()?.value.clone());
    let want = crate::payload::hex(&ids[0]);
    ensure!(
        matches!(request_id, Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(ref v)) if *v == want),
        "client request id stamped"
    );
    let by_span = Template::span_by_span();
    ensure!(by_span.len() == SPANS_PER_TRACE, "one request per span");
    ensure!(
        by_span.iter().map(|t| t.roots).collect::<Vec<_>>()
            == [vec![0; SPANS_PER_TRACE - 1], vec![1]].concat(),
        "children first, root last"
    );
    Ok(())
}

pub async fn run_all(opts: Options) -> anyhow::Result<()> {
    print_environment();
    let started = Instant::now();
    let mut tables = Vec::new();
    for n in opts.only.clone() {
        let t = Instant::now();
        let table = match n {
            1 => steady(&opts).await,
            2 => crate::ceiling::ceiling(&opts).await,
            3 => end_to_end(&opts).await,
            4 => ack_latency(&opts).await,
            5 => complete_traces(&opts).await,
            8 => crate::sampling::sampled_overload(&opts).await,
            6 => crate::bombs::refused_bodies(&opts).await,
            7 => crate::tenancy::shared_gateway(&opts).await,
            _ => bail!("no scenario {n}"),
        }
        .with_context(|| format!("scenario {n}"))?;
        println!(
            "{table}\n(scenario {n} took {:.0} s)\n",
            t.elapsed().as_secs_f64()
        );
        tables.push(table);
    }
    println!(
        "==== all results ({:.1} min) ====\n",
        started.elapsed().as_secs_f64() / 60.0
    );
    for t in tables {
        println!("{t}\n");
    }
    Ok(())
}

/// The machine's cores, which everything in a run shares.
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn print_environment() {
    let cpus = cores();
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    println!("machine: {cpus} CPUs ({model})");
    println!(
        "gateway: {} (release build); rotel: {}",
        env!("CARGO_PKG_VERSION"),
        procs::rotel_binary().map_or("not installed".into(), |p| p.display().to_string())
    );
}

pub(crate) async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    done()
}

async fn start_peer(name: &str, sink: &Sink, durable: bool) -> anyhow::Result<Collector> {
    start_peer_with(name, sink, durable, GATEWAY_TRACE_INFO_CONCURRENCY, None).await
}

/// `trace_info_concurrency` and `ingest_concurrency` (None: the gateway's default) only apply to
/// the gateway (rotel writes no TraceInfo).
pub(crate) async fn start_peer_with(
    name: &str,
    sink: &Sink,
    durable: bool,
    trace_info_concurrency: usize,
    ingest_concurrency: Option<usize>,
) -> anyhow::Result<Collector> {
    match name {
        "gateway" => {
            procs::start_gateway(&GatewayOptions {
                tls: None,
                tenants: Vec::new(),
                mlflow_url: sink.url(),
                durable,
                trace_info_concurrency,
                binary: None,
                ingest_concurrency,
            })
            .await
        }
        _ => procs::start_rotel(&sink.url(), "1").await,
    }
}

pub(crate) fn peers() -> Vec<&'static str> {
    if procs::rotel_binary().is_some() {
        vec!["gateway", "rotel"]
    } else {
        eprintln!("rotel is not installed (scripts/bench-setup.sh); measuring the gateway alone");
        vec!["gateway"]
    }
}

/// The steady load (10k spans/s, 100 spans/request, 4 connections) to `target` for `duration`.
pub(crate) fn steady_load(protocol: Protocol, target: String, duration: Duration) -> LoadSpec {
    LoadSpec {
        ca: None,
        protocol,
        target,
        connections: CONNECTIONS,
        spans_per_request: STEADY_SPANS_PER_REQUEST,
        trace_spans: crate::payload::trace_spans_from_env(),
        rate: Some(STEADY_SPANS_PER_SEC),
        duration,
        headers: vec![],
    }
}

/// The order in which `subjects` get their windows in `round` of an interleaved measurement:
/// reversed every other round (A B, B A, ...), so drift on the host lands on each alike.
pub(crate) fn round_order(round: usize, subjects: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..subjects).collect();
    if round % 2 == 1 {
        order.reverse();
    }
    order
}

/// Scenario 1's load is split into this many rounds of one window per collector...
const STEADY_ROUNDS: usize = 6;
/// ...of this length (60 s per collector in all, as in the OTel Collector testbed).
const STEADY_WINDOW_SECS: f64 = 10.0;
/// An unmeasured window per collector first: a fresh process's first requests pay for its
/// connections, page faults and (the gateway's) first spool segment.
const STEADY_WARM_UP_SECS: f64 = 3.0;

struct SteadySubject {
    peer: &'static str,
    sink: Sink,
    collector: Collector,
    /// Spans in the sink before the measured windows (the warm-up's).
    sink_before: u64,
    merged: LoadReport,
    cpu_seconds: f64,
}

/// Scenario 1: steady 10k spans/s; CPU and peak RSS of each collector. Both run at once, each
/// with its own sink, and the load goes to one at a time in windows, the order reversed every
/// round: run one after the other, rotel's own CPU for the same load differed 2x between two
/// runs on one day, and the ratio with it. A window's CPU is counted until its spans are all
/// in the sink, so each collector pays for its own batching and export.
async fn steady(opts: &Options) -> anyhow::Result<String> {
    let window = opts.secs(STEADY_WINDOW_SECS);
    let mut t = format!(
        "### 1. Steady 10k spans/s into the sink (OTLP/gRPC, 100 spans/request, 4 connections; \
         {STEADY_ROUNDS} interleaved windows of {:.1} s per collector)\n\n\
         | collector | duration | sent spans | delivered | CPU % (of one core) | CPU s per 1M spans | peak RSS MiB | ack p50 ms | ack p99 ms |\n\
         |---|---|---|---|---|---|---|---|---|\n",
        window.as_secs_f64()
    );
    let spec = |collector: &Collector, duration: Duration| {
        steady_load(Protocol::Grpc, collector.grpc_url.clone(), duration)
    };
    let mut subjects = Vec::new();
    for peer in peers() {
        let sink = Sink::start().await?;
        let collector = start_peer(peer, &sink, true).await?;
        let warm_up = load::run(
            spec(&collector, opts.secs(STEADY_WARM_UP_SECS)),
            Arc::new(Live::default()),
        )
        .await?;
        let sink_before = drain(&sink, warm_up.acked_spans).await;
        subjects.push(SteadySubject {
            peer,
            sink,
            collector,
            sink_before,
            merged: LoadReport::default(),
            cpu_seconds: 0.0,
        });
    }
    for round in 0..STEADY_ROUNDS {
        for i in round_order(round, subjects.len()) {
            let s = &mut subjects[i];
            let cpu_before = s.collector.cpu_seconds();
            let report = load::run(spec(&s.collector, window), Arc::new(Live::default())).await?;
            let acked = s.sink_before + s.merged.acked_spans + report.acked_spans;
            drain(&s.sink, acked).await;
            s.cpu_seconds += s.collector.cpu_seconds() - cpu_before;
            s.merged.absorb(report);
        }
    }
    for s in &subjects {
        let m = &s.merged;
        let secs = m.elapsed.as_secs_f64();
        let row = format!(
            "| {} | {secs:.0} s | {} | {} | {:.1} | {:.2} | {:.1} | {:.2} | {:.2} |",
            s.peer,
            m.acked_spans,
            s.sink.spans() - s.sink_before,
            100.0 * s.cpu_seconds / secs,
            s.cpu_seconds / (m.acked_spans as f64 / 1e6),
            s.collector.peak_rss_mib(),
            m.percentile_ms(0.5),
            m.percentile_ms(0.99),
        );
        println!("{row}  errors: {}", m.errors_text());
        t += &row;
        t.push('\n');
    }
    Ok(t)
}

async fn drain(sink: &Sink, acked: u64) -> u64 {
    wait_until(DRAIN_LIMIT, || sink.spans() >= acked).await;
    // Anything beyond the acknowledged count would be duplicates; let them show.
    tokio::time::sleep(Duration::from_millis(300)).await;
    sink.spans()
}

/// Scenario 3: apps sending 1 span per request, directly to MLflow vs through the gateway.
async fn end_to_end(opts: &Options) -> anyhow::Result<String> {
    let mut t = String::from(
        "### 3. End to end into a real MLflow 3.17.2 (SQLite, 4 workers), OTLP/HTTP\n\n\
         | path | spans/request | clients | spans landed/s | landed == acked (counted in MLflow's store) | errors |\n\
         |---|---|---|---|---|---|\n",
    );
    let mlflow = Mlflow::start(None).await?;
    let mut bulk_rate = 0.0;
    for (label, spans, clients) in [
        ("direct to MLflow", 1, 4),
        ("direct to MLflow (bulk reference)", 1000, 4),
    ] {
        let exp = mlflow.create_experiment(&format!("direct-{spans}")).await?;
        let report = load::run(
            LoadSpec {
                ca: None,
                protocol: Protocol::Http,
                target: mlflow.url.clone(),
                connections: clients,
                spans_per_request: spans,
                trace_spans: crate::payload::SPANS_PER_TRACE,
                rate: None,
                duration: opts.secs(if spans == 1 { 10.0 } else { 15.0 }),
                headers: vec![("x-mlflow-experiment-id".into(), exp.clone())],
            },
            Arc::new(Live::default()),
        )
        .await?;
        let landed = landed_spans(&mlflow, &exp)?;
        bulk_rate = report.spans_per_sec();
        let row = format!(
            "| {label} | {spans} | {clients} | {:.0} | {} | {} |",
            report.spans_per_sec(),
            same(report.acked_spans, landed),
            report.errors_text()
        );
        println!("{row}");
        t += &row;
        t.push('\n');
    }
    // Through the gateway: offered at 1.25x MLflow's bulk rate (just above what it can take, so
    // the gateway's own CPU use stays in proportion); landed rate from the gateway's export
    // counter over the saturated window, then the total checked in MLflow after the drain.
    let offered = (1.25 * bulk_rate).max(100.0).round();
    let gateway = procs::start_gateway(&GatewayOptions {
        tls: None,
        tenants: Vec::new(),
        mlflow_url: mlflow.url.clone(),
        durable: true,
        trace_info_concurrency: GATEWAY_TRACE_INFO_CONCURRENCY,
        binary: None,
        ingest_concurrency: None,
    })
    .await?;
    let name = format!("through-gateway-{}", fastrand::u32(..));
    let exp = mlflow.create_experiment(&name).await?;
    let run = through_gateway(
        &gateway,
        &mlflow,
        LoadSpec {
            ca: None,
            protocol: Protocol::Http,
            target: gateway.http_url.clone(),
            connections: 8,
            spans_per_request: 1,
            trace_spans: crate::payload::SPANS_PER_TRACE,
            rate: Some(offered),
            duration: opts.secs(20.0),
            headers: vec![("x-mlflow-experiment-id".into(), exp.clone())],
        },
        ("gateway_export_spans_total", |r| r.acked_spans),
        Duration::from_secs(120),
    )
    .await?;
    let (report, cpu) = (&run.report, &run.cpu);
    let landed = landed_spans(&mlflow, &exp)?;
    let row = format!(
        "| through the gateway (offered {offered} spans/s) | 1 | 8 | {:.0} | {} | {} |\n\n\
         CPU during the gateway's window (% of one core): {cpu}",
        run.rate,
        same(report.acked_spans, landed),
        report.errors_text()
    );
    println!("{row}");
    t += &row;
    t.push('\n');
    Ok(t)
}

/// Spans MLflow stored for an experiment, counted in its own database.
fn landed_spans(mlflow: &Mlflow, experiment_id: &str) -> anyhow::Result<u64> {
    Ok(mlflow.sql_scalar(&format!(
        "SELECT COUNT(*) FROM spans WHERE experiment_id = {experiment_id}"
    ))? as u64)
}

/// "yes (sent / arrived)" when nothing was lost or duplicated, "NO (...)" otherwise.
pub(crate) fn same(sent: u64, arrived: u64) -> String {
    let verdict = if sent == arrived { "yes" } else { "NO" };
    format!("{verdict} ({sent} / {arrived})")
}

/// CPU seconds of the three parties on the machine: the gateway, MLflow (all its processes) and
/// this process (load generator and sink).
struct Cpu {
    gateway: f64,
    mlflow: f64,
    bench: f64,
}

impl Cpu {
    fn sample(gateway: &Collector, mlflow: &Mlflow) -> Self {
        Self {
            gateway: gateway.cpu_seconds(),
            mlflow: mlflow.cpu_seconds(),
            bench: procs::cpu_seconds(std::process::id()),
        }
    }

    fn since(&self, start: &Cpu, window: Duration) -> String {
        let pct = |a: f64, b: f64| 100.0 * (a - b) / window.as_secs_f64();
        format!(
            "MLflow {:.0} %, gateway {:.0} %, load generator {:.0} %",
            pct(self.mlflow, start.mlflow),
            pct(self.gateway, start.gateway),
            pct(self.bench, start.bench)
        )
    }
}

/// Waits `span`, printing the gateway's export counters every few seconds (what limits a number
/// shows here: spans exported, TraceInfos written, what waits in the queues).
async fn progress(gateway: &Collector, span: Duration) {
    let started = Instant::now();
    while started.elapsed() < span {
        tokio::time::sleep((span - started.elapsed()).min(Duration::from_secs(3))).await;
        println!(
            "  t={:>4.1}s exported spans {:>7} | TraceInfos {:>6} (queued {:>5}) | retries {:>4} | failures {:>4}",
            started.elapsed().as_secs_f64(),
            gateway.metric("gateway_export_spans_total").await,
            gateway.metric("gateway_export_traces_total").await,
            gateway.metric("gateway_trace_info_queue").await,
            gateway.metric("gateway_export_retries_total").await,
            gateway.metric("gateway_export_failures_total").await,
        );
    }
}

/// Scenario 4: acknowledgement latency at 10k spans/s with the durable spool (fsync always).
async fn ack_latency(opts: &Options) -> anyhow::Result<String> {
    let mut t = String::from(
        "### 4. Ack latency at 10k spans/s, 100 spans/request, 4 connections, 15 s each, into the sink\n\n\
         | collector | protocol | requests | ack p50 ms | ack p99 ms | ack max ms | errors |\n\
         |---|---|---|---|---|---|---|\n",
    );
    let mut subjects = vec![("gateway", true), ("gateway", false)];
    let mut fsyncs = vec![];
    let mut targets = vec![];
    if peers().contains(&"rotel") {
        subjects.push(("rotel", false));
    }
    // The disk's own flush latency, read just before the durable rows, at about their rate of
    // group commits: the durable target is relative to it.
    let (disk_p50, disk_p99, flushes) = crate::disk::fdatasync_ms(opts.secs(10.0), 100.0).await?;
    for (peer, durable) in subjects {
        for protocol in [Protocol::Grpc, Protocol::Http] {
            let sink = Sink::start().await?;
            let collector = start_peer(peer, &sink, durable).await?;
            let report = load::run(
                steady_load(protocol, collector.url(protocol), opts.secs(15.0)),
                Arc::new(Live::default()),
            )
            .await?;
            if durable {
                let count = collector.metric("gateway_spool_fsync_seconds_count").await;
                let sum = collector.metric("gateway_spool_fsync_seconds_sum").await;
                fsyncs.push(format!(
                    "{protocol:?}: {count} group commits ({:.1} requests each), fsync mean {:.2} ms",
                    report.requests as f64 / count,
                    sum / count * 1e3
                ));
            }
            let p99 = report.percentile_ms(0.99);
            match (peer, durable) {
                ("gateway", true) => targets.push(format!(
                    "spool, {protocol:?}: ack p99 {p99:.2} ms against the disk's fdatasync p99 + 1 ms = {:.2} ms: {}",
                    disk_p99 + 1.0,
                    if p99 <= disk_p99 + 1.0 { "met" } else { "not met" }
                )),
                ("gateway", false) => targets.push(format!(
                    "memory queue, {protocol:?}: ack p99 {p99:.2} ms against 3 ms: {}",
                    if p99 <= 3.0 { "met" } else { "not met" }
                )),
                _ => {}
            }
            let label = match (peer, durable) {
                ("gateway", true) => "gateway (spool on disk, fsync always)",
                ("gateway", false) => "gateway (memory queue)",
                _ => "rotel (memory only)",
            };
            let row = format!(
                "| {label} | {protocol:?} | {} | {:.2} | {p99:.2} | {:.2} | {} |",
                report.requests,
                report.percentile_ms(0.5),
                report.max_ms(),
                report.errors_text()
            );
            println!("{row}");
            t += &row;
            t.push('\n');
        }
    }
    let line = format!(
        "\nDisk: {flushes} appends of 40 KiB + fdatasync at 100/s just before, fdatasync p50 {disk_p50:.2} ms, p99 {disk_p99:.2} ms.\n\
         Spool: {}.\nTargets: {}.\n",
        fsyncs.join("; "),
        targets.join("; ")
    );
    println!("{line}");
    t += &line;
    Ok(t)
}

/// Scenario 5: complete traces per second (spans and TraceInfo in MLflow) through the gateway
/// against MLflow's own StartTraceV3 ceiling, on SQLite and on PostgreSQL.
async fn complete_traces(opts: &Options) -> anyhow::Result<String> {
    let mut t = format!(
        "### 5. Complete traces/s (10-span traces, spans + TraceInfo) vs MLflow's StartTraceV3 ceiling\n\n\
         | backend | StartTraceV3 ceiling /s on the gateway's body, mean (before / after the gateway; {TRACE_INFO_CLIENTS} clients, traces pre-ingested, kept-alive connections) | through the gateway ({GATEWAY_TRACE_INFO_CONCURRENCY} TraceInfo writers, its default), complete traces/s | ratio | all complete in MLflow |\n\
         |---|---|---|---|---|\n",
    );
    for backend in ["SQLite", "PostgreSQL"] {
        let postgres = if backend == "PostgreSQL" {
            match Postgres::start() {
                Ok(pg) => {
                    println!("PostgreSQL: {}", pg.version());
                    Some(pg)
                }
                Err(e) => {
                    let row = format!("| PostgreSQL | not measured: {e:#} | | | |");
                    println!("{row}");
                    t += &row;
                    t.push('\n');
                    continue;
                }
            }
        } else {
            None
        };
        let mlflow = Mlflow::start(postgres.as_ref().map(|p| p.uri.clone())).await?;
        // Kept-alive connections, as the gateway uses; fresh ones measured the same within
        // noise. Measured before and after the gateway's run: the ceiling drifts between runs,
        // so one reading taken minutes away from the gateway's window made the ratio swing
        // with it.
        let window = opts.secs(CEILING_WINDOW_SECS);
        let mut traces = CeilingTraces::new(&mlflow).await?;
        traces
            .top_up(
                &mlflow,
                (window.as_secs_f64() * FIRST_CEILING_TRACES_PER_SEC) as usize,
            )
            .await?;
        let before = start_trace_ceiling(&mlflow, &mut traces, window).await?;
        println!("  StartTraceV3/s before: {before:.1}");
        let (rate, complete, acked) = gateway_complete_traces(&mlflow, before, opts).await?;
        let second = (AFTER_OVER_BEFORE * before).max(MIN_CEILING_TRACES_PER_SEC);
        traces
            .top_up(&mlflow, (window.as_secs_f64() * second) as usize)
            .await?;
        let after = start_trace_ceiling(&mlflow, &mut traces, window).await?;
        println!("  StartTraceV3/s after: {after:.1}");
        let ceiling = (before + after) / 2.0;
        let row = format!(
            "| {backend} | {ceiling:.1} ({before:.1} / {after:.1}) | {rate:.1} | {:.2} | {} |",
            rate / ceiling,
            same(acked, complete),
        );
        println!("{row}");
        t += &row;
        t.push('\n');
        drop(mlflow);
        drop(postgres);
    }
    Ok(t)
}

/// Traces whose spans are in MLflow and that have no StartTraceV3 yet: what the ceiling readings
/// call StartTraceV3 on. The second reading uses what the first left, topped up.
pub(crate) struct CeilingTraces {
    experiment_id: String,
    ids: Vec<[u8; 16]>,
}

impl CeilingTraces {
    pub(crate) async fn new(mlflow: &Mlflow) -> anyhow::Result<Self> {
        Ok(Self {
            experiment_id: mlflow.create_experiment("start-trace-ceiling").await?,
            ids: Vec::new(),
        })
    }

    /// Ingests fresh traces' spans in bulk, 1000 spans a request from INGEST_CLIENTS connections,
    /// until at least `wanted` traces are ready.
    pub(crate) async fn top_up(&mut self, mlflow: &Mlflow, wanted: usize) -> anyhow::Result<()> {
        let missing = wanted.saturating_sub(self.ids.len());
        if missing == 0 {
            return Ok(());
        }
        let started = Instant::now();
        let template = Arc::new(Template::new(1000));
        let requests = missing.div_ceil(template.traces);
        let mut tasks = tokio::task::JoinSet::new();
        for client in 0..INGEST_CLIENTS {
            let template = template.clone();
            let (url, exp) = (mlflow.url.clone(), self.experiment_id.clone());
            // Spread the requests over the clients, the first ones taking the remainder.
            let mine = requests / INGEST_CLIENTS + usize::from(client < requests % INGEST_CLIENTS);
            tasks.spawn(async move {
                let http = reqwest::Client::new();
                let mut ids = Vec::new();
                for _ in 0..mine {
                    let (body, trace_ids) = template.stamp();
                    procs::spans_post(&http, &url, &exp, body)
                        .send()
                        .await?
                        .error_for_status()?;
                    ids.extend(trace_ids);
                }
                anyhow::Ok(ids)
            });
        }
        while let Some(ids) = tasks.join_next().await {
            self.ids.extend(ids??);
        }
        println!(
            "  pre-ingested {} traces' spans in {:.1} s",
            requests * template.traces,
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

/// MLflow's StartTraceV3 rate on `traces` (spans already in), from TRACE_INFO_CLIENTS client
/// threads, each with a kept-alive connection, for `window`. Consumes the traces it called
/// StartTraceV3 on.
async fn start_trace_ceiling(
    mlflow: &Mlflow,
    traces: &mut CeilingTraces,
    window: Duration,
) -> anyhow::Result<f64> {
    Ok(start_trace_ceiling_p99(mlflow, traces, window).await?.0)
}

/// `start_trace_ceiling`, and the p99 of its calls' latency in milliseconds.
pub(crate) async fn start_trace_ceiling_p99(
    mlflow: &Mlflow,
    traces: &mut CeilingTraces,
    window: Duration,
) -> anyhow::Result<(f64, f64)> {
    let ids = Arc::new(std::sync::Mutex::new(std::mem::take(&mut traces.ids)));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..TRACE_INFO_CLIENTS {
        let ids = ids.clone();
        let (url, exp) = (mlflow.url.clone(), traces.experiment_id.clone());
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()?;
            let mut took = Vec::new();
            while started.elapsed() < window {
                let Some(id) = ids.lock().ok().and_then(|mut v| v.pop()) else {
                    break;
                };
                let call = Instant::now();
                procs::start_trace_post(&http, &url, &exp, &id)
                    .send()
                    .await?
                    .error_for_status()?;
                took.push(call.elapsed().as_secs_f64() * 1000.0);
            }
            anyhow::Ok(took)
        }));
    }
    let mut took = Vec::new();
    for task in tasks {
        took.extend(task.await??);
    }
    let done = took.len();
    took.sort_by(f64::total_cmp);
    let p99 = took
        .get((took.len() as f64 * 0.99) as usize)
        .or(took.last())
        .copied()
        .unwrap_or(f64::NAN);
    let rate = done as f64 / started.elapsed().as_secs_f64();
    traces.ids = ids
        .lock()
        .map(|mut v| std::mem::take(&mut *v))
        .unwrap_or_default();
    ensure!(
        !traces.ids.is_empty(),
        "ran out of pre-ingested traces; the ceiling is higher than measured"
    );
    Ok((rate, p99))
}

/// Offers 1.2x the ceiling in 5-span traces; the completion rate comes from the gateway's
/// TraceInfo counter over the saturated window, the final count from MLflow's store.
async fn gateway_complete_traces(
    mlflow: &Mlflow,
    ceiling: f64,
    opts: &Options,
) -> anyhow::Result<(f64, u64, u64)> {
    let gateway = procs::start_gateway(&GatewayOptions {
        tls: None,
        tenants: Vec::new(),
        mlflow_url: mlflow.url.clone(),
        durable: true,
        trace_info_concurrency: GATEWAY_TRACE_INFO_CONCURRENCY,
        binary: None,
        ingest_concurrency: None,
    })
    .await?;
    let exp = mlflow.create_experiment("through-gateway").await?;
    let offered_spans = 1.2 * ceiling * SPANS_PER_TRACE as f64;
    let run = through_gateway(
        &gateway,
        mlflow,
        LoadSpec {
            ca: None,
            protocol: Protocol::Grpc,
            target: gateway.grpc_url.clone(),
            connections: 2,
            spans_per_request: 50,
            trace_spans: crate::payload::SPANS_PER_TRACE,
            rate: Some(offered_spans),
            duration: opts.secs(24.0),
            headers: vec![("x-mlflow-experiment-id".into(), exp.clone())],
        },
        ("gateway_export_traces_total", |r| r.acked_traces),
        Duration::from_secs(180),
    )
    .await?;
    println!("  CPU in the window (% of one core): {}", run.cpu);
    ensure!(
        run.report.error_count() == 0,
        "load errors: {}",
        run.report.errors_text()
    );
    let complete = mlflow.sql_scalar(&format!(
        "SELECT COUNT(*) FROM trace_info WHERE experiment_id = {exp} AND client_request_id IS NOT NULL"
    ))? as u64;
    Ok((run.rate, complete, run.report.acked_traces))
}

/// One load through the gateway into MLflow, measured the same way in scenarios 3 and 5.
struct GatewayRun {
    /// Rate of the watched gateway counter over the saturated window.
    rate: f64,
    /// CPU of the gateway, MLflow and the load generator over that window.
    cpu: String,
    report: LoadReport,
}

/// Runs `spec` against the gateway. After a quarter of the run has settled, measures the rate of
/// `counter` (a gateway metric) and everyone's CPU over the rest; then waits, up to
/// `drain_limit`, until the counter reaches what the load had acknowledged (`counter`'s second
/// half picks that figure from the report).
async fn through_gateway(
    gateway: &Collector,
    mlflow: &Mlflow,
    spec: LoadSpec,
    counter: (&str, fn(&LoadReport) -> u64),
    drain_limit: Duration,
) -> anyhow::Result<GatewayRun> {
    let (metric, acknowledged) = counter;
    let duration = spec.duration;
    let load = tokio::spawn(load::run(spec, Arc::new(Live::default())));
    let settle = duration.mul_f64(0.25);
    tokio::time::sleep(settle).await;
    let (c0, t0) = (gateway.metric(metric).await, Instant::now());
    let cpu0 = Cpu::sample(gateway, mlflow);
    progress(gateway, duration - settle - Duration::from_millis(200)).await;
    let (c1, window) = (gateway.metric(metric).await, t0.elapsed());
    let cpu = Cpu::sample(gateway, mlflow).since(&cpu0, window);
    let report = load.await??;
    let drained = Instant::now();
    while gateway.metric(metric).await < acknowledged(&report) as f64
        && drained.elapsed() < drain_limit
    {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(GatewayRun {
        rate: (c1 - c0) / window.as_secs_f64(),
        cpu,
        report,
    })
}
