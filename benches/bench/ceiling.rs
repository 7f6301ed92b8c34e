//! Scenario 2: the sustained ceiling into the sink, the gateway beside rotel. Each collector is
//! loaded flat out over OTLP/gRPC for a fixed time; what it sustains is every span it
//! acknowledged (and, for the gateway, every trace's TraceInfo) delivered, divided by the time
//! from the first request until the last of them landed. A collector that acknowledges faster
//! than it delivers pays for its backlog there. The gateway is also measured into a sink that
//! leaves Nagle's algorithm on, with its memory queue (acknowledged from memory, as rotel
//! acknowledges) beside its spool on disk, and with an ingest turn for every core: whether the
//! core its default keeps for delivery is what holds it back, or the machine.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::Options;
use crate::load::{self, Live, LoadReport, LoadSpec, Protocol};
use crate::procs::Collector;
use crate::scenarios::{cores, peers, same, start_peer_with};
use crate::sink::Sink;

/// Flat out for this long (scaled by `--quick`), as the independent measurement did.
const FLAT_OUT_SECS: f64 = 15.0;
const CONNECTIONS: usize = 8;
const SPANS_PER_REQUEST: usize = 100;
/// The gateway's TraceInfo writers here: one StartTraceV3 per 4 spans is tens of thousands a
/// second, more than the default 4 (sized for MLflow) carry.
const TRACE_INFO_CONCURRENCY: usize = 16;
/// Longest wait for a backlog to land after the load stops.
const LANDING_LIMIT: Duration = Duration::from_secs(300);

/// One flat-out run and its landing.
struct Run {
    acked_per_sec: f64,
    sustained: f64,
    trace_infos_per_sec: f64,
    all_in: String,
    cpu_per_million: f64,
    peak_rss_mib: f64,
    ack_p99_ms: f64,
    /// The gateway's requests' time waiting for an ingest turn, as a share of their ack time.
    ingest_wait_share: Option<f64>,
    errors: String,
    /// Cores used until the last landed: the collector, the sink, the load generator.
    cores: (f64, f64, f64),
}

/// CPU seconds of this process's threads, split into the sink's (named "sink") and the rest
/// (the load generator's).
fn own_cpu_seconds() -> (f64, f64) {
    fixtures::procfs::own_threads_cpu_seconds()
        .into_iter()
        .fold((0.0, 0.0), |(sink, rest), (name, cpu)| {
            if name == "sink" {
                (sink + cpu, rest)
            } else {
                (sink, rest + cpu)
            }
        })
}

