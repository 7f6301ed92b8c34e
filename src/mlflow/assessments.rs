//! MLflow's calls behind the feedback API: logging an assessment, finding a trace by its client
//! request id, listing the experiments to search.

use serde_json::{Value, json};

use super::MlflowClient;
use super::client::Experiment;
use super::error::MlflowError;

/// How MLflow answered an assessment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssessmentOutcome {
    /// Created now, or by an earlier attempt with the same assessment id.
    Logged,
    /// The trace is not in MLflow (yet): its spans have not landed.
    NoTrace,
}

/// A trace found by its client request id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundTrace {
    pub trace_id: String,
    pub experiment_id: String,
}

impl MlflowClient {
    /// Creates assessment `assessment_id` (whose MLflow body is `body`) on `trace_id`. MLflow
    /// answers a duplicate id with a 500 naming a constraint: an earlier attempt got through,
    /// which is confirmed by reading it back.
    pub async fn log_assessment(
        &self,
        trace_id: &str,
        assessment_id: &str,
        body: &Value,
    ) -> Result<AssessmentOutcome, MlflowError> {
        let path = format!("api/3.0/mlflow/traces/{trace_id}/assessments");
        match self.post_json(&path, body).await {
            Ok(_) => Ok(AssessmentOutcome::Logged),
            Err(e) if e.status() == Some(404) => Ok(AssessmentOutcome::NoTrace),
            Err(e) if e.is_duplicate() => self
                .get_json(&format!("{path}/{assessment_id}"), &[])
                .await
                .map(|_| AssessmentOutcome::Logged),
            Err(e) => Err(e),
        }
    }

    /// The most recent trace whose client request id is `client_request_id`, in `experiments`.
    /// `None` when there is none, or when the id holds both quote characters (MLflow's filter
    /// syntax cannot quote it).
    pub async fn find_trace_by_client_request_id(
        &self,
        experiments: &[String],
        client_request_id: &str,
    ) -> Result<Option<FoundTrace>, MlflowError> {
        let quote = if !client_request_id.contains('\'') {
            '\''
        } else if !client_request_id.contains('"') {
            '"'
        } else {
            return Ok(None);
        };
        if experiments.is_empty() {
            return Ok(None);
        }
        let locations: Vec<Value> = experiments
            .iter()
            .map(|id| json!({"type": "MLFLOW_EXPERIMENT", "mlflow_experiment": {"experiment_id": id}}))
            .collect();
        let reply = self
            .post_json(
                "api/3.0/mlflow/traces/search",
                &json!({
                    "locations": locations,
                    "filter": format!(
                        "attributes.client_request_id = {quote}{client_request_id}{quote}"
                    ),
                    "max_results": 1,
                    "order_by": ["timestamp_ms DESC"],
                }),
            )
            .await?;
        let found = &reply["traces"][0];
        Ok(found["trace_id"].as_str().map(|trace_id| FoundTrace {
            trace_id: trace_id.to_string(),
            experiment_id: found["trace_location"]["mlflow_experiment"]["experiment_id"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        }))
    }

    /// Up to `max` active experiments (id and name), most recently updated first.
    pub async fn recent_experiments(&self, max: usize) -> Result<Vec<Experiment>, MlflowError> {
        let reply = self
            .post_json(
                "api/2.0/mlflow/experiments/search",
                &json!({
                    "max_results": max,
                    "order_by": ["last_update_time DESC"],
                    "view_type": "ACTIVE_ONLY",
                }),
            )
            .await?;
        Ok(reply["experiments"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| serde_json::from_value(e.clone()).ok())
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The experiment a trace is in; `None` when MLflow does not know the trace (yet).
    pub async fn trace_experiment(&self, trace_id: &str) -> Result<Option<String>, MlflowError> {
        match self
            .get_json(&format!("api/3.0/mlflow/traces/{trace_id}"), &[])
            .await
        {
            Ok(v) => Ok(
                v["trace"]["trace_info"]["trace_location"]["mlflow_experiment"]["experiment_id"]
                    .as_str()
                    .map(str::to_string),
            ),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
