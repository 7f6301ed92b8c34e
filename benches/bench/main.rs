//! Benchmarks: the gateway side by side with rotel and with MLflow itself.
//!
//! `cargo bench --bench bench` runs every scenario and prints one table row each (see
//! BENCHMARKS.md); `-- --only 2,3` picks scenarios, `-- --quick` shortens every run;
//! `-- --ab A,B` measures two gateway builds in interleaved windows instead (`ab.rs`).
//! Under `cargo test` (no `--bench` argument) the same binary runs a short smoke check instead:
//! sent == delivered through the gateway into the fast sink, over gRPC and HTTP. It checks
//! correctness only, never speed.
//!
//! The "sink" stands in for MLflow's endpoints to find a collector's own ceiling; it is not an
//! MLflow and shows nothing about MLflow itself. Scenarios 3 and 5 use a real MLflow 3.17.2.

mod ab;
mod bombs;
mod ceiling;
mod disk;
mod load;
mod payload;
mod procs;
mod sampling;
mod scenarios;
mod sink;
mod tenancy;

use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // reqwest is built without a default TLS provider (the gateway picks ring).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: cannot start a runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = if let Some(i) = args.iter().position(|a| a == "--load") {
        runtime.block_on(load_only(&args[i + 1..]))
    } else if let Some(i) = args.iter().position(|a| a == "--sink") {
        runtime.block_on(sink_only(&args[i + 1..]))
    } else if args.iter().any(|a| a == "--bench") {
        let opts = Options::parse(&args);
        match &opts.ab {
            Some(builds) => runtime.block_on(ab::run(&opts, builds)),
            None => runtime.block_on(scenarios::run_all(opts)),
        }
    } else {
        runtime.block_on(scenarios::smoke())
    };
    if let Err(e) = result {
        eprintln!("bench: {e:#}");
        std::process::exit(1);
    }
}

/// `--load grpc|http URL CONNECTIONS SPANS_PER_REQUEST RATE|max SECONDS [HEADER=VALUE]`: only the
/// load generator, against any OTLP endpoint; prints its report.
async fn load_only(args: &[String]) -> anyhow::Result<()> {
    use anyhow::Context;
    let arg = |i: usize| {
        args.get(i)
            .map(String::as_str)
            .context("missing --load argument")
    };
    let spec = load::LoadSpec {
        ca: None,
        protocol: if arg(0)? == "grpc" {
            load::Protocol::Grpc
        } else {
            load::Protocol::Http
        },
        target: arg(1)?.to_string(),
        connections: arg(2)?.parse()?,
        spans_per_request: arg(3)?.parse()?,
        trace_spans: crate::payload::trace_spans_from_env(),
        rate: match arg(4)? {
            "max" => None,
            r => Some(r.parse()?),
        },
        duration: Duration::from_secs_f64(arg(5)?.parse()?),
        headers: args
            .get(6)
            .and_then(|h| h.split_once('='))
            .map(|(k, v)| vec![(k.to_string(), v.to_string())])
            .unwrap_or_default(),
    };
    let r = load::run(spec, Default::default()).await?;
    println!(
        "requests {} | acked spans {} ({:.0}/s) | traces {} | ack p50 {:.2} ms p99 {:.2} ms max {:.2} ms | errors: {}",
        r.requests,
        r.acked_spans,
        r.spans_per_sec(),
        r.acked_traces,
        r.percentile_ms(0.5),
        r.percentile_ms(0.99),
        r.max_ms(),
        r.errors_text()
    );
    Ok(())
}

/// `--sink SECONDS`: only the sink, for profiling a collector by hand (point its tracking URI
/// or exporter at the printed URL, load it with `--load`); prints what arrived each second.
async fn sink_only(args: &[String]) -> anyhow::Result<()> {
    use anyhow::Context;
    let seconds: u64 = args
        .first()
        .context("missing --sink SECONDS")?
        .parse()
        .context("--sink SECONDS")?;
    let sink = sink::Sink::start().await?;
    println!("sink {}", sink.url());
    let (mut spans, mut infos) = (0, 0);
    for _ in 0..seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (s, i) = (sink.spans(), sink.trace_infos());
        println!(
            "spans {s} (+{}) | trace infos {i} (+{}) | bad requests {}",
            s - spans,
            i - infos,
            sink.bad_requests()
        );
        (spans, infos) = (s, i);
    }
    Ok(())
}

#[derive(Clone, Debug)]
pub struct Options {
    /// Scenario numbers to run (1-8).
    pub only: Vec<u32>,
    /// Scale every measured duration by this factor (`--quick`: 0.25).
    pub scale: f64,
    /// `--ab A,B`: gateway builds to compare in interleaved windows, instead of the scenarios.
    pub ab: Option<Vec<std::path::PathBuf>>,
}

impl Options {
    fn parse(args: &[String]) -> Self {
        let mut only = vec![1, 2, 3, 4, 5, 6, 7, 8];
        let mut scale = 1.0;
        let mut ab = None;
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--only" => {
                    if let Some(list) = it.next() {
                        only = list
                            .split(',')
                            .filter_map(|n| n.trim().parse().ok())
                            .collect();
                    }
                }
                "--quick" => scale = 0.25,
                "--ab" => ab = it.next().map(|list| ab::builds(list)),
                _ => {}
            }
        }
        Self { only, scale, ab }
    }

    pub fn secs(&self, full: f64) -> Duration {
        Duration::from_secs_f64((full * self.scale).max(2.0))
    }
}
