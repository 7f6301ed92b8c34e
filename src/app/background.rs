//! The gateway's background loops: MLflow's health for readiness, housekeeping (traces that
//! never got their root, gauges, metric upkeep, spool space), and the credentials files
//! (tenants' tokens, the listeners' certificates) re-read when they change.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::Tenants;
use crate::map::traces::TraceTracker;
use crate::mlflow::{ErrorClass, MlflowClient};
use crate::ops::health::Health;
use crate::ops::readiness;
use crate::pipeline::ingest::Ingest;
use crate::pipeline::sampling::Sampler;
use crate::spool::Spool;
use crate::tls::ServerTls;

/// How often expired traces-awaiting-root are swept, gauges and spool readiness refreshed.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);
/// How often a fully delivered active spool segment is sealed so its file can be removed.
const RECLAIM_INTERVAL: Duration = Duration::from_secs(10);
/// How often histogram samples are drained into their buckets when no scrape does it: the
/// exporter's own default is 5 s; at 10 s the samples held between drains stay a few hundred
/// KiB even at tens of thousands of spans a second.
const METRICS_UPKEEP_INTERVAL: Duration = Duration::from_secs(10);

/// How often tokens files and certificates are checked for changes: a rotated Kubernetes
/// Secret takes effect within this, plus the kubelet's own sync delay.
const CREDENTIALS_RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// Re-reads the tenants' tokens files and the listeners' certificate, key and client CA when
/// they change. A change that does not make a valid configuration is logged and the last good
/// one stays.
pub(super) fn watch_credentials(
    tenants: Arc<Tenants>,
    tls: Option<Arc<ServerTls>>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tls_failing = false;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(CREDENTIALS_RELOAD_INTERVAL) => {}
            }
            let tenants = tenants.clone();
            let tls = tls.clone();
            // File reads off the runtime's threads.
            let reloaded = tokio::task::spawn_blocking(move || {
                tenants.reload();
                tls.map(|t| t.reload())
            })
            .await;
            match reloaded {
                Ok(Some(Ok(true))) => {
                    tls_failing = false;
                    tracing::info!("TLS certificate reloaded; new connections use it");
                }
                Ok(Some(Err(e))) if !tls_failing => {
                    tls_failing = true;
                    tracing::error!(error = %e, "TLS files changed but cannot be used; keeping the last good certificate");
                }
                _ => {}
            }
        }
    })
}

/// Asks MLflow's `/health` and checks the gateway's credentials every `interval`, and records
/// what readiness makes of it.
pub(super) fn watch_mlflow(
    client: MlflowClient,
    health: Arc<Health>,
    interval: Duration,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let answer = client.health().await.map_err(|e| e.to_string());
            let refused = match &answer {
                Ok(()) => match client.check_auth().await {
                    Err(e) if e.class() == ErrorClass::Auth => Some(e.to_string()),
                    _ => None,
                },
                Err(_) => None,
            };
            health.set_mlflow_problem(readiness::mlflow_problem(
                client.base_url().as_str(),
                answer,
                refused,
            ));
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    })
}

/// Once a second: forgets traces whose root never came, refreshes the gauges, drains histogram
/// samples, and now and then seals a delivered spool segment so its file goes.
pub(super) fn housekeeping(
    tracker: Arc<TraceTracker>,
    spool: Spool,
    finalizer: Option<Arc<Ingest>>,
    sampler: Option<Arc<Sampler>>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let metrics_handle = crate::ops::metrics::handle();
    let mut last_reclaim = Instant::now();
    let mut last_upkeep = Instant::now();
    tokio::spawn(async move {
        loop {
            let swept = tracker.sweep();
            let forgotten = swept.without_root;
            if forgotten > 0 {
                metrics::counter!("gateway_traces_without_root_total").increment(forgotten as u64);
                tracing::info!(forgotten, "traces expired without their root span");
            }
            if let Some(ingest) = &finalizer
                && !swept.orphans.is_empty()
            {
                ingest.finalize_orphans(swept.orphans).await;
            }
            metrics::gauge!("gateway_traces_awaiting_root").set(tracker.awaiting() as f64);
            let stats = spool.stats();
            metrics::gauge!("gateway_queue_bytes").set(stats.memory_bytes as f64);
            metrics::gauge!("gateway_spool_disk_bytes").set(stats.disk_bytes as f64);
            metrics::gauge!("gateway_spool_records").set(stats.records as f64);
            let age = stats
                .oldest_ms
                .map(|t| crate::vocab::now_ms().saturating_sub(t) as f64 / 1000.0)
                .unwrap_or(0.0);
            metrics::gauge!("gateway_spool_oldest_record_age_seconds").set(age);
            // The recorder keeps every histogram sample until it is drained; nothing else
            // drains it while no one scrapes /metrics (a sidecar without Prometheus), and memory
            // would grow without bound.
            if last_upkeep.elapsed() >= METRICS_UPKEEP_INTERVAL {
                metrics_handle.run_upkeep();
                last_upkeep = Instant::now();
            }
            if let Some(sampler) = &sampler {
                sampler.upkeep().await;
            }
            if last_reclaim.elapsed() >= RECLAIM_INTERVAL {
                spool.reclaim().await;
                last_reclaim = Instant::now();
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(HOUSEKEEPING_INTERVAL) => {}
            }
        }
    })
}

/// Readiness fails while the spool (on disk) or the memory queue could not take one more
/// request of `headroom` bytes.
pub(super) fn spool_room(
    spool: Spool,
    max_memory: u64,
    max_disk: u64,
    headroom: u64,
) -> crate::ops::health::SpoolCheck {
    Box::new(move || {
        let stats = spool.stats();
        if spool.is_durable() {
            readiness::room_problem("spool disk", stats.disk_bytes, max_disk, headroom)
        } else {
            readiness::room_problem(
                "memory queue",
                stats.memory_bytes as u64,
                max_memory,
                headroom,
            )
        }
    })
}
