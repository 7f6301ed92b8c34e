//! Interleaved windows: two or more gateways measured side by side, for differences smaller
//! than this machine's drift. `--ab A,B` compares two builds; scenario 7 compares TLS with
//! tenant tokens against plaintext.
//!
//! Run one after the other, two full scenario runs of the same build have differed by more than
//! most changes move (scenario 4's spool p99 ranged 4.5-14 ms over six runs, and rotel's own rows
//! moved with it). Here the gateways run at once, each with its own sink, and the load goes to
//! one of them at a time in short windows, the order reversed every round (A B, B A, ...), so
//! drift on the host lands on each alike. Each runs as shipped (durable spool, fsync always)
//! at scenario 4's load: 10k spans/s, 100 spans/request, 4 connections, into the sink.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::Options;
use crate::load::{self, Live, LoadReport, Protocol};
use crate::procs::{self, Collector, GatewayOptions};
use crate::scenarios::{
    CONNECTIONS, GATEWAY_TRACE_INFO_CONCURRENCY, STEADY_SPANS_PER_REQUEST, round_order, steady_load,
};
use crate::sink::Sink;

/// `--ab`'s windows per gateway and protocol (~1000 requests each at full length): one stalled
/// window still moves the pooled p99, which is why the median of the windows' p99s is printed.
const AB_ROUNDS: usize = 8;
/// Length of one of `--ab`'s windows (`--quick` scales it like every scenario's).
const AB_WINDOW_SECS: f64 = 10.0;
/// One unmeasured window per gateway first.
const WARM_UP: Duration = Duration::from_secs(3);

/// The word for the build this bench was compiled with.
const CURRENT: &str = "current";

/// Parses `--ab`'s argument: comma-separated gateway binaries, `current` for this build.
pub fn builds(list: &str) -> Vec<PathBuf> {
    list.split(',')
        .map(str::trim)
        .filter(|b| !b.is_empty())
        .map(|b| match b {
            CURRENT => PathBuf::from(env!("CARGO_BIN_EXE_mlflow-otlp-gateway")),
            path => PathBuf::from(path),
        })
        .collect()
}

/// One gateway of an interleaved comparison: what it is called and how it runs (its sink is
/// filled in).
pub struct Variant {
    pub label: String,
    pub options: GatewayOptions,
}

/// The gateway with the shipped settings (durable spool) and `binary`, `None` for this build.
pub fn shipped(binary: Option<PathBuf>) -> GatewayOptions {
    GatewayOptions {
        tls: None,
        tenants: Vec::new(),
        mlflow_url: String::new(),
        durable: true,
        trace_info_concurrency: GATEWAY_TRACE_INFO_CONCURRENCY,
        binary,
        ingest_concurrency: None,
    }
}

struct Subject {
    label: String,
    _sink: Sink,
    gateway: Collector,
    /// Every window's requests, merged.
    merged: LoadReport,
    /// Each window's own p99: their median is not moved by one stalled window.
    window_p99s: Vec<f64>,
    cpu_seconds: f64,
}

struct Row {
    p50: f64,
    window_p99: f64,
    cpu_per_million: f64,
}

pub async fn run(opts: &Options, builds: &[PathBuf]) -> anyhow::Result<()> {
    anyhow::ensure!(builds.len() >= 2, "--ab needs two builds: A,B");
    for b in builds {
        anyhow::ensure!(b.is_file(), "--ab: no gateway binary at {}", b.display());
    }
    let variants: Vec<Variant> = builds
        .iter()
        .map(|b| Variant {
            label: b.display().to_string(),
            options: shipped(Some(b.clone())),
        })
        .collect();
    let windows = Windows {
        rounds: AB_ROUNDS,
        length: opts.secs(AB_WINDOW_SECS),
    };
    let table = interleave(&variants, windows, "Interleaved A/B").await?;
    println!("==== interleaved A/B ====\n\n{table}");
    Ok(())
}

/// How many windows per gateway and protocol, and how long each.
#[derive(Clone, Copy)]
pub struct Windows {
    pub rounds: usize,
    pub length: Duration,
}

