//! Scenario 8: tail sampling under overload. A real MLflow (SQLite, then PostgreSQL) is offered
//! ten times its measured StartTraceV3 ceiling in 4-span conversation turns for minutes; 1 % of
//! traces fail in a child span and 0.5 % are rated by feedback seconds to minutes later. The
//! sampler keeps errors, rated traces and whole sessions up to a rate ceiling set below
//! MLflow's; the rest waits on disk for the feedback window.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::ensure;
use fixtures::otlp::{SpanSpec, now_nanos, request, s, service_resource};
use prost::Message;

use crate::Options;
use crate::procs::{self, Collector, GatewayOptions, Mlflow, Postgres};
use crate::scenarios::{
    CEILING_WINDOW_SECS, CeilingTraces, FIRST_CEILING_TRACES_PER_SEC, start_trace_ceiling_p99,
};

/// Offered load over MLflow's measured StartTraceV3 ceiling, in traces (the 10x).
const OVERLOAD: f64 = 10.0;
/// The sampler's rate ceiling as a share of MLflow's: room left for errors and rated traces.
const KEPT_SHARE: f64 = 0.6;
/// Every this many traces one fails (1 %) and one is rated (0.5 %).
const ERROR_EVERY: u64 = 100;
const RATED_EVERY: u64 = 200;
/// Turns per conversation; a session gets a turn every `TURN_GAP` or so.
const TURNS: u64 = 5;
const TURN_GAP_SECS: f64 = 10.0;
const SPANS_PER_TRACE: usize = 4;
const TRACES_PER_REQUEST: u64 = 10;
const SENDERS: u64 = 4;
/// Feedback comes this long after its trace: a few seconds to a few minutes (scaled).
const FEEDBACK_DELAY_SECS: (f64, f64) = (5.0, 120.0);
/// Longer than the feedback window, so retention on disk reaches its steady size within the run.
const LOAD_SECS: f64 = 240.0;
/// Spool disk limit for the run (retention included).
const MAX_DISK_BYTES: u64 = 1 << 30;

/// What was sent for one trace.
struct Sent {
    session: u64,
    errored: bool,
    rated: bool,
}

pub async fn sampled_overload(opts: &Options) -> anyhow::Result<String> {
    let delays = feedback_delays(opts);
    let mut t = format!(
        "### 8. Tail sampling at {OVERLOAD:.0}x MLflow's StartTraceV3 ceiling ({SPANS_PER_TRACE}-span turns, \
         {TURNS}-turn sessions, 1 % errors, 0.5 % rated {:.0}-{:.0} s later)\n\n\
         | backend | MLflow ceiling traces/s (p99 ms) | offered traces/s | MLflow took traces/s (TraceInfo p99 ms) | error traces complete | rated traces complete + assessed | sessions whole | spool + retention on disk, MiB (peak / end of load / end) | gateway CPU % of a core / peak RSS MiB |\n\
         |---|---|---|---|---|---|---|---|---|\n",
        delays.0, delays.1,
    );
    for backend in ["SQLite", "PostgreSQL"] {
        let postgres = if backend == "PostgreSQL" {
            match Postgres::start() {
                Ok(pg) => Some(pg),
                Err(e) => {
                    t += &format!("| PostgreSQL | not measured: {e:#} | | | | | | | |\n");
                    continue;
                }
            }
        } else {
            None
        };
        let mlflow = Mlflow::start(postgres.as_ref().map(|p| p.uri.clone())).await?;
        let row = one_backend(backend, &mlflow, opts).await?;
        println!("{row}");
        t += &row;
        t.push('\n');
        drop(mlflow);
        drop(postgres);
    }
    Ok(t)
}

