//! After a payload call times out, MLflow may be frozen with the request still waiting in its
//! socket; until `/health` answers again, payload calls first probe it, one probe at a time.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::MlflowClient;
use super::rest::{check_status, transport_error};
use crate::mlflow::error::MlflowError;

/// Set when a payload call timed out; cleared by the first `/health` probe that is answered.
#[derive(Debug, Default)]
pub(super) struct StallGate {
    stalled: AtomicBool,
    probe: tokio::sync::Mutex<()>,
    /// Payload calls that timed out in a row; each doubles the next call's timeout (up to
    /// `MAX_TIMEOUT_DOUBLINGS`), so a batch MLflow needs longer than the configured timeout for
    /// (a big batch on a loaded server) is not abandoned and resent forever.
    timeouts_in_a_row: AtomicU32,
}

/// A payload call's timeout grows to at most 2^4 = 16 times `mlflow.request_timeout`.
const MAX_TIMEOUT_DOUBLINGS: u32 = 4;

impl MlflowClient {
    /// Lets a payload call through unless MLflow stalled: then `/health` must answer first.
    /// A caller that finds another one probing gets `Stalled` at once and backs off.
    async fn pass_stall_gate(&self) -> Result<(), MlflowError> {
        if !self.stall.stalled.load(Ordering::Acquire) {
            return Ok(());
        }
        let Ok(_probing) = self.stall.probe.try_lock() else {
            return Err(MlflowError::Stalled);
        };
        if !self.stall.stalled.load(Ordering::Acquire) {
            return Ok(());
        }
        match self.health().await {
            Ok(()) => {
                tracing::info!("MLflow answers again; resuming deliveries");
                self.stall.stalled.store(false, Ordering::Release);
                Ok(())
            }
            Err(MlflowError::Timeout) => Err(MlflowError::Stalled),
            Err(e) => Err(e),
        }
    }

    /// Sends a payload call through the shared pool.
    pub(super) async fn send_payload(
        &self,
        kind: &'static str,
        request: reqwest::RequestBuilder,
    ) -> Result<(), MlflowError> {
        self.gated(kind, |timeout| async move {
            match request.timeout(timeout).send().await {
                Ok(reply) => check_status(reply).await,
                Err(e) => Err(transport_error(e)),
            }
        })
        .await
    }

    /// Runs a payload call of `kind` (a metric label) through the stall gate, with the timeout
    /// it is due, times it, and notes a timeout for the calls after it.
    async fn gated<F, Fut>(&self, kind: &'static str, call: F) -> Result<(), MlflowError>
    where
        F: FnOnce(Duration) -> Fut,
        Fut: Future<Output = Result<(), MlflowError>>,
    {
        let mut outcomes = self
            .gated_each(kind, 1, |timeout| async move { vec![call(timeout).await] })
            .await;
        outcomes.pop().unwrap_or(Err(MlflowError::BadReply(format!(
            "no outcome for a {kind} call"
        ))))
    }

    /// `gated` for `calls` payload calls made together (a pipelined run): one gate, one timeout
    /// per reply, each call observed as its share of the run's time; one outcome per call. A
    /// closed gate answers every call with its error.
    pub(crate) async fn gated_each<F, Fut>(
        &self,
        kind: &'static str,
        calls: usize,
        call: F,
    ) -> Vec<Result<(), MlflowError>>
    where
        F: FnOnce(Duration) -> Fut,
        Fut: Future<Output = Vec<Result<(), MlflowError>>>,
    {
        if let Err(e) = self.pass_stall_gate().await {
            return vec![Err(e); calls];
        }
        let timeout = self.call_timeout();
        let started = Instant::now();
        let outcomes = call(timeout).await;
        let timed_out = outcomes
            .iter()
            .any(|o| matches!(o, Err(MlflowError::Timeout)));
        self.note_calls(kind, calls, started.elapsed(), timed_out, timeout);
        outcomes
    }

    /// The timeout a payload call is due: the configured one, doubled after each timeout in a
    /// row.
    fn call_timeout(&self) -> Duration {
        let doublings = self
            .stall
            .timeouts_in_a_row
            .load(Ordering::Relaxed)
            .min(MAX_TIMEOUT_DOUBLINGS);
        self.timeout.saturating_mul(1 << doublings)
    }

    /// Records `calls` payload calls of `kind` that took `elapsed` together (each is observed
    /// as its share), and whether one of them timed out: then MLflow may be frozen, and the
    /// calls after it wait for `/health` and get twice as long.
    fn note_calls(
        &self,
        kind: &'static str,
        calls: usize,
        elapsed: Duration,
        timed_out: bool,
        timeout: Duration,
    ) {
        let share = elapsed.as_secs_f64() / calls.max(1) as f64;
        let histogram = metrics::histogram!("gateway_mlflow_request_seconds", "kind" => kind);
        for _ in 0..calls {
            histogram.record(share);
        }
        if timed_out {
            self.stall.timeouts_in_a_row.fetch_add(1, Ordering::Relaxed);
            if !self.stall.stalled.swap(true, Ordering::AcqRel) {
                tracing::warn!(
                    timeout_s = timeout.as_secs_f64(),
                    "an MLflow call timed out; probing /health before sending more data, \
                     and giving the next call twice as long"
                );
            }
        } else {
            self.stall.timeouts_in_a_row.store(0, Ordering::Relaxed);
        }
    }
}
