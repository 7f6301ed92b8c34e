//! Admission and mapping: the one path both receivers feed. Authenticates the request's tenant,
//! validates spans (bad ones are reported, their siblings go on), routes them to experiments the
//! tenant may write to, applies the mapping table, charges their bytes to the queue budget and
//! hands them to the batcher. A request is acknowledged once `accept` returns Ok.

mod accept;
mod authorize;
mod error;
mod orphans;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use error::IngestError;
pub use orphans::ROOT_MISSING_TAG;

use crate::auth::{Tenant, Tenants};
use crate::config::Config;
use crate::map::rules::MappingTable;
use crate::map::traces::TraceTracker;
use crate::mlflow::experiments::Experiments;
use crate::pipeline::request_ids::RequestIdIndex;
use crate::pipeline::sampling::Sampler;
use crate::redact::Redactors;
use crate::spool::Spool;
use crate::vocab::{ExperimentRef, Transport, labels};

/// Request context carried from the receiver.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub transport: Transport,
    /// `x-mlflow-experiment-id` header or gRPC metadata, if sent.
    pub experiment_header: Option<String>,
    /// The tenant its credentials named (`Ingest::authenticate`); None on an open gateway.
    pub tenant: Option<Arc<Tenant>>,
}

/// The outcome of an accepted request: OTLP partial success when some spans were unusable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accepted {
    pub accepted_spans: usize,
    pub rejected_spans: usize,
    pub message: Option<String>,
}

/// Shared by the receivers.
pub struct Ingest {
    mapping: MappingTable,
    tracker: Arc<TraceTracker>,
    experiments: Experiments,
    tenants: Arc<Tenants>,
    default_experiment: ExperimentRef,
    routes: Vec<(String, ExperimentRef)>,
    spool: Spool,
    inflight: Arc<Semaphore>,
    /// Turns for the CPU work of a request (`receiver.ingest_concurrency`).
    turns: Arc<Semaphore>,
    retry_after: Duration,
    request_ids: Arc<RequestIdIndex>,
    redactors: Redactors,
    /// Notes what makes a trace one to keep (`[sampling]`).
    sampler: Option<Arc<Sampler>>,
}

/// A turn for a request's CPU work (checking, decoding, mapping), from `Ingest::ingest_turn`;
/// given back when dropped.
pub struct IngestTurn {
    _permit: Option<OwnedSemaphorePermit>,
}

/// The gateway's shared parts that ingest works with.
pub struct Parts {
    pub experiments: Experiments,
    pub tenants: Arc<Tenants>,
    pub spool: Spool,
    pub request_ids: Arc<RequestIdIndex>,
    pub sampler: Option<Arc<Sampler>>,
}

impl Ingest {
    pub fn new(cfg: &Config, tracker: Arc<TraceTracker>, parts: Parts) -> Self {
        let routes = cfg
            .routing
            .rules
            .iter()
            .map(|r| {
                let exp = match (&r.experiment_id, &r.experiment_name) {
                    (Some(id), _) => ExperimentRef::Id(id.clone()),
                    (None, Some(name)) => ExperimentRef::Name(name.clone()),
                    (None, None) => cfg.default_experiment(),
                };
                (r.service_name.clone(), exp)
            })
            .collect();
        Self {
            mapping: MappingTable::new(&cfg.mapping),
            tracker,
            experiments: parts.experiments,
            tenants: parts.tenants,
            default_experiment: cfg.default_experiment(),
            routes,
            spool: parts.spool,
            inflight: Arc::new(Semaphore::new(cfg.receiver.max_inflight_requests)),
            turns: Arc::new(Semaphore::new(
                cfg.receiver
                    .ingest_concurrency
                    .unwrap_or_else(crate::config::default_ingest_concurrency),
            )),
            retry_after: cfg.receiver.retry_after,
            request_ids: parts.request_ids,
            redactors: Redactors::new(cfg),
            sampler: parts.sampler,
        }
    }

    /// The tenant a request's credentials name (its `Authorization` value and its client
    /// certificate's subjects), checked before its body is read; a tenant over its quota is
    /// refused here too, so a flood costs no decoding.
    pub fn authenticate(
        &self,
        transport: Transport,
        authorization: Option<&str>,
        cert_subjects: &[String],
    ) -> Result<Option<Arc<Tenant>>, IngestError> {
        let tenant = self
            .tenants
            .authenticate(authorization, cert_subjects)
            .map_err(|e| {
                let err = IngestError::Unauthenticated(e);
                self.count_request_refused(transport, None, &err);
                err
            })?;
        if let Some(t) = &tenant
            && let Some(quota) = &t.quota
            && let Err(wait) = quota.check()
        {
            let err = self.over_quota(t, wait);
            self.count_request_refused(transport, Some(t), &err);
            return Err(err);
        }
        Ok(tenant)
    }

    fn over_quota(&self, tenant: &Tenant, wait: Duration) -> IngestError {
        IngestError::OverQuota {
            detail: format!(
                "tenant '{}' is over its quota of {} spans per second",
                tenant.name,
                tenant.quota.as_ref().map_or(0.0, |q| q.per_second())
            ),
            retry_after: wait.max(Duration::from_secs(1)),
        }
    }

    /// Takes an in-flight slot for one request, or refuses when saturated or shutting down.
    pub fn admit(&self, transport: Transport) -> Result<OwnedSemaphorePermit, IngestError> {
        self.inflight.clone().try_acquire_owned().map_err(|_| {
            let err = IngestError::TooManyRequests {
                retry_after: self.retry_after,
            };
            self.count_request_refused(transport, None, &err);
            err
        })
    }

    /// Waits for a turn to do a request's CPU work. Under overload the requests beyond
    /// `receiver.ingest_concurrency` wait here (their clients with them) instead of taking
    /// every CPU from delivery, which then fell to a tenth of what the gateway sustains.
    /// Only waits are timed (`gateway_receiver_ingest_wait_seconds`): a free turn costs no
    /// clock reads or metric updates.
    pub async fn ingest_turn(&self) -> IngestTurn {
        if let Ok(permit) = self.turns.clone().try_acquire_owned() {
            return IngestTurn {
                _permit: Some(permit),
            };
        }
        let waited = std::time::Instant::now();
        // The semaphore is never closed, so a permit always comes.
        let permit = self.turns.clone().acquire_owned().await.ok();
        metrics::histogram!("gateway_receiver_ingest_wait_seconds")
            .record(waited.elapsed().as_secs_f64());
        IngestTurn { _permit: permit }
    }

    /// Counts a request refused because the budget for decoded bytes in flight was spent.
    pub fn count_busy(&self, transport: Transport) {
        metrics::counter!("gateway_receiver_requests_refused_total",
            "transport" => transport.as_str(), "reason" => "decode_budget")
        .increment(1);
    }

    fn count_request_refused(
        &self,
        transport: Transport,
        tenant: Option<&Tenant>,
        err: &IngestError,
    ) {
        let labels = labels(
            &[("transport", transport.as_str()), ("reason", err.reason())],
            tenant.map(|t| &t.name),
        );
        metrics::counter!("gateway_receiver_requests_refused_total", labels).increment(1);
    }

    /// Counts spans refused with a whole-request error.
    pub fn count_refused(
        &self,
        transport: Transport,
        tenant: Option<&Tenant>,
        err: &IngestError,
        spans: usize,
    ) {
        let labels = labels(
            &[("transport", transport.as_str()), ("reason", err.reason())],
            tenant.map(|t| &t.name),
        );
        metrics::counter!("gateway_receiver_spans_refused_total", labels).increment(spans as u64);
    }
}

#[cfg(test)]
mod tests;
