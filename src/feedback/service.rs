//! The feedback core shared by the HTTP and gRPC APIs: resolve the target trace, log the
//! assessment, or keep it pending (durably) until the trace is in MLflow or the request expires.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::auth::{FeedbackAuth, Principal};
use super::model::{AssessmentRequest, TargetRef};
use super::resolve::{Found, TraceFinder};
use super::store::{FeedbackStore, Record, Status, StoreError};
use crate::auth::Tenants;
use crate::config::FeedbackConfig;
use crate::mlflow::Identities;
use crate::mlflow::assessments::AssessmentOutcome;
use crate::pipeline::sampling::{Claim, ClaimTarget, Sampler};
use crate::redact::Redactors;
use crate::vocab::{labels, now_ms};

/// Records tried per worker tick, so one tick stays short.
const MAX_ATTEMPTS_PER_TICK: usize = 200;
/// Longest wait between attempts for one pending record.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// What became of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: Status,
    pub feedback_id: String,
    pub trace_id: Option<String>,
    pub detail: Option<String>,
}

impl Outcome {
    fn of(r: &Record) -> Self {
        Self {
            status: r.status,
            feedback_id: r.feedback_id.clone(),
            trace_id: r.trace_id.clone(),
            detail: r.detail.clone(),
        }
    }

    /// The API's JSON reply body.
    pub fn to_json(&self) -> Value {
        let mut v = json!({"status": self.status.as_str(), "feedback_id": self.feedback_id});
        if self.status == Status::Logged {
            v["assessment_id"] = json!(self.feedback_id);
        }
        if let Some(t) = &self.trace_id {
            v["trace_id"] = json!(t);
        }
        if let Some(d) = &self.detail
            && self.status != Status::Logged
        {
            v["detail"] = json!(d);
        }
        v
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("MLflow rejected the assessment: {0}")]
    Rejected(String),
    #[error("too many feedback requests are pending ({0}); retry later")]
    Full(usize),
    /// The target is another tenant's (answered as not found, so ids cannot be probed).
    #[error("no trace with this target among your experiments")]
    NotFound,
    /// Sampling dropped the trace for good: its feedback window has passed.
    #[error("{0}")]
    Gone(String),
    #[error(transparent)]
    Storage(#[from] StoreError),
}

enum Attempt {
    Logged(String),
    NotYet(String),
    Rejected(String),
    Elsewhere,
    Gone(String),
}

pub struct FeedbackService {
    pub store: FeedbackStore,
    pub gate: FeedbackAuth,
    tenants: Arc<Tenants>,
    identities: Identities,
    finder: TraceFinder,
    cfg: FeedbackConfig,
    wake: Notify,
    /// Feedback text goes through the tenant's redaction before it is stored or sent.
    redactors: Redactors,
    /// Feedback for a trace sampling holds brings it to MLflow.
    sampler: Option<Arc<Sampler>>,
}

impl FeedbackService {
    pub fn new(
        cfg: FeedbackConfig,
        store: FeedbackStore,
        gate: FeedbackAuth,
        tenants: Arc<Tenants>,
        identities: Identities,
        finder: TraceFinder,
        redactors: Redactors,
    ) -> Self {
        Self {
            store,
            gate,
            tenants,
            identities,
            finder,
            cfg,
            wake: Notify::new(),
            redactors,
            sampler: None,
        }
    }

    /// Feedback for traces `sampler` holds promotes them.
    pub fn with_sampler(mut self, sampler: Option<Arc<Sampler>>) -> Self {
        self.sampler = sampler;
        self
    }

    pub fn max_body_bytes(&self) -> usize {
        self.cfg.max_body_bytes
    }

    /// What is written (pending store, MLflow) is redacted as spans are: rationale, value,
    /// metadata and source id. The target and name are ids, left as they are.
    fn redact(&self, request: &mut AssessmentRequest, tenant: Option<&str>) {
        let redactor = self.redactors.of(tenant);
        if let Some(rationale) = request.rationale.as_mut() {
            redactor.text(rationale);
        }
        redactor.json(&mut request.value);
        for value in request.metadata.values_mut() {
            redactor.text(value);
        }
        redactor.text(&mut request.source_id);
    }

    /// A record the caller may see: its own tenant's (or, unscoped, one without a tenant).
    pub fn get(&self, feedback_id: &str, caller: &Principal) -> Option<Outcome> {
        self.store
            .get(feedback_id)
            .filter(|r| r.tenant.as_deref() == caller.tenant_name())
            .map(|r| Outcome::of(&r))
    }