/// Measures `variants` in interleaved windows over gRPC, then HTTP; returns the table, with
/// each variant's ratios to the first.
pub async fn interleave(
    variants: &[Variant],
    windows: Windows,
    title: &str,
) -> anyhow::Result<String> {
    let (rounds, window) = (windows.rounds, windows.length);
    let mut table = format!(
        "### {title}: {rounds} windows of {:.1} s per gateway and protocol, order reversed \
         every round; 10k spans/s, {STEADY_SPANS_PER_REQUEST} spans/request, {CONNECTIONS} connections, \
         spool on disk (fsync always), into the sink\n\n\
         | gateway | protocol | requests | ack p50 ms | p90 ms | p99 ms | median of window p99s, ms | p99.9 ms | max ms | fsync mean ms | CPU s per 1M spans | errors |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
        window.as_secs_f64()
    );
    for protocol in [Protocol::Grpc, Protocol::Http] {
        let mut subjects = Vec::with_capacity(variants.len());
        for v in variants {
            let sink = Sink::start().await?;
            let gateway = procs::start_gateway(&GatewayOptions {
                mlflow_url: sink.url(),
                ..v.options.clone()
            })
            .await?;
            subjects.push(Subject {
                label: v.label.clone(),
                _sink: sink,
                gateway,
                merged: LoadReport::default(),
                window_p99s: Vec::new(),
                cpu_seconds: 0.0,
            });
        }
        // Unmeasured: the first window to a fresh gateway pays for its connections, page
        // faults and first spool segment. Without it, in an A/A run the first gateway listed
        // came out slower than its twin in both protocols (p50 and CPU ~5 %).
        for s in &subjects {
            load::run(
                s.gateway.aim(steady_load(protocol, String::new(), WARM_UP)),
                Arc::new(Live::default()),
            )
            .await?;
        }
        for round in 0..rounds {
            for i in round_order(round, subjects.len()) {
                let s = &mut subjects[i];
                let cpu_before = s.gateway.cpu_seconds();
                let report = load::run(
                    s.gateway.aim(steady_load(protocol, String::new(), window)),
                    Arc::new(Live::default()),
                )
                .await?;
                s.window_p99s.push(report.percentile_ms(0.99));
                s.cpu_seconds += s.gateway.cpu_seconds() - cpu_before;
                s.merged.absorb(report);
            }
        }
        let mut rows = Vec::with_capacity(subjects.len());
        for s in &mut subjects {
            let m = &s.merged;
            let fsyncs = s.gateway.metric("gateway_spool_fsync_seconds_count").await;
            let fsync_seconds = s.gateway.metric("gateway_spool_fsync_seconds_sum").await;
            s.window_p99s.sort_unstable_by(f64::total_cmp);
            let row = Row {
                p50: m.percentile_ms(0.5),
                window_p99: s.window_p99s[s.window_p99s.len() / 2],
                cpu_per_million: s.cpu_seconds / (m.acked_spans as f64 / 1e6),
            };
            let line = format!(
                "| {} | {protocol:?} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.3} | {:.2} | {} |",
                s.label,
                m.requests,
                row.p50,
                m.percentile_ms(0.9),
                m.percentile_ms(0.99),
                row.window_p99,
                m.percentile_ms(0.999),
                m.max_ms(),
                fsync_seconds / fsyncs * 1e3,
                row.cpu_per_million,
                m.errors_text()
            );
            println!("{line}");
            table += &line;
            table.push('\n');
            rows.push(row);
        }
        for (s, row) in subjects.iter().zip(&rows).skip(1) {
            let line = format!(
                "\n{protocol:?}, {} ÷ {}: ack p50 {:.2}×, median window p99 {:.2}×, CPU {:.2}×\n",
                s.label,
                subjects[0].label,
                row.p50 / rows[0].p50,
                row.window_p99 / rows[0].window_p99,
                row.cpu_per_million / rows[0].cpu_per_million
            );
            println!("{line}");
            table += &line;
        }
        table.push('\n');
    }
    Ok(table)
}
