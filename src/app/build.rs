//! Building the gateway's parts from its configuration: the spool, the feedback service, the
//! decode limits, the delivery pipeline.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::StartError;
use crate::auth::Tenants;
use crate::auth::tokens::read_tokens_file;
use crate::config::Config;
use crate::feedback::auth::{FeedbackAuth, RateLimiter};
use crate::feedback::resolve::TraceFinder;
use crate::feedback::service::FeedbackService;
use crate::feedback::store::FeedbackStore;
use crate::mlflow::Identities;
use crate::mlflow::experiments::Experiments;
use crate::mlflow::retry::RetryPolicy;
use crate::ops::health::Health;
use crate::pipeline::backlog::SpanBacklog;
use crate::pipeline::batcher;
use crate::pipeline::export::{SpanExporter, run_span_workers, run_trace_info_workers};
use crate::pipeline::request_ids::RequestIdIndex;
use crate::pipeline::sampling::Sampler;
use crate::receive::budget::DecodeBudget;
use crate::receive::decode::DecodeLimits;
use crate::redact::Redactors;
use crate::spool::deadletter::DeadLetters;
use crate::spool::disk::{LogOptions, SegmentLog};
use crate::spool::{Spool, SpoolShares};
use crate::vocab::ExperimentRef;

/// Each tenant's share of a spool of `capacity` bytes.
fn shares(config: &Config, capacity: u64) -> SpoolShares {
    SpoolShares::new(
        capacity,
        config
            .tenants
            .iter()
            .map(|t| (t.name.clone(), t.max_spool_share)),
    )
}

pub(super) fn open_spool(config: &Config) -> Result<Spool, StartError> {
    let Some(dir) = &config.data_dir else {
        tracing::warn!(
            "no data_dir: accepted spans are queued in memory only and lost if the process dies"
        );
        return Ok(Spool::memory(config.queue.max_bytes)
            .with_shares(shares(config, config.queue.max_bytes as u64)));
    };
    let spool_dir = dir.join("spool");
    let (log, report) = SegmentLog::open(
        &spool_dir,
        LogOptions {
            fsync: config.spool.fsync,
            fsync_interval: config.spool.fsync_interval,
            segment_bytes: config.spool.segment_bytes,
            max_disk_bytes: config.spool.max_disk_bytes,
            compression: config.spool.compression,
        },
    )
    .map_err(|source| StartError::DataDir {
        path: spool_dir.clone(),
        source,
    })?;
    if report.records > 0 || report.damaged_regions > 0 {
        tracing::info!(
            records = report.records,
            segments = report.segments,
            bytes = report.bytes,
            damaged_regions = report.damaged_regions,
            damaged_bytes = report.damaged_bytes,
            "replaying spool from an earlier run"
        );
    }
    Ok(Spool::disk(log, config.queue.max_bytes)
        .with_shares(shares(config, config.spool.max_disk_bytes)))
}

pub(super) fn build_feedback(
    config: &Config,
    request_ids: Arc<RequestIdIndex>,
    tenants: Arc<Tenants>,
    identities: Identities,
    experiments: Experiments,
    sampler: Option<Arc<Sampler>>,
) -> Result<FeedbackService, StartError> {
    let mut tokens = config.feedback.tokens.clone();
    if let Some(path) = &config.feedback.tokens_file {
        tokens.extend(
            read_tokens_file(path).map_err(|source| StartError::TokensFile {
                path: path.clone(),
                source,
            })?,
        );
    }
    let (store, loaded) =
        FeedbackStore::open(config.data_dir.as_deref()).map_err(|source| StartError::DataDir {
            path: config.data_dir.clone().unwrap_or_default(),
            source,
        })?;
    if store.is_durable() {
        if loaded.records > 0 {
            tracing::info!(
                records = loaded.records,
                pending = loaded.pending,
                unreadable = loaded.unreadable,
                "loaded feedback records"
            );
        }
    } else {
        tracing::warn!("no data_dir: pending feedback is kept in memory and lost on restart");
    }
    let mut known = vec![config.default_experiment()];
    for rule in &config.routing.rules {
        if let Some(id) = &rule.experiment_id {
            known.push(ExperimentRef::Id(id.clone()));
        }
    }
    let limiter = RateLimiter::new(
        config.feedback.rate_limit_per_second,
        config.feedback.rate_limit_burst,
    );
    let gate = FeedbackAuth::new(tenants.clone(), &tokens, limiter);
    if gate.is_open() {
        tracing::warn!(
            "feedback API has no tokens or tenants configured: it accepts unauthenticated requests"
        );
    }
    let finder = TraceFinder::new(identities.clone(), experiments, request_ids, known);
    Ok(FeedbackService::new(
        config.feedback.clone(),
        store,
        gate,
        tenants,
        identities,
        finder,
        Redactors::new(config),
    )
    .with_sampler(sampler))
}

