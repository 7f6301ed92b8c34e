//! The StartTraceV3 body that completes a trace's TraceInfo once its root span is in MLflow.
//!
//! StartTraceV3 overwrites every top-level field it is given and resets the ones it is not
//! (mlflow-rest.md §0.6), so the body is always complete: time, duration and state from the root
//! span, the client request id, all metadata and tags.

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::limits::{self, Field};
use super::rules::TraceFacts;

/// MLflow's trace schema version, as its own SDK writes it.
const TRACE_SCHEMA_VERSION: &str = "3";
/// Trace-name tag.
pub const TRACE_NAME_TAG: &str = "mlflow.traceName";

/// Terminal state of a trace, from its root span's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TraceState {
    Ok,
    Error,
}

/// Everything needed to write one trace's TraceInfo.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TraceInfoJob {
    /// OTel trace id (16 bytes).
    pub trace_id: [u8; 16],
    pub root_span_id: [u8; 8],
    pub root_name: String,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub state: TraceState,
    pub facts: TraceFacts,
}

/// `tr-` + 32 lowercase hex digits: the id MLflow derives from the OTel trace id.
pub fn mlflow_trace_id(trace_id: &[u8]) -> String {
    let mut s = String::with_capacity(3 + 32);
    s.push_str("tr-");
    for b in trace_id {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn rfc3339_millis(unix_nano: u64) -> String {
    let millis = (unix_nano / 1_000_000) as i128 * 1_000_000;
    OffsetDateTime::from_unix_timestamp_nanos(millis)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}

/// A protobuf JSON Duration with millisecond precision (MLflow stores milliseconds).
fn duration_string(nanos: u64) -> String {
    let millis = nanos / 1_000_000;
    format!("{}.{:03}s", millis / 1000, millis % 1000)
}

impl TraceInfoJob {
    /// The StartTraceV3 request body for `experiment_id`.
    pub fn body(&self, experiment_id: &str) -> Value {
        let mut metadata = self.facts.metadata.clone();
        metadata
            .entry("mlflow.trace_schema.version".into())
            .or_insert_with(|| TRACE_SCHEMA_VERSION.into());
        let mut tags = self.facts.tags.clone();
        if !tags.contains_key(TRACE_NAME_TAG) && !self.root_name.is_empty() {
            let mut name = self.root_name.clone();
            limits::fit(&mut name, Field::TagValue);
            tags.insert(TRACE_NAME_TAG.into(), name);
        }
        let state = match self.state {
            TraceState::Ok => "OK",
            TraceState::Error => "ERROR",
        };
        let mut info = json!({
            "trace_id": mlflow_trace_id(&self.trace_id),
            "trace_location": {
                "type": "MLFLOW_EXPERIMENT",
                "mlflow_experiment": {"experiment_id": experiment_id}
            },
            "request_time": rfc3339_millis(self.start_unix_nano),
            "execution_duration": duration_string(
                self.end_unix_nano.saturating_sub(self.start_unix_nano)
            ),
            "state": state,
            "trace_metadata": metadata,
            "tags": tags,
        });
        if let Some(id) = &self.facts.client_request_id {
            info["client_request_id"] = Value::String(id.clone());
        }
        json!({"trace": {"trace_info": info}})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> TraceInfoJob {
        let mut facts = TraceFacts {
            client_request_id: Some("req-1".into()),
            ..Default::default()
        };
        facts
            .metadata
            .insert("mlflow.trace.user".into(), "u".into());
        facts.tags.insert("team".into(), "a".into());
        TraceInfoJob {
            trace_id: [0xab; 16],
            root_span_id: [1; 8],
            root_name: "handle_chat".into(),
            start_unix_nano: 1_764_177_728_999_123_456,
            end_unix_nano: 1_764_177_728_999_123_456 + 1_500_400_000,
            state: TraceState::Error,
            facts,
        }
    }

    #[test]
    fn trace_ids_are_tr_plus_lowercase_hex() {
        assert_eq!(
            mlflow_trace_id(&[0xAB; 16]),
            format!("tr-{}", "ab".repeat(16))
        );
        assert_eq!(mlflow_trace_id(&[0; 16]).len(), 35);
    }

    #[test]
    fn body_is_complete_and_in_mlflow_formats() {
        let b = job().body("12");
        let info = &b["trace"]["trace_info"];
        assert_eq!(info["trace_id"], format!("tr-{}", "ab".repeat(16)));
        assert_eq!(info["client_request_id"], "req-1");
        assert_eq!(info["trace_location"]["type"], "MLFLOW_EXPERIMENT");
        assert_eq!(
            info["trace_location"]["mlflow_experiment"]["experiment_id"],
            "12"
        );
        assert_eq!(info["request_time"], "2025-11-26T17:22:08.999Z");
        assert_eq!(info["execution_duration"], "1.500s");
        assert_eq!(info["state"], "ERROR");
        assert_eq!(info["trace_metadata"]["mlflow.trace.user"], "u");
        assert_eq!(info["trace_metadata"]["mlflow.trace_schema.version"], "3");
        assert_eq!(info["tags"]["team"], "a");
        assert_eq!(info["tags"]["mlflow.traceName"], "handle_chat");
    }

    #[test]
    fn no_client_request_id_field_when_unknown() {
        let mut j = job();
        j.facts.client_request_id = None;
        assert!(
            j.body("1")["trace"]["trace_info"]
                .get("client_request_id")
                .is_none()
        );
    }

    #[test]
    fn a_mapped_trace_name_tag_wins_over_the_span_name() {
        let mut j = job();
        j.facts.tags.insert(TRACE_NAME_TAG.into(), "custom".into());
        assert_eq!(
            j.body("1")["trace"]["trace_info"]["tags"]["mlflow.traceName"],
            "custom"
        );
    }
}
