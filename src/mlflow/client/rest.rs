//! MLflow's REST calls: span ingest, StartTraceV3, experiments, health, and JSON in general.

use std::time::Duration;

use bytes::Bytes;
use reqwest::Response;
use reqwest::header::CONTENT_TYPE;
use serde::Deserialize;
use serde_json::Value;

use super::MlflowClient;
use crate::mlflow::error::{MlflowError, retry_after, status_outcome, with_causes};

/// An experiment as MLflow describes it.
#[derive(Debug, Clone, Deserialize)]
pub struct Experiment {
    pub experiment_id: String,
    pub name: String,
    #[serde(default)]
    pub lifecycle_stage: String,
}

impl Experiment {
    pub fn is_active(&self) -> bool {
        self.lifecycle_stage.is_empty() || self.lifecycle_stage == "active"
    }
}

#[derive(Deserialize)]
struct ExperimentReply {
    experiment: Experiment,
}

impl MlflowClient {
    /// Posts an encoded `ExportTraceServiceRequest` to `/v1/traces`.
    pub async fn post_spans(&self, experiment_id: &str, body: Bytes) -> Result<(), MlflowError> {
        if experiment_id.is_empty() {
            return Err(MlflowError::BadReply(
                "refusing to send an empty experiment id".into(),
            ));
        }
        let request = self
            .pooled
            .post(self.spans_url.clone())
            .header(CONTENT_TYPE, "application/x-protobuf")
            .header(crate::vocab::EXPERIMENT_HEADER, experiment_id)
            .body(body);
        self.scoped(self.send_payload("spans", request).await)
    }

    /// StartTraceV3: writes a trace's TraceInfo (on a kept-alive connection, see the module doc).
    pub async fn start_trace(&self, body: Bytes) -> Result<(), MlflowError> {
        let request = self
            .pooled
            .post(self.start_trace_url.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        self.scoped(self.send_payload("trace_info", request).await)
    }

    /// An experiment by id; `None` when MLflow does not know it.
    pub async fn get_experiment(&self, id: &str) -> Result<Option<Experiment>, MlflowError> {
        self.experiment_query("api/2.0/mlflow/experiments/get", ("experiment_id", id))
            .await
    }

    /// An experiment by name (deleted ones included; check `is_active`).
    pub async fn get_experiment_by_name(
        &self,
        name: &str,
    ) -> Result<Option<Experiment>, MlflowError> {
        self.experiment_query(
            "api/2.0/mlflow/experiments/get-by-name",
            ("experiment_name", name),
        )
        .await
    }

    async fn experiment_query(
        &self,
        path: &str,
        query: (&str, &str),
    ) -> Result<Option<Experiment>, MlflowError> {
        let reply = self
            .rest
            .get(self.url(path))
            .query(&[query])
            .send()
            .await
            .map_err(transport_error)?;
        not_found_as_none(self.scoped(check(reply).await))?
            .map(|v| parse::<ExperimentReply>(v).map(|r| r.experiment))
            .transpose()
    }

    /// A trace's TraceInfo metadata; `None` when MLflow has no such trace.
    pub async fn trace_metadata(
        &self,
        trace_id: &str,
    ) -> Result<Option<serde_json::Map<String, Value>>, MlflowError> {
        let reply = self
            .rest
            .get(self.url(&format!("api/3.0/mlflow/traces/{trace_id}")))
            .send()
            .await
            .map_err(transport_error)?;
        Ok(
            not_found_as_none(self.scoped(check(reply).await))?.map(|mut v| {
                match v["trace"]["trace_info"]["trace_metadata"].take() {
                    Value::Object(map) => map,
                    _ => serde_json::Map::new(),
                }
            }),
        )
    }

    /// Creates an experiment; on a name race, returns the one that won.
    pub async fn create_experiment(&self, name: &str) -> Result<String, MlflowError> {
        let reply = self
            .rest
            .post(self.url("api/2.0/mlflow/experiments/create"))
            .json(&serde_json::json!({
                "name": name,
                "tags": [{"key": "mlflow.note.content", "value": "Created by mlflow-otlp-gateway"}]
            }))
            .send()
            .await
            .map_err(transport_error)?;
        match self.scoped(check(reply).await) {
            Ok(v) => v
                .get("experiment_id")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| MlflowError::BadReply("create experiment: no experiment_id".into())),
            Err(e)
                if e.status() == Some(400) && e.to_string().contains("RESOURCE_ALREADY_EXISTS") =>
            {
                match self.get_experiment_by_name(name).await? {
                    Some(exp) => Ok(exp.experiment_id),
                    None => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// GET `/health`: whether the server answers at all.
    pub async fn health(&self) -> Result<(), MlflowError> {
        let reply = self
            .rest
            .get(self.url("health"))
            .timeout(self.timeout.min(Duration::from_secs(5)))
            .send()
            .await
            .map_err(transport_error)?;
        check(reply).await.map(drop)
    }

    /// GET on an authenticated, cheap REST route, to find out whether credentials work.
    pub async fn check_auth(&self) -> Result<(), MlflowError> {
        self.get_experiment("0").await.map(drop)
    }

    /// Any JSON GET on the REST API (used by tests and the feedback path).
    pub async fn get_json(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, MlflowError> {
        let reply = self
            .rest
            .get(self.url(path))
            .query(query)
            .send()
            .await
            .map_err(transport_error)?;
        self.scoped(check(reply).await)
    }

    /// Any JSON POST on the REST API.
    pub async fn post_json(&self, path: &str, body: &Value) -> Result<Value, MlflowError> {
        let reply = self
            .rest
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .map_err(transport_error)?;
        self.scoped(check(reply).await)
    }
}

pub(super) fn transport_error(e: reqwest::Error) -> MlflowError {
    if e.is_timeout() {
        MlflowError::Timeout
    } else {
        MlflowError::Connect(with_causes(&e))
    }
}

fn parse<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, MlflowError> {
    serde_json::from_value(v).map_err(|e| MlflowError::BadReply(e.to_string()))
}

fn not_found_as_none(r: Result<Value, MlflowError>) -> Result<Option<Value>, MlflowError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.status() == Some(404) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Turns a reply into its JSON body, or a classified error carrying MLflow's message.
async fn check(reply: Response) -> Result<Value, MlflowError> {
    let is_json = reply
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    let body = reply_body(reply).await?;
    if !is_json || body.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&body).map_err(|e| MlflowError::BadReply(e.to_string()))
}

/// A payload call's outcome: success, or a classified error. A successful reply's body is read
/// (so the connection is reused) but not parsed: StartTraceV3 echoes the whole TraceInfo
/// (~1-2 KiB of JSON per trace) and nothing reads it.
pub(super) async fn check_status(reply: Response) -> Result<(), MlflowError> {
    reply_body(reply).await.map(drop)
}

/// The body of a successful reply, or the classified error a failed one carries.
async fn reply_body(reply: Response) -> Result<Bytes, MlflowError> {
    let status = reply.status();
    let retry_after = retry_after(reply.headers());
    let body = reply.bytes().await.map_err(transport_error)?;
    status_outcome(status.as_u16(), retry_after, body)
}