/// The bounds every request body is decoded within.
pub(super) fn decode_limits(config: &Config) -> DecodeLimits {
    DecodeLimits {
        max_decompressed_bytes: config.receiver.max_decompressed_bytes,
        max_nesting_depth: config.receiver.max_nesting_depth,
        budget: DecodeBudget::new(config.receiver.max_inflight_decompressed_bytes),
        retry_after: config.receiver.retry_after,
    }
}

/// The sampler, when `[sampling]` is enabled, with what an earlier run left held.
pub(super) fn open_sampler(
    config: &Config,
    spool: &Spool,
) -> Result<Option<Arc<Sampler>>, StartError> {
    let (true, Some(dir)) = (config.sampling.enabled, &config.data_dir) else {
        return Ok(None);
    };
    let (sampler, recovered) =
        Sampler::open(config, dir, spool.clone()).map_err(|source| StartError::DataDir {
            path: dir.join("sampling"),
            source,
        })?;
    if recovered.traces > 0 {
        tracing::info!(
            traces = recovered.traces,
            bytes = recovered.bytes,
            "traces held for feedback by an earlier run"
        );
    }
    Ok(Some(Arc::new(sampler)))
}

/// Starts delivery: batcher (the spool's reader) -> span workers -> TraceInfo workers. Each
/// stage ends when the one before it has ended and dropped its sender, so closing the spool
/// (shutdown) drains front to back; the handle ends when the last stage has.
pub(super) fn start_pipeline(
    config: &Config,
    identities: &Identities,
    tenants: Arc<Tenants>,
    experiments: Experiments,
    spool: &Spool,
    health: &Arc<Health>,
    sampler: Option<Arc<Sampler>>,
) -> Result<JoinHandle<()>, StartError> {
    let policy = RetryPolicy::from(&config.retry);
    let dead_letters = Arc::new(DeadLetters::new(config.data_dir.as_deref()).map_err(
        |source| StartError::DataDir {
            path: config.data_dir.clone().unwrap_or_default(),
            source,
        },
    )?);
    let (batches_tx, batches_rx) = mpsc::channel(config.mlflow.export_concurrency);
    let (infos_tx, infos_rx) = mpsc::channel(config.queue.max_trace_infos);
    let backlog = if config.mlflow.trace_info_first {
        SpanBacklog::writing_trace_info_first(config.mlflow.export_concurrency)
    } else {
        SpanBacklog::new(
            config.mlflow.export_concurrency,
            config.mlflow.max_incomplete_traces,
        )
    };
    let exporter = Arc::new(SpanExporter {
        identities: identities.clone(),
        tenants,
        experiments,
        policy: policy.clone(),
        trace_infos: infos_tx,
        health: health.clone(),
        dead_letters,
        backlog: backlog.clone(),
    });
    let batcher = tokio::spawn(batcher::run(
        spool.clone(),
        batches_tx,
        config.batch.clone(),
        backlog.clone(),
        sampler,
    ));
    let spans = tokio::spawn(run_span_workers(
        exporter,
        batches_rx,
        config.mlflow.export_concurrency,
        backlog.clone(),
    ));
    let infos = tokio::spawn(run_trace_info_workers(
        identities.clone(),
        policy,
        health.clone(),
        infos_rx,
        config.mlflow.trace_info_concurrency,
        config.mlflow.trace_info_pipeline_depth,
        backlog,
    ));
    Ok(tokio::spawn(async move {
        let _ = batcher.await;
        let _ = spans.await;
        let _ = infos.await;
    }))
}
