//! The feedback core shared by the HTTP and gRPC APIs: resolve the target trace, log the
//! assessment, or keep it pending (durably) until the trace is in MLflow or the request expires.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;

use super::auth::{Authenticator, RateLimiter};
use super::model::{AssessmentRequest, TargetRef};
use super::store::{FeedbackStore, Record, Status, StoreError};
use crate::config::FeedbackConfig;
use crate::mlflow::assessments::AssessmentOutcome;
use crate::mlflow::{MlflowClient, MlflowError};
use crate::pipeline::request_ids::{IndexedTrace, RequestIdIndex};
use crate::vocab::ExperimentRef;
use crate::vocab::now_ms;

/// The experiments searched for an unknown client request id are re-listed this often.
const EXPERIMENT_LIST_TTL: Duration = Duration::from_secs(30);
/// Most experiments one search covers (most recently updated first).
const MAX_SEARCH_EXPERIMENTS: usize = 100;
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
    #[error(transparent)]
    Storage(#[from] StoreError),
}

enum Attempt {
    Logged(String),
    NotYet(String),
    Rejected(String),
}

pub struct FeedbackService {
    pub store: FeedbackStore,
    pub index: Arc<RequestIdIndex>,
    pub auth: Authenticator,
    pub limiter: RateLimiter,
    client: MlflowClient,
    known_experiments: Vec<ExperimentRef>,
    experiment_list: Mutex<Option<(Instant, Vec<String>)>>,
    cfg: FeedbackConfig,
    wake: Notify,
}

impl FeedbackService {
    pub fn new(
        cfg: FeedbackConfig,
        store: FeedbackStore,
        index: Arc<RequestIdIndex>,
        auth: Authenticator,
        client: MlflowClient,
        known_experiments: Vec<ExperimentRef>,
    ) -> Self {
        Self {
            store,
            index,
            auth,
            limiter: RateLimiter::new(cfg.rate_limit_per_second, cfg.rate_limit_burst),
            client,
            known_experiments,
            experiment_list: Mutex::new(None),
            cfg,
            wake: Notify::new(),
        }
    }

    pub fn max_body_bytes(&self) -> usize {
        self.cfg.max_body_bytes
    }

    pub fn get(&self, feedback_id: &str) -> Option<Outcome> {
        self.store.get(feedback_id).map(|r| Outcome::of(&r))
    }

    /// Logs the assessment now if its trace is in MLflow, else keeps it pending. The same
    /// idempotency key (or identical content) returns the earlier outcome.
    #[tracing::instrument(skip_all, fields(kind = request.kind.as_str(), feedback_id))]
    pub async fn submit(
        &self,
        request: AssessmentRequest,
        idempotency_key: Option<&str>,
    ) -> Result<Outcome, SubmitError> {
        let kind = request.kind.as_str();
        let feedback_id = request.feedback_id(idempotency_key);
        tracing::Span::current().record("feedback_id", feedback_id.as_str());
        if let Some(existing) = self.store.get(&feedback_id)
            && existing.status != Status::Expired
        {
            metrics::counter!("gateway_feedback_duplicates_total", "kind" => kind).increment(1);
            return Ok(Outcome::of(&existing));
        }
        metrics::counter!("gateway_feedback_received_total", "kind" => kind).increment(1);
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
        };
        match self.attempt(&record).await {
            Attempt::Logged(trace_id) => {
                record.status = Status::Logged;
                record.trace_id = Some(trace_id);
                self.store.put(&record)?;
                metrics::counter!("gateway_feedback_logged_total", "kind" => kind).increment(1);
            }
            Attempt::NotYet(reason) => {
                let pending = self.store.pending_count();
                if pending >= self.cfg.max_pending {
                    metrics::counter!("gateway_feedback_rejected_total", "reason" => "pending_full")
                        .increment(1);
                    return Err(SubmitError::Full(pending));
                }
                record.detail = Some(reason);
                self.store.put(&record)?;
                metrics::gauge!("gateway_feedback_pending").set(self.store.pending_count() as f64);
                self.wake.notify_one();
            }
            Attempt::Rejected(message) => {
                metrics::counter!("gateway_feedback_rejected_total", "reason" => "mlflow")
                    .increment(1);
                return Err(SubmitError::Rejected(message));
            }
        }
        Ok(Outcome::of(&record))
    }

    async fn attempt(&self, record: &Record) -> Attempt {
        let trace_id = match &record.request.target {
            TargetRef::TraceId(t) => t.clone(),
            TargetRef::ClientRequestId(crid) => match self.resolve(crid).await {
                Ok(Some(t)) => t,
                Ok(None) => {
                    return Attempt::NotYet(
                        "no trace with this client_request_id has reached MLflow yet".into(),
                    );
                }
                Err(e) => return Attempt::NotYet(format!("cannot search MLflow: {e}")),
            },
        };
        let body = record.request.mlflow_body(&record.feedback_id, &trace_id);
        match self
            .client
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

    /// client_request_id -> MLflow trace id: the pipeline's index, then MLflow's search.
    async fn resolve(&self, crid: &str) -> Result<Option<String>, MlflowError> {
        if let Some(t) = self.index.get(crid) {
            return Ok(Some(t.trace_id));
        }
        let experiments = self.search_experiments().await?;
        let Some(found) = self
            .client
            .find_trace_by_client_request_id(&experiments, crid)
            .await?
        else {
            return Ok(None);
        };
        self.index.insert(
            crid.to_string(),
            IndexedTrace {
                trace_id: found.trace_id.clone(),
                experiment: ExperimentRef::Id(found.experiment_id),
            },
        );
        Ok(Some(found.trace_id))
    }

    /// Active experiments to search: the most recently updated ones, plus those this
    /// gateway routes to by configuration.
    async fn search_experiments(&self) -> Result<Vec<String>, MlflowError> {
        let mut cached = self.experiment_list.lock().await;
        if let Some((at, ids)) = cached.as_ref()
            && at.elapsed() < EXPERIMENT_LIST_TTL
        {
            return Ok(ids.clone());
        }
        let mut ids = self
            .client
            .recent_experiments(MAX_SEARCH_EXPERIMENTS)
            .await?;
        for known in &self.known_experiments {
            if let ExperimentRef::Id(id) = known
                && !ids.contains(id)
            {
                ids.push(id.clone());
            }
        }
        *cached = Some((Instant::now(), ids.clone()));
        Ok(ids)
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
                    metrics::counter!("gateway_feedback_logged_total", "kind" => kind).increment(1);
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
                Attempt::Rejected(reason) => {
                    record.status = Status::Expired;
                    record.detail = Some(format!("MLflow rejected the assessment: {reason}"));
                    metrics::counter!("gateway_feedback_rejected_total", "reason" => "mlflow")
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