    /// Logs the assessment now if its trace is in MLflow, else keeps it pending. The same
    /// idempotency key (or identical content) returns the earlier outcome.
    #[tracing::instrument(skip_all, fields(kind = request.kind.as_str(), feedback_id))]
    pub async fn submit(
        &self,
        mut request: AssessmentRequest,
        idempotency_key: Option<&str>,
        caller: &Principal,
    ) -> Result<Outcome, SubmitError> {
        let kind = request.kind.as_str();
        let tenant = caller.tenant_name();
        self.redact(&mut request, tenant);
        let tenant_name = caller.tenant.as_ref().map(|t| &t.name);
        let feedback_id = request.feedback_id(idempotency_key, tenant);
        tracing::Span::current().record("feedback_id", feedback_id.as_str());
        if let Some(existing) = self.store.get(&feedback_id)
            && existing.status != Status::Expired
            && existing.tenant.as_deref() == tenant
        {
            metrics::counter!(
                "gateway_feedback_duplicates_total",
                labels(&[("kind", kind)], tenant_name)
            )
            .increment(1);
            return Ok(Outcome::of(&existing));
        }
        metrics::counter!(
            "gateway_feedback_received_total",
            labels(&[("kind", kind)], tenant_name)
        )
        .increment(1);
        let now = now_ms();
        let mut record = Record {
            feedback_id,
            request,
            status: Status::Pending,
            created_ms: now,
            expires_ms: now + self.cfg.pending_ttl.as_millis() as u64,
            updated_ms: now,
            next_attempt_ms: now + self.cfg.retry_interval.as_millis() as u64,
            attempts: 1,
            trace_id: None,
            detail: None,
            tenant: tenant.map(str::to_string),
        };
        match self.attempt(&record).await {
            Attempt::Logged(trace_id) => {
                record.status = Status::Logged;
                record.trace_id = Some(trace_id);
                self.store.put(&record)?;
                metrics::counter!(
                    "gateway_feedback_logged_total",
                    labels(&[("kind", kind)], tenant_name)
                )
                .increment(1);
            }
            Attempt::Elsewhere => {
                metrics::counter!(
                    "gateway_feedback_rejected_total",
                    labels(&[("reason", "not_found")], tenant_name)
                )
                .increment(1);
                return Err(SubmitError::NotFound);
            }
            Attempt::NotYet(reason) => {
                let pending = self.store.pending_count();
                if pending >= self.cfg.max_pending {
                    metrics::counter!(
                        "gateway_feedback_rejected_total",
                        labels(&[("reason", "pending_full")], tenant_name)
                    )
                    .increment(1);
                    return Err(SubmitError::Full(pending));
                }
                record.detail = Some(reason);
                self.store.put(&record)?;
                metrics::gauge!("gateway_feedback_pending").set(self.store.pending_count() as f64);
                self.wake.notify_one();
            }
            Attempt::Rejected(message) => {
                metrics::counter!(
                    "gateway_feedback_rejected_total",
                    labels(&[("reason", "mlflow")], tenant_name)
                )
                .increment(1);
                return Err(SubmitError::Rejected(message));
            }
            Attempt::Gone(reason) => {
                metrics::counter!(
                    "gateway_feedback_rejected_total",
                    labels(&[("reason", "sampled_out")], tenant_name)
                )
                .increment(1);
                return Err(SubmitError::Gone(reason));
            }
        }
        Ok(Outcome::of(&record))
    }

    async fn attempt(&self, record: &Record) -> Attempt {
        let tenant = record
            .tenant
            .as_deref()
            .and_then(|name| self.tenants.get(name))
            .map(|t| &**t);
        if record.tenant.is_some() && tenant.is_none() {
            return Attempt::Rejected(format!(
                "tenant '{}' is no longer configured",
                record.tenant.as_deref().unwrap_or_default()
            ));
        }
        if let Some(sampler) = &self.sampler {
            let target = match &record.request.target {
                TargetRef::ClientRequestId(crid) => ClaimTarget::ClientRequestId(crid),
                TargetRef::TraceId(id) => ClaimTarget::TraceId(id),
            };
            match sampler.claim(target, record.tenant.as_deref()).await {
                Claim::Promoted => {
                    return Attempt::NotYet(
                        "the trace was held by sampling; promoted, on its way to MLflow".into(),
                    );
                }
                Claim::NotNow(reason) => return Attempt::NotYet(reason),
                Claim::Gone(reason) => return Attempt::Gone(reason),
                Claim::Unknown => {}
            }
        }
        let trace_id = match self.finder.find(&record.request.target, tenant).await {
            Ok(Found::Trace(t)) => t,
            Ok(Found::NotYet(reason)) => return Attempt::NotYet(reason),
            Ok(Found::Elsewhere) => return Attempt::Elsewhere,
            Err(e) => return Attempt::NotYet(format!("cannot search MLflow: {e}")),
        };
        let body = record.request.mlflow_body(&record.feedback_id, &trace_id);
        match self
            .identities
            .of(record.tenant.as_deref())
            .log_assessment(&trace_id, &record.feedback_id, &body)
            .await
        {
            Ok(AssessmentOutcome::Logged) => Attempt::Logged(trace_id),
            Ok(AssessmentOutcome::NoTrace) => {
                Attempt::NotYet(format!("trace {trace_id} is not in MLflow yet"))
            }
            Err(e) if e.is_retryable() => Attempt::NotYet(e.to_string()),
            Err(e) => Attempt::Rejected(e.to_string()),
        }
    }