pub async fn ceiling(opts: &Options) -> anyhow::Result<String> {
    let mut t = format!(
        "### 2. Sustained ceiling into the sink (OTLP/gRPC, {CONNECTIONS} connections, {SPANS_PER_REQUEST} spans/request, flat out {:.0} s; sustained = delivered ÷ time until the last landed)\n\n\
         | trace | collector | sink | acked spans/s | sustained spans/s | ratio to rotel | TraceInfos/s | all delivered (spans; TraceInfos) | CPU s per 1M spans | cores: collector / sink / load generator (all, of the machine's) | cores all three would need at rotel's rate | peak RSS MiB | ack p99 ms | ack time waiting for an ingest turn | errors |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        opts.secs(FLAT_OUT_SECS).as_secs_f64()
    );
    for trace_spans in [4, 10] {
        let mut rotel = None;
        let mut nodelay_rate = None;
        // (collector, TCP_NODELAY at the sink, the gateway's spool on disk, its ingest turns)
        let mut runs: Vec<(&str, bool, bool, Option<usize>)> = peers()
            .into_iter()
            .rev()
            .map(|p| (p, true, true, None))
            .collect();
        if trace_spans == 4 && runs.iter().any(|(p, ..)| *p == "gateway") {
            // Nagle on at the sink: where pipelined TraceInfo writes would stall, if anywhere.
            runs.push(("gateway", false, true, None));
            // The memory queue (no data_dir, the default): acknowledged from memory, as rotel.
            runs.push(("gateway", true, false, None));
            // No core kept for delivery: if the machine is what limits, this sustains no more.
            runs.push(("gateway", true, true, Some(cores())));
        }
        for (peer, nodelay, durable, ingest_turns) in runs {
            let sink = if nodelay {
                Sink::start().await?
            } else {
                Sink::start_with_nagle().await?
            };
            let collector =
                start_peer_with(peer, &sink, durable, TRACE_INFO_CONCURRENCY, ingest_turns).await?;
            let r = flat_out(&collector, &sink, peer == "gateway", trace_spans, opts).await?;
            // The gateway as shipped into a sink as MLflow: the row the target is read from.
            let headline = peer == "gateway" && nodelay && durable && ingest_turns.is_none();
            let ratio = match (peer, nodelay, rotel) {
                ("rotel", _, _) => {
                    rotel = Some(r.sustained);
                    String::new()
                }
                (_, true, Some(base)) if headline => format!("**{:.2}×**", r.sustained / base),
                (_, true, Some(base)) => format!("{:.2}×", r.sustained / base),
                (_, false, _) => format!(
                    "{} (**{:.2}×** of Nagle off)",
                    rotel.map_or(String::new(), |b| format!("{:.2}×", r.sustained / b)),
                    r.sustained / nodelay_rate.unwrap_or(f64::NAN)
                ),
                _ => String::new(),
            };
            if headline {
                nodelay_rate = Some(r.sustained);
            }
            let collector = match (peer, durable, ingest_turns) {
                ("gateway", true, None) => "gateway (spool on disk)".to_string(),
                ("gateway", true, Some(n)) => format!("gateway (spool on disk, {n} ingest turns)"),
                ("gateway", false, _) => "gateway (memory queue)".to_string(),
                (peer, ..) => peer.to_string(),
            };
            // Each process's CPU per span as measured, at the rate rotel sustained: above the
            // machine's cores, that rate cannot be had here at these costs per span.
            let all_cores = r.cores.0 + r.cores.1 + r.cores.2;
            let needed = match rotel {
                Some(base) if peer != "rotel" => {
                    format!("{:.2}", all_cores / r.sustained.max(1.0) * base)
                }
                _ => String::new(),
            };
            let row = format!(
                "| {trace_spans} spans | {collector} | {} | {:.0} | {:.0} | {ratio} | {} | {} | {:.2} | {:.2} / {:.2} / {:.2} ({:.2} of {}) | {needed} | {:.1} | {:.2} | {} | {} |",
                if nodelay { "TCP_NODELAY" } else { "Nagle on" },
                r.acked_per_sec,
                r.sustained,
                if peer == "gateway" {
                    format!("{:.0}", r.trace_infos_per_sec)
                } else {
                    "none written".into()
                },
                r.all_in,
                r.cpu_per_million,
                r.cores.0,
                r.cores.1,
                r.cores.2,
                all_cores,
                cores(),
                r.peak_rss_mib,
                r.ack_p99_ms,
                r.ingest_wait_share
                    .map_or("".to_string(), |w| format!("{:.0} %", 100.0 * w)),
                r.errors,
            );
            println!("{row}");
            t += &row;
            t.push('\n');
        }
    }
    Ok(t)
}

async fn flat_out(
    collector: &Collector,
    sink: &Sink,
    trace_infos: bool,
    trace_spans: usize,
    opts: &Options,
) -> anyhow::Result<Run> {
    let duration = opts.secs(FLAT_OUT_SECS);
    let spec = LoadSpec {
        ca: None,
        protocol: Protocol::Grpc,
        target: collector.grpc_url.clone(),
        connections: CONNECTIONS,
        spans_per_request: SPANS_PER_REQUEST,
        trace_spans,
        rate: None,
        duration,
        headers: vec![],
    };
    let ingest_wait = || collector.metric("gateway_receiver_ingest_wait_seconds_sum");
    let wait0 = ingest_wait().await;
    let (cpu0, own0, started) = (collector.cpu_seconds(), own_cpu_seconds(), Instant::now());
    let report: LoadReport = load::run(spec, Arc::new(Live::default())).await?;
    let waited = ingest_wait().await - wait0;
    let acked_secs = started.elapsed().as_secs_f64();
    let landed = || {
        sink.spans() >= report.acked_spans
            && (!trace_infos || sink.trace_infos() >= report.acked_traces)
    };
    while !landed() && started.elapsed() < duration + LANDING_LIMIT {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let until_last = started.elapsed().as_secs_f64();
    let cpu = collector.cpu_seconds() - cpu0;
    let own = own_cpu_seconds();
    let delivered = sink.spans();
    Ok(Run {
        acked_per_sec: report.acked_spans as f64 / acked_secs,
        sustained: delivered as f64 / until_last,
        trace_infos_per_sec: sink.trace_infos() as f64 / until_last,
        all_in: if trace_infos {
            format!(
                "{}; {}",
                same(report.acked_spans, delivered),
                same(report.acked_traces, sink.trace_infos())
            )
        } else {
            same(report.acked_spans, delivered)
        },
        cpu_per_million: cpu / (delivered.max(1) as f64 / 1e6),
        peak_rss_mib: collector.peak_rss_mib(),
        ack_p99_ms: report.percentile_ms(0.99),
        ingest_wait_share: collector.api_url.as_ref().map(|_| {
            let acking: f64 = report.latencies_us.iter().map(|&us| f64::from(us)).sum();
            waited / (acking / 1e6).max(f64::MIN_POSITIVE)
        }),
        errors: report.errors_text(),
        cores: (
            cpu / until_last,
            (own.0 - own0.0) / until_last,
            (own.1 - own0.1) / until_last,
        ),
    })
}
