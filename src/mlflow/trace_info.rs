//! A TraceInfo writer's way to StartTraceV3: a pipelined connection of its own where that
//! behaves like the shared pool (`pipelined`), else the pool, one call at a time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::MlflowClient;
use super::error::{MlflowError, status_outcome};
use super::pipelined::PipelinedConnection;

/// A TraceInfo writer's way to StartTraceV3 (`MlflowClient::trace_info_connection`).
pub struct TraceInfoConnection {
    pub(super) client: MlflowClient,
    /// `mlflow.trace_info_pipeline_depth`.
    pub(super) pipeline_depth: usize,
    /// Mean time per call of the last run, in microseconds.
    pub(super) last_call_micros: AtomicU64,
    /// Used by one writer at a time; the lock is never contended, it only lets a retry loop
    /// borrow the connection from a shared reference.
    pub(super) own: Option<tokio::sync::Mutex<PipelinedConnection>>,
}

/// Metadata MLflow's StartTraceV3 adds to the TraceInfo it writes (`SqlAlchemyStore.start_trace`).
const TRACE_INFO_FINALIZED: &str = "mlflow.trace.infoFinalized";

/// Pipelining saves the gateway's own cost of a call, a few tens of microseconds; it is worth a
/// writer taking a run of TraceInfos only while calls take less than this. Slower calls are the
/// server's time (StartTraceV3 on a real MLflow: 10-20 ms or more), and a writer holding a run
/// then makes its batch wait for it while the other writers could have shared it.
const PIPELINE_WORTHWHILE_CALL: Duration = Duration::from_millis(1);

impl TraceInfoConnection {
    /// How many TraceInfos this writer should take for its next run: the pipeline depth while
    /// calls are quick (and on its own connection), else one.
    pub fn run_limit(&self) -> usize {
        let quick = self.last_call_micros.load(Ordering::Relaxed)
            < PIPELINE_WORTHWHILE_CALL.as_micros() as u64;
        if self.own.is_some() && quick {
            self.pipeline_depth
        } else {
            1
        }
    }

    /// StartTraceV3 once per body, with the same stall gate, timeouts and error classes as the
    /// shared pool; one outcome per body, in order. On a connection of its own the calls are
    /// pipelined (`pipelined`); through the pool they go one after another.
    pub async fn start_traces(&self, bodies: &[Bytes]) -> Vec<Result<(), MlflowError>> {
        let Some(own) = &self.own else {
            let mut outcomes = Vec::with_capacity(bodies.len());
            for body in bodies {
                outcomes.push(self.client.start_trace(body.clone()).await);
            }
            return outcomes;
        };
        self.client
            .gated_each("trace_info", bodies.len(), |timeout| async move {
                let started = Instant::now();
                let replies = own.lock().await.post_json_each(bodies, timeout).await;
                self.last_call_micros.store(
                    (started.elapsed().as_micros() / bodies.len().max(1) as u128) as u64,
                    Ordering::Relaxed,
                );
                replies
                    .into_iter()
                    .map(|reply| {
                        self.client
                            .scoped(reply.and_then(|(status, retry_after, body)| {
                                status_outcome(status, retry_after, body).map(drop)
                            }))
                    })
                    .collect()
            })
            .await
    }

    /// Whether MLflow holds a TraceInfo for the trace that StartTraceV3 finalized (MLflow marks
    /// it so): one that MLflow's SDK wrote, when the trace came from it (dual export).
    pub async fn finalized(&self, trace_id: &str) -> Result<bool, MlflowError> {
        Ok(self
            .client
            .trace_metadata(trace_id)
            .await?
            .is_some_and(|metadata| {
                metadata.get(TRACE_INFO_FINALIZED).and_then(|v| v.as_str()) == Some("true")
            }))
    }

    /// StartTraceV3 once.
    pub async fn start_trace(&self, body: Bytes) -> Result<(), MlflowError> {
        let mut outcomes = self.start_traces(&[body]).await;
        outcomes.pop().unwrap_or(Err(MlflowError::BadReply(
            "no outcome for a StartTraceV3 call".into(),
        )))
    }
}