    /// Retries pending records until logged or expired; prunes finished ones.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        loop {
            self.tick().await;
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(self.cfg.retry_interval) => {}
                _ = self.wake.notified() => {
                    // Give the pipeline a moment to deliver the spans the feedback is about.
                    tokio::time::sleep(self.cfg.retry_interval / 2).await;
                }
            }
        }
    }

    async fn tick(&self) {
        let now = now_ms();
        for mut record in self.store.due(now, MAX_ATTEMPTS_PER_TICK) {
            let kind = record.request.kind.as_str();
            if record.expires_ms <= now {
                record.status = Status::Expired;
                record.updated_ms = now;
                tracing::warn!(
                    feedback_id = %record.feedback_id,
                    target = ?record.request.target,
                    attempts = record.attempts,
                    last_reason = record.detail.as_deref().unwrap_or(""),
                    "feedback expired: its trace never reached MLflow"
                );
                record.detail = Some(format!(
                    "expired after {} attempts: {}",
                    record.attempts,
                    record.detail.as_deref().unwrap_or("trace not found")
                ));
                metrics::counter!("gateway_feedback_expired_total", "kind" => kind).increment(1);
                self.persist(&record);
                continue;
            }
            record.attempts += 1;
            record.updated_ms = now;
            match self.attempt(&record).await {
                Attempt::Logged(trace_id) => {
                    record.status = Status::Logged;
                    record.trace_id = Some(trace_id);
                    record.detail = None;
                    metrics::counter!(
                        "gateway_feedback_logged_total",
                        labels(
                            &[("kind", kind)],
                            record.tenant.as_deref().map(Arc::from).as_ref()
                        )
                    )
                    .increment(1);
                    tracing::info!(feedback_id = %record.feedback_id, attempts = record.attempts,
                        "pending feedback logged");
                }
                Attempt::NotYet(reason) => {
                    let backoff = self
                        .cfg
                        .retry_interval
                        .saturating_mul(1 << record.attempts.min(6))
                        .min(MAX_RETRY_DELAY);
                    record.next_attempt_ms = now + backoff.as_millis() as u64;
                    record.detail = Some(reason);
                }
                Attempt::Elsewhere => {
                    record.status = Status::Expired;
                    record.detail = Some(
                        "no trace with this target among the tenant's \
                        experiments"
                            .into(),
                    );
                    metrics::counter!(
                        "gateway_feedback_rejected_total",
                        labels(
                            &[("reason", "not_found")],
                            record.tenant.as_deref().map(Arc::from).as_ref()
                        )
                    )
                    .increment(1);
                }
                Attempt::Gone(reason) => {
                    record.status = Status::Expired;
                    tracing::warn!(feedback_id = %record.feedback_id, %reason,
                        "pending feedback for a trace sampling dropped for good");
                    record.detail = Some(reason);
                    metrics::counter!(
                        "gateway_feedback_rejected_total",
                        labels(
                            &[("reason", "sampled_out")],
                            record.tenant.as_deref().map(Arc::from).as_ref()
                        )
                    )
                    .increment(1);
                }
                Attempt::Rejected(reason) => {
                    record.status = Status::Expired;
                    record.detail = Some(format!("MLflow rejected the assessment: {reason}"));
                    metrics::counter!(
                        "gateway_feedback_rejected_total",
                        labels(
                            &[("reason", "mlflow")],
                            record.tenant.as_deref().map(Arc::from).as_ref()
                        )
                    )
                    .increment(1);
                    tracing::error!(feedback_id = %record.feedback_id, %reason,
                        "MLflow rejected pending feedback");
                }
            }
            self.persist(&record);
        }
        let pruned = self.store.prune(now, self.cfg.retention.as_millis() as u64);
        if pruned > 0 {
            tracing::debug!(pruned, "forgot finished feedback records");
        }
        metrics::gauge!("gateway_feedback_pending").set(self.store.pending_count() as f64);
    }

    fn persist(&self, record: &Record) {
        if let Err(e) = self.store.put(record) {
            tracing::error!(error = %e, "cannot persist feedback record");
        }
    }
}
