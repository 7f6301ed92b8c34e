//! The StartTraceV3 body that completes a trace's TraceInfo once its root span is in MLflow.
//!
//! StartTraceV3 overwrites every top-level field it is given and resets the ones it is not
//! (MLflow 3.17.2's `SqlAlchemyStore.start_trace` sets an existing row's time, duration, state
//! and client request id from the call, given or not), so the body is always complete: time,
//! duration and state from the root span, the client request id, all metadata and tags.

use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::json;
use super::rules::TraceFacts;
use crate::vocab::limits::{self, Field};

/// MLflow's trace schema version, as its own SDK writes it.
const TRACE_SCHEMA_VERSION: &str = "3";
/// Trace-name tag.
pub const TRACE_NAME_TAG: &str = "mlflow.traceName";
/// Where MLflow's readers look for a trace's spans. MLflow sets it when spans arrive; written
/// with the TraceInfo too, so a trace whose TraceInfo lands first (`mlflow.trace_info_first`)
/// reads as "spans not exported yet" (search skips it, GetTrace answers 404) rather than as a
/// legacy trace with spans in artifacts (the Python client then warns that it failed to
/// download them, and GetTrace answers 500), until its spans land moments later.
const SPANS_LOCATION_TAG: (&str, &str) = ("mlflow.trace.spansLocation", "TRACKING_STORE");

/// Terminal state of a trace, from its root span's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub enum TraceState {
    Ok,
    Error,
}

/// Everything needed to write one trace's TraceInfo.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct TraceInfoJob {
    /// OTel trace id (16 bytes).
    pub trace_id: [u8; 16],
    /// All zero for a trace finalized without its root (`traces.finalize_without_root`).
    pub root_span_id: [u8; 8],
    pub root_name: String,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub state: TraceState,
    pub facts: TraceFacts,
    /// The root came from MLflow's SDK: the TraceInfo is written only when MLflow holds none
    /// that StartTraceV3 wrote (with dual export the SDK writes its own).
    #[serde(default)]
    pub from_mlflow_sdk: bool,
}

/// `tr-` + 32 lowercase hex digits: the id MLflow derives from the OTel trace id.
pub fn mlflow_trace_id(trace_id: &[u8]) -> String {
    // Called a few times per trace (index, TraceInfo, log fields): one allocation, not one
    // `format!` per byte.
    let mut s = String::with_capacity(3 + 2 * trace_id.len());
    s.push_str("tr-");
    for &b in trace_id {
        s.extend(json::hex_pair(b).map(char::from));
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

/// Room for a StartTraceV3 body (765 bytes for the benchmark's traces with the default
/// mapping), so that writing it does not grow the buffer several times.
const TYPICAL_BODY_BYTES: usize = 1024;

impl TraceInfoJob {
    /// The root's name as the trace-name tag value (fitted to the tag limit).
    fn trace_name(&self) -> std::borrow::Cow<'_, str> {
        if limits::exceeds(&self.root_name, Field::TagValue) {
            let mut name = self.root_name.clone();
            limits::fit(&mut name, Field::TagValue);
            name.into()
        } else {
            self.root_name.as_str().into()
        }
    }

    /// The StartTraceV3 request body for `experiment_id`, serialized. Written by hand rather
    /// than through serde: built once per trace, it was a visible share of the CPU with short
    /// traces.
    pub fn body_bytes(&self, experiment_id: &str) -> Vec<u8> {
        let name = self.trace_name();
        let mut out = Vec::with_capacity(TYPICAL_BODY_BYTES);
        out.extend_from_slice(br#"{"trace":{"trace_info":{"trace_id":"tr-"#);
        json::hex(&mut out, &self.trace_id);
        out.extend_from_slice(
            br#"","trace_location":{"type":"MLFLOW_EXPERIMENT","mlflow_experiment":{"experiment_id":"#,
        );
        json::string(&mut out, experiment_id);
        out.extend_from_slice(br#"}},"request_time":"#);
        json::string(&mut out, &rfc3339_millis(self.start_unix_nano));
        out.extend_from_slice(br#","execution_duration":""#);
        json::duration_millis(
            &mut out,
            self.end_unix_nano.saturating_sub(self.start_unix_nano) / 1_000_000,
        );
        out.extend_from_slice(match self.state {
            TraceState::Ok => br#"","state":"OK","trace_metadata":"#,
            TraceState::Error => br#"","state":"ERROR","trace_metadata":"#,
        });
        json::map_with_defaults(
            &mut out,
            &self.facts.metadata,
            &[Some(("mlflow.trace_schema.version", TRACE_SCHEMA_VERSION))],
        );
        out.extend_from_slice(br#","tags":"#);
        json::map_with_defaults(
            &mut out,
            &self.facts.tags,
            &[
                (!name.is_empty()).then_some((TRACE_NAME_TAG, &*name)),
                Some(SPANS_LOCATION_TAG),
            ],
        );
        if let Some(id) = &self.facts.client_request_id {
            out.extend_from_slice(br#","client_request_id":"#);
            json::string(&mut out, id);
        }
        out.extend_from_slice(b"}}}");
        out
    }

    /// The same body as a JSON value (dead letters keep it so a replay can resend it).
    pub fn body(&self, experiment_id: &str) -> Value {
        serde_json::from_slice(&self.body_bytes(experiment_id)).unwrap_or_default()
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
            from_mlflow_sdk: false,
        }
    }

    #[test]
    fn trace_ids_are_tr_plus_lowercase_hex() {
        assert_eq!(
            mlflow_trace_id(&[0xAB; 16]),
            format!("tr-{}", "ab".repeat(16))
        );
        assert_eq!(mlflow_trace_id(&[0; 16]).len(), 35);
        let every_nibble: Vec<u8> = (0..16)
            .map(|i| i * 0x11)
            .chain([0x01, 0x23, 0xef])
            .collect();
        let expected: String = every_nibble.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(mlflow_trace_id(&every_nibble), format!("tr-{expected}"));
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
        assert_eq!(info["tags"]["mlflow.trace.spansLocation"], "TRACKING_STORE");
    }

    #[test]
    fn the_sent_bytes_are_json_that_reads_back_as_the_job() {
        let mut j = job();
        j.root_name = "n".repeat(5000);
        j.facts
            .metadata
            .insert("mlflow.trace_schema.version".into(), "2".into());
        let odd = "a \"quote\", a \\ backslash,\n a newline, \u{1} and 日本語 🙂";
        j.facts.metadata.insert(odd.into(), odd.into());
        j.facts.tags.insert("t".into(), odd.into());
        j.facts.client_request_id = Some(odd.into());
        let sent: Value = serde_json::from_slice(&j.body_bytes("7\"")).unwrap();
        let info = &sent["trace"]["trace_info"];
        assert_eq!(info["trace_metadata"]["mlflow.trace_schema.version"], "2");
        assert_eq!(info["trace_metadata"][odd], odd);
        assert_eq!(info["tags"]["t"], odd);
        assert_eq!(info["client_request_id"], odd);
        assert_eq!(
            info["trace_location"]["mlflow_experiment"]["experiment_id"],
            "7\""
        );
        assert_eq!(
            info["tags"]["mlflow.traceName"].as_str().map(str::len),
            Some(4096)
        );
        assert_eq!(info["trace_metadata"].as_object().map(|m| m.len()), Some(3));
        assert_eq!(info["tags"].as_object().map(|m| m.len()), Some(4));
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