async fn one_backend(backend: &str, mlflow: &Mlflow, opts: &Options) -> anyhow::Result<String> {
    let window = opts.secs(CEILING_WINDOW_SECS);
    let mut ceiling_traces = CeilingTraces::new(mlflow).await?;
    ceiling_traces
        .top_up(
            mlflow,
            (window.as_secs_f64() * FIRST_CEILING_TRACES_PER_SEC) as usize,
        )
        .await?;
    let (ceiling, ceiling_p99) =
        start_trace_ceiling_p99(mlflow, &mut ceiling_traces, window).await?;
    println!("  {backend}: StartTraceV3 ceiling {ceiling:.1}/s, p99 {ceiling_p99:.0} ms");

    let load_time = opts.secs(LOAD_SECS);
    let delays = feedback_delays(opts);
    // The window outlasts the latest feedback with room for the decision and the queue.
    let feedback_window = delays.1 + 30.0;
    let tables = format!(
        "[sampling]\nenabled = true\ndecision_wait = \"2s\"\nfeedback_window = \"{feedback_window:.0}s\"\n\
         probability = 1.0\nmax_traces_per_second = {:.1}\n\n[feedback]\nretry_interval = \"1s\"\n\n\
         [spool]\nmax_disk_bytes = {MAX_DISK_BYTES}\n",
        KEPT_SHARE * ceiling
    );
    let gateway = procs::start_gateway_with(
        &GatewayOptions {
            tls: None,
            tenants: Vec::new(),
            mlflow_url: mlflow.url.clone(),
            durable: true,
            trace_info_concurrency: crate::scenarios::GATEWAY_TRACE_INFO_CONCURRENCY,
            binary: None,
            ingest_concurrency: None,
        },
        &tables,
    )
    .await?;
    let exp = mlflow.create_experiment("sampled-overload").await?;
    let offered = OVERLOAD * ceiling;

    let sent: Arc<std::sync::Mutex<HashMap<String, Sent>>> = Arc::default();
    let feedback_codes: Arc<std::sync::Mutex<HashMap<u16, u64>>> = Arc::default();
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let cpu0 = gateway.cpu_seconds();
    let exported0 = gateway.metric("gateway_export_traces_total").await;
    let mut senders = Vec::new();
    for _ in 0..SENDERS {
        senders.push(tokio::spawn(send_turns(
            gateway.http_url.clone(),
            gateway.api_url.clone().unwrap_or_default(),
            exp.clone(),
            offered,
            load_time,
            delays,
            next.clone(),
            sent.clone(),
            feedback_codes.clone(),
        )));
    }
    let mut disk = Vec::new();
    while started.elapsed() < load_time {
        tokio::time::sleep(Duration::from_secs(10)).await;
        disk.push(on_disk(&gateway).await);
    }
    let mut feedback_tasks = Vec::new();
    for s in senders {
        feedback_tasks.extend(s.await??);
    }
    let load_secs = started.elapsed().as_secs_f64();
    let cpu = (gateway.cpu_seconds() - cpu0) / load_secs * 100.0;
    let took = (gateway.metric("gateway_export_traces_total").await - exported0) / load_secs;
    let end_of_load = on_disk(&gateway).await;
    // Feedback comes in until its latest delay; the gateway then delivers what it promoted.
    for task in feedback_tasks {
        let _ = task.await;
    }
    let drained = Instant::now();
    while drained.elapsed() < Duration::from_secs(240) {
        let pending = gateway.metric("gateway_feedback_pending").await;
        let records = gateway.metric("gateway_spool_records").await;
        if pending == 0.0 && records == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        disk.push(on_disk(&gateway).await);
    }
    let end = on_disk(&gateway).await;
    let peak = disk.iter().copied().fold(end, f64::max);
    let p99 = histogram_p99(&gateway, "gateway_mlflow_request_seconds", "trace_info").await;
    println!(
        "  on disk every 10 s, then while draining (MiB): {}",
        disk.iter()
            .map(|d| format!("{d:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "  feedback answers: {:?}",
        feedback_codes.lock().map(|c| c.clone()).unwrap_or_default()
    );

    let landed = landed(mlflow, &exp)?;
    let sent = std::mem::take(&mut *sent.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    ensure!(!sent.is_empty(), "nothing was sent");
    let complete = |crid: &str| {
        landed
            .get(crid)
            .is_some_and(|l| l.spans == SPANS_PER_TRACE as u64)
    };
    let share = |pick: &dyn Fn(&Sent) -> bool, ok: &dyn Fn(&str) -> bool| {
        let picked: Vec<&String> = sent
            .iter()
            .filter(|(_, s)| pick(s))
            .map(|(c, _)| c)
            .collect();
        let good = picked.iter().filter(|c| ok(c)).count();
        format!(
            "{good} / {} ({:.1} %)",
            picked.len(),
            100.0 * good as f64 / picked.len().max(1) as f64
        )
    };
    let errors = share(&|s| s.errored, &complete);
    let rated = share(&|s| s.rated, &|c| {
        complete(c) && landed.get(c).is_some_and(|l| l.assessments > 0)
    });
    // A session is whole when its turns that no other policy kept all landed, or none did.
    let mut sessions: HashMap<u64, (u64, u64)> = HashMap::new();
    for (crid, s) in &sent {
        if s.errored || s.rated {
            continue;
        }
        let e = sessions.entry(s.session).or_default();
        e.0 += 1;
        e.1 += u64::from(landed.contains_key(crid));
    }
    let whole = sessions
        .values()
        .filter(|(n, got)| *got == 0 || got == n)
        .count();
    let kept_sessions = sessions.values().filter(|(_, got)| *got > 0).count();
    println!(
        "  {} traces sent, {} landed; {kept_sessions} of {} sessions kept",
        sent.len(),
        landed.len(),
        sessions.len()
    );
    Ok(format!(
        "| {backend} | {ceiling:.1} ({ceiling_p99:.0}) | {offered:.0} | {took:.1} ({p99}) | {errors} | {rated} | {whole} / {} ({:.1} %; {kept_sessions} kept) | {peak:.0} / {end_of_load:.0} / {end:.0} | {cpu:.0} / {:.0} |",
        sessions.len(),
        100.0 * whole as f64 / sessions.len().max(1) as f64,
        gateway.peak_rss_mib(),
    ))
}

/// Sends turns at this sender's share of `rate` for `time`; schedules the feedback for rated
/// ones and returns those tasks.
#[allow(clippy::too_many_arguments)]
async fn send_turns(
    http_url: String,
    api_url: String,
    exp: String,
    rate: f64,
    time: Duration,
    delays: (f64, f64),
    next: Arc<AtomicU64>,
    sent: Arc<std::sync::Mutex<HashMap<String, Sent>>>,
    codes: Arc<std::sync::Mutex<HashMap<u16, u64>>>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let client = reqwest::Client::new();
    let every = Duration::from_secs_f64(TRACES_PER_REQUEST as f64 * SENDERS as f64 / rate);
    // Sessions in flight at once, so a session gets a turn about every TURN_GAP_SECS.
    let active = ((rate * TURN_GAP_SECS) as u64).max(1);
    let started = Instant::now();
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut feedback = Vec::new();
    while started.elapsed() < time {
        ticker.tick().await;
        let mut spans = Vec::new();
        let mut batch = Vec::new();
        for _ in 0..TRACES_PER_REQUEST {
            let n = next.fetch_add(1, Ordering::Relaxed);
            let session = n % active + active * (n / (active * TURNS));
            let crid = format!("turn-{n}");
            let errored = n % ERROR_EVERY == 17;
            let rated = n % RATED_EVERY == 3;
            let root = SpanSpec::root(
                fixtures::random_trace_id(),
                "turn",
                now_nanos() - 200_000_000,
                150,
            )
            .with(vec![
                s("client_request_id", &crid),
                s("session.id", &format!("session-{session}")),
                s("user.id", &format!("user-{}", session % 97)),
            ]);
            for (i, name) in ["retrieve", "chat", "tool"].iter().enumerate() {
                let mut child = SpanSpec::child(&root, name, 5 + 40 * i as u64, 30);
                child.error = errored && *name == "tool";
                spans.push(child.build());
            }
            spans.push(root.build());
            batch.push((
                crid,
                Sent {
                    session,
                    errored,
                    rated,
                },
                root.trace_id,
            ));
        }
        let body = request(service_resource("sampled-chat"), spans).encode_to_vec();
        let r = client
            .post(format!("{http_url}/v1/traces"))
            .header("content-type", "application/x-protobuf")
            .header("x-mlflow-experiment-id", &exp)
            .body(body)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        if !r.is_ok_and(|r| r.status().is_success()) {
            continue;
        }
        let mut sent = sent.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        for (crid, s, trace_id) in batch {
            if s.rated {
                let delay = delays.0 + (delays.1 - delays.0) * unit(&trace_id);
                feedback.push(tokio::spawn(rate_later(
                    client.clone(),
                    api_url.clone(),
                    crid.clone(),
                    Duration::from_secs_f64(delay),
                    codes.clone(),
                )));
            }
            sent.insert(crid, s);
        }
    }
    Ok(feedback)
}

/// The shortest and longest delay of feedback after its trace, in seconds (the longest scaled).
fn feedback_delays(opts: &Options) -> (f64, f64) {
    (
        FEEDBACK_DELAY_SECS.0,
        (FEEDBACK_DELAY_SECS.1 * opts.scale).max(FEEDBACK_DELAY_SECS.0 + 1.0),
    )
}

/// A number in [0, 1) from the trace id's random bytes.
fn unit(trace_id: &[u8; 16]) -> f64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&trace_id[8..]);
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

async fn rate_later(
    client: reqwest::Client,
    api_url: String,
    crid: String,
    delay: Duration,
    codes: Arc<std::sync::Mutex<HashMap<u16, u64>>>,
) {
    tokio::time::sleep(delay).await;
    let r = client
        .post(format!("{api_url}/v1/feedback"))
        .json(&serde_json::json!({"client_request_id": crid, "name": "user_rating", "value": 4}))
        .send()
        .await;
    let code = r.map_or(0, |r| r.status().as_u16());
    if let Ok(mut c) = codes.lock() {
        *c.entry(code).or_default() += 1;
    }
}

/// The spool and the sampler's retention on disk, MiB.
async fn on_disk(gateway: &Collector) -> f64 {
    (gateway.metric("gateway_spool_disk_bytes").await
        + gateway.metric("gateway_sampling_retained_bytes").await)
        / (1024.0 * 1024.0)
}

/// The p99 bucket bound of a histogram's series with `kind`, from /metrics.
async fn histogram_p99(gateway: &Collector, name: &str, kind: &str) -> String {
    let Some(api) = &gateway.api_url else {
        return "?".into();
    };
    let Ok(r) = reqwest::get(format!("{api}/metrics")).await else {
        return "?".into();
    };
    let text = r.text().await.unwrap_or_default();
    let buckets: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| {
            l.starts_with(&format!("{name}_bucket{{")) && l.contains(&format!("kind=\"{kind}\""))
        })
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    let total = buckets.iter().map(|b| b.1).fold(0.0, f64::max);
    buckets
        .iter()
        .find(|(_, count)| *count >= 0.99 * total)
        .map_or("?".into(), |(le, _)| format!("≤ {:.0}", le * 1000.0))
}

struct Landed {
    spans: u64,
    assessments: u64,
}

/// Every trace of the experiment in MLflow's store, by client request id.
fn landed(mlflow: &Mlflow, exp: &str) -> anyhow::Result<HashMap<String, Landed>> {
    let rows = mlflow.sql_rows(&format!(
        "SELECT t.client_request_id, \
           (SELECT COUNT(*) FROM spans s WHERE s.trace_id = t.request_id), \
           (SELECT COUNT(*) FROM assessments a WHERE a.trace_id = t.request_id) \
         FROM trace_info t WHERE t.experiment_id = {exp} AND t.client_request_id IS NOT NULL"
    ))?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            Some((
                r.first()?.clone(),
                Landed {
                    spans: r.get(1)?.parse().ok()?,
                    assessments: r.get(2)?.parse().ok()?,
                },
            ))
        })
        .collect())
}
