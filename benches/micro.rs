//! `cargo bench --bench micro -- [SPANS_PER_TRACE] [SECONDS]`: the gateway's per-trace CPU on
//! one thread, stage by stage, with no network, disk or runtime in the way: the same request (100 spans, fresh trace
//! ids each time) is parsed, screened, mapped, re-encoded, framed for the spool (header and
//! zstd), given its StartTraceV3 bodies and read back from its frame, as ingest, the
//! TraceInfo writers and the batcher do. For finding
//! where a short trace's CPU goes; scenario 2 is the measurement that counts. The allocator is
//! the gateway's. Under `cargo test` it runs briefly, as a check that the stages still run.

#[path = "bench/payload.rs"]
#[allow(dead_code)]
mod payload;

use std::time::{Duration, Instant};

use bytes::Bytes;

use mlflow_otlp_gateway::config::MappingConfig;
use mlflow_otlp_gateway::map::request::RequestMapper;
use mlflow_otlp_gateway::map::rules::MappingTable;
use mlflow_otlp_gateway::map::traces::TraceTracker;
use mlflow_otlp_gateway::otlp::{self, schema::MLFLOW_MAX_NESTING};
use mlflow_otlp_gateway::pipeline::screen;
use mlflow_otlp_gateway::spool::{SpoolRecord, frame};
use mlflow_otlp_gateway::vocab::{ExperimentRef, Transport};

use payload::Template;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SPANS_PER_REQUEST: usize = 100;
const STAGES: [&str; 7] = [
    "parse",
    "screen",
    "map",
    "encode spans",
    "spool frame (header, zstd)",
    "StartTraceV3 bodies",
    "spool read back",
];

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; under `cargo test` (test filters and flags, if any, are
    // not ours) it runs briefly with the defaults.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let measuring = args.iter().any(|a| a == "--bench");
    let args: Vec<&String> = match measuring {
        true => args.iter().filter(|a| !a.starts_with("--")).collect(),
        false => Vec::new(),
    };
    let trace_spans = args.first().map(|a| a.parse()).transpose()?.unwrap_or(4);
    let default_secs = if measuring { 5.0 } else { 0.2 };
    let seconds: f64 = args
        .get(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(default_secs);
    let template = Template::with_trace_spans(SPANS_PER_REQUEST, trace_spans);
    let mapping = MappingTable::new(&MappingConfig::default());
    let tracker = TraceTracker::new(100_000, Duration::from_secs(30));
    let experiment = std::sync::Arc::new(ExperimentRef::Id("1".into()));
    let mapper = RequestMapper {
        mapping: &mapping,
        tracker: &tracker,
        experiment: &experiment,
        tenant: None,
    };
    let mut spent = [Duration::ZERO; STAGES.len()];
    let (mut requests, mut traces) = (0u64, 0u64);
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    while Instant::now() < end {
        let body = Bytes::from(template.stamp().0);
        let mut lap = Instant::now();
        let mut mark = |stage: usize| {
            let now = Instant::now();
            spent[stage] += now - lap;
            lap = now;
        };
        let parsed = otlp::parse_request(&body, MLFLOW_MAX_NESTING)?;
        mark(0);
        let mut screened = screen::screen(parsed, Transport::Grpc, None);
        mark(1);
        let roots = mapper.map(&mut screened.resource_spans);
        mark(2);
        let encoded = otlp::encode_request(&screened.resource_spans);
        mark(3);
        let record = SpoolRecord {
            experiment: ExperimentRef::Id("1".into()),
            tenant: None,
            span_count: SPANS_PER_REQUEST,
            roots,
            received_ms: 0,
            sampled: false,
            body: Bytes::from(encoded),
        };
        let mut header = Vec::with_capacity(256 + record.roots.len() * 512);
        record.encode_header_into(&mut header);
        let framed = frame::encode_compressed([&header, &record.body]);
        mark(4);
        let bodies: Vec<Vec<u8>> = record.roots.iter().map(|j| j.body_bytes("1")).collect();
        mark(5);
        let read_back = framed
            .map(frame::into_record)
            .transpose()?
            .map(SpoolRecord::decode)
            .transpose()?;
        mark(6);
        traces += record.roots.len() as u64;
        requests += 1;
        std::hint::black_box((read_back, bodies, record));
    }
    let total: Duration = spent.iter().sum();
    println!(
        "{trace_spans}-span traces, {requests} requests of {SPANS_PER_REQUEST} spans, {traces} traces, one thread"
    );
    for (stage, d) in STAGES.iter().zip(spent) {
        println!(
            "{stage:>28}: {:7.0} ns per trace ({:4.1} %)",
            d.as_nanos() as f64 / traces as f64,
            100.0 * d.as_secs_f64() / total.as_secs_f64()
        );
    }
    println!(
        "{:>28}: {:7.0} ns per trace, {:.2} s per 1M spans",
        "all",
        total.as_nanos() as f64 / traces as f64,
        total.as_secs_f64() / (requests * SPANS_PER_REQUEST as u64) as f64 * 1e6
    );
    Ok(())
}
