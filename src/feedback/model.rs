//! Feedback and expectation requests: validation with field-named errors, the idempotency id,
//! and the MLflow assessment body.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::vocab::limits::{self, Field};

/// MLflow stores assessment names and source ids in 250-character columns.
const MAX_NAME_CHARS: usize = 250;
const MAX_SOURCE_ID_CHARS: usize = 250;
/// Longest accepted `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;
/// Source id when neither the body nor `X-User-ID` names one (MLflow's SDK uses the same).
pub const DEFAULT_SOURCE_ID: &str = "default";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Feedback,
    Expectation,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Feedback => "feedback",
            Kind::Expectation => "expectation",
        }
    }
}

/// Which trace the assessment is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetRef {
    ClientRequestId(String),
    TraceId(String),
}

/// A validated request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssessmentRequest {
    pub kind: Kind,
    pub target: TargetRef,
    pub name: String,
    pub value: Value,
    pub rationale: Option<String>,
    pub source_type: String,
    pub source_id: String,
    pub metadata: BTreeMap<String, String>,
    pub span_id: Option<String>,
}

/// A request that can never succeed, naming the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidField {
    pub field: String,
    pub message: String,
}

fn invalid(field: &str, message: impl Into<String>) -> InvalidField {
    InvalidField {
        field: field.to_string(),
        message: message.into(),
    }
}

/// What the transport adds to the body.
#[derive(Debug, Clone, Default)]
pub struct RequestExtras {
    /// `?client_request_id=` on HTTP.
    pub query_client_request_id: Option<String>,
    /// `X-User-ID` header / `x-user-id` metadata: the default source id.
    pub user_id_header: Option<String>,
}

const KNOWN_FIELDS: &[&str] = &[
    "client_request_id",
    "trace_id",
    "name",
    "value",
    "rationale",
    "source",
    "metadata",
    "span_id",
];

fn opt_string(body: &Map<String, Value>, field: &str) -> Result<Option<String>, InvalidField> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(invalid(field, "must be a string")),
    }
}

/// Normalises a trace id to MLflow's `tr-` + 32 lowercase hex form.
pub fn normalize_trace_id(raw: &str) -> Option<String> {
    let hex = raw.strip_prefix("tr-").unwrap_or(raw).to_ascii_lowercase();
    (hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| format!("tr-{hex}"))
}

/// Source types MLflow accepts; anything else is silently stored as unspecified by MLflow.
pub fn normalize_source_type(raw: &str) -> Option<&'static str> {
    match raw.trim().to_ascii_uppercase().as_str() {
        "HUMAN" => Some("HUMAN"),
        "LLM_JUDGE" => Some("LLM_JUDGE"),
        "CODE" => Some("CODE"),
        _ => None,
    }
}

impl AssessmentRequest {
    /// Validates a JSON body (the HTTP API's shape) plus what the transport supplied.
    pub fn from_json(
        kind: Kind,
        body: &Value,
        extras: &RequestExtras,
    ) -> Result<Self, InvalidField> {
        let Value::Object(body) = body else {
            return Err(invalid("body", "must be a JSON object"));
        };
        if let Some(unknown) = body.keys().find(|k| !KNOWN_FIELDS.contains(&k.as_str())) {
            return Err(invalid(
                unknown,
                format!("unknown field; expected one of {}", KNOWN_FIELDS.join(", ")),
            ));
        }
        let source = match body.get("source") {
            None | Some(Value::Null) => (None, None),
            Some(Value::Object(src)) => {
                for k in src.keys() {
                    if k != "type" && k != "id" {
                        return Err(invalid(
                            &format!("source.{k}"),
                            "unknown field; expected type, id",
                        ));
                    }
                }
                (
                    opt_string(src, "type")
                        .map_err(|_| invalid("source.type", "must be a string"))?,
                    opt_string(src, "id").map_err(|_| invalid("source.id", "must be a string"))?,
                )
            }
            Some(_) => return Err(invalid("source", "must be an object with type and id")),
        };
        let metadata = match body.get("metadata") {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    _ => Err(invalid(&format!("metadata.{k}"), "values must be strings")),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(invalid("metadata", "must be an object of strings")),
        };
        Self::build(
            kind,
            opt_string(body, "client_request_id")?,
            opt_string(body, "trace_id")?,
            opt_string(body, "name")?,
            body.get("value").cloned(),
            opt_string(body, "rationale")?,
            source,
            metadata,
            opt_string(body, "span_id")?,
            extras,
        )
    }

    /// Validates the parts of a request (shared by HTTP and gRPC).
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        kind: Kind,
        client_request_id: Option<String>,
        trace_id: Option<String>,
        name: Option<String>,
        value: Option<Value>,
        rationale: Option<String>,
        (source_type, source_id): (Option<String>, Option<String>),
        metadata: BTreeMap<String, String>,
        span_id: Option<String>,
        extras: &RequestExtras,
    ) -> Result<Self, InvalidField> {
        let nonempty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
        let body_crid = nonempty(client_request_id);
        let query_crid = nonempty(extras.query_client_request_id.clone());
        let crid = match (body_crid, query_crid) {
            (Some(a), Some(b)) if a != b => {
                return Err(invalid(
                    "client_request_id",
                    "differs between the body and the query string",
                ));
            }
            (a, b) => a.or(b),
        };
        let target =
            match (crid, nonempty(trace_id)) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        "client_request_id",
                        "give exactly one of client_request_id and trace_id, not both",
                    ));
                }
                (None, None) => {
                    return Err(invalid(
                        "client_request_id",
                        "required (or trace_id): which request is this about?",
                    ));
                }
                (Some(mut crid), None) => {
                    // The same fitting the mapping table applies, so long ids still match.
                    limits::fit(&mut crid, Field::ClientRequestId);
                    TargetRef::ClientRequestId(crid)
                }
                (None, Some(t)) => TargetRef::TraceId(normalize_trace_id(&t).ok_or_else(|| {
                    invalid("trace_id", "must be 'tr-' followed by 32 hex digits")
                })?),
            };
        let name = nonempty(name).ok_or_else(|| invalid("name", "required"))?;
        if name.chars().count() > MAX_NAME_CHARS {
            return Err(invalid(
                "name",
                format!("at most {MAX_NAME_CHARS} characters"),
            ));
        }
        let value = match value {
            None | Some(Value::Null) => {
                return Err(invalid(
                    "value",
                    "required: a boolean, number, string, object or array",
                ));
            }
            Some(v) => v,
        };
        let source_type = match source_type.filter(|s| !s.trim().is_empty()) {
            None => "HUMAN".to_string(),
            Some(t) => normalize_source_type(&t)
                .ok_or_else(|| invalid("source.type", "must be HUMAN, LLM_JUDGE or CODE"))?
                .to_string(),
        };
        let source_id = nonempty(source_id)
            .or_else(|| nonempty(extras.user_id_header.clone()))
            .unwrap_or_else(|| DEFAULT_SOURCE_ID.to_string());
        if source_id.chars().count() > MAX_SOURCE_ID_CHARS {
            return Err(invalid(
                "source.id",
                format!("at most {MAX_SOURCE_ID_CHARS} characters"),
            ));
        }
        let span_id = match nonempty(span_id) {
            None => None,
            Some(s) if s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Some(s.to_ascii_lowercase())
            }
            Some(_) => return Err(invalid("span_id", "must be 16 hex digits")),
        };
        for key in metadata.keys() {
            if !limits::is_valid_key(key) {
                return Err(invalid(
                    &format!("metadata.{key}"),
                    "not a valid MLflow key",
                ));
            }
        }
        Ok(Self {
            kind,
            target,
            name,
            value,
            rationale: rationale.filter(|r| !r.is_empty()),
            source_type,
            source_id,
            metadata,
            span_id,
        })
    }

    /// The gateway's id for this request, also used as MLflow's `assessment_id` (at most 50
    /// characters): a hash of the kind, the target and the idempotency key, or of the whole
    /// request when the client sent no key, so an identical retry is the same assessment.
    pub fn feedback_id(&self, idempotency_key: Option<&str>, tenant: Option<&str>) -> String {
        let mut h = Sha256::new();
        // A tenant's ids are its own: the same key from another tenant is another request.
        if let Some(t) = tenant {
            h.update(format!("tenant:{t}"));
            h.update([0]);
        }
        h.update(self.kind.as_str());
        h.update([0]);
        match &self.target {
            TargetRef::ClientRequestId(c) => h.update(format!("crid:{c}")),
            TargetRef::TraceId(t) => h.update(format!("trace:{t}")),
        }
        h.update([0]);
        match idempotency_key {
            Some(k) => h.update(format!("key:{k}")),
            None => {
                let canonical = json!({
                    "name": self.name, "value": self.value, "rationale": self.rationale,
                    "source": [self.source_type, self.source_id], "metadata": self.metadata,
                    "span_id": self.span_id,
                });
                h.update(format!("content:{canonical}"));
            }
        }
        let digest = h.finalize();
        let hex: String = digest.iter().take(20).map(|b| format!("{b:02x}")).collect();
        format!("gw-{hex}")
    }

    /// The `CreateAssessment` body for `trace_id`.
    pub fn mlflow_body(&self, assessment_id: &str, trace_id: &str) -> Value {
        let mut a = json!({
            "assessment_id": assessment_id,
            "assessment_name": self.name,
            "trace_id": trace_id,
            "source": {"source_type": self.source_type, "source_id": self.source_id},
        });
        match self.kind {
            Kind::Feedback => a["feedback"] = json!({"value": self.value}),
            // MLflow stores structured expectations in serialized form; scalars as given.
            Kind::Expectation => {
                a["expectation"] = match &self.value {
                    v @ (Value::Object(_) | Value::Array(_)) => json!({"serialized_value": {
                        "serialization_format": "JSON_FORMAT",
                        "value": v.to_string(),
                    }}),
                    v => json!({"value": v}),
                }
            }
        }
        if let Some(r) = &self.rationale {
            a["rationale"] = json!(r);
        }
        if !self.metadata.is_empty() {
            a["metadata"] = json!(self.metadata);
        }
        if let Some(s) = &self.span_id {
            a["span_id"] = json!(s);
        }
        json!({"assessment": a})
    }
}

/// Validates an `Idempotency-Key`.
pub fn check_idempotency_key(key: Option<&str>) -> Result<Option<String>, InvalidField> {
    match key.map(str::trim) {
        None | Some("") => Ok(None),
        Some(k) if k.chars().count() > MAX_IDEMPOTENCY_KEY_CHARS => Err(invalid(
            "Idempotency-Key",
            format!("at most {MAX_IDEMPOTENCY_KEY_CHARS} characters"),
        )),
        Some(k) => Ok(Some(k.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: Value) -> Result<AssessmentRequest, InvalidField> {
        AssessmentRequest::from_json(Kind::Feedback, &body, &RequestExtras::default())
    }

    #[test]
    fn a_full_request_validates() {
        let r = parse(json!({
            "client_request_id": "req-abc-123", "name": "response_is_correct", "value": true,
            "rationale": "accurate", "source": {"type": "llm_judge", "id": "judge-1"},
            "metadata": {"channel": "web"}, "span_id": "D05DA0D84DD0BA66"
        }))
        .unwrap();
        assert_eq!(r.target, TargetRef::ClientRequestId("req-abc-123".into()));
        assert_eq!(r.source_type, "LLM_JUDGE");
        assert_eq!(r.span_id.as_deref(), Some("d05da0d84dd0ba66"));
    }

    #[test]
    fn errors_name_the_field() {
        let field = |body: Value| parse(body).unwrap_err().field;
        assert_eq!(field(json!({"name": "n", "value": 1})), "client_request_id");
        assert_eq!(
            field(
                json!({"client_request_id": "a", "trace_id": format!("tr-{}", "a".repeat(32)), "name": "n", "value": 1})
            ),
            "client_request_id"
        );
        assert_eq!(
            field(json!({"trace_id": "tr-xyz", "name": "n", "value": 1})),
            "trace_id"
        );
        assert_eq!(field(json!({"client_request_id": "a", "value": 1})), "name");
        assert_eq!(
            field(json!({"client_request_id": "a", "name": "n"})),
            "value"
        );
        assert_eq!(
            field(json!({"client_request_id": "a", "name": "n", "value": null})),
            "value"
        );
        assert_eq!(
            field(
                json!({"client_request_id": "a", "name": "n", "value": 1, "source": {"type": "robot"}})
            ),
            "source.type"
        );
        assert_eq!(
            field(json!({"client_request_id": "a", "name": "n", "value": 1, "metadata": {"k": 1}})),
            "metadata.k"
        );
        assert_eq!(
            field(json!({"client_request_id": "a", "name": "n", "value": 1, "span_id": "xyz"})),
            "span_id"
        );
        assert_eq!(
            field(json!({"client_request_id": "a", "name": "n", "value": 1, "is_correct": true})),
            "is_correct"
        );
        assert_eq!(field(json!([1])), "body");
    }

    #[test]
    fn query_string_request_id_and_user_header_defaults() {
        let extras = RequestExtras {
            query_client_request_id: Some("req-q".into()),
            user_id_header: Some("user-jane".into()),
        };
        let r = AssessmentRequest::from_json(
            Kind::Feedback,
            &json!({"name": "n", "value": false}),
            &extras,
        )
        .unwrap();
        assert_eq!(r.target, TargetRef::ClientRequestId("req-q".into()));
        assert_eq!(r.source_id, "user-jane");
        assert_eq!(r.source_type, "HUMAN");
        let conflict = AssessmentRequest::from_json(
            Kind::Feedback,
            &json!({"client_request_id": "other", "name": "n", "value": 1}),
            &extras,
        );
        assert_eq!(conflict.unwrap_err().field, "client_request_id");
    }

    #[test]
    fn trace_ids_are_normalised() {
        let hex = "AB".repeat(16);
        let r = parse(json!({"trace_id": hex, "name": "n", "value": 1})).unwrap();
        assert_eq!(
            r.target,
            TargetRef::TraceId(format!("tr-{}", "ab".repeat(16)))
        );
    }

    #[test]
    fn feedback_ids_are_stable_short_and_key_scoped() {
        let r = parse(json!({"client_request_id": "a", "name": "n", "value": 1})).unwrap();
        let id = r.feedback_id(None, None);
        assert_eq!(id, r.feedback_id(None, None));
        assert!(id.len() <= 50);
        assert_ne!(id, r.feedback_id(Some("k1"), None));
        assert_eq!(
            r.feedback_id(Some("k1"), None),
            r.feedback_id(Some("k1"), None)
        );
        let mut other = r.clone();
        other.value = json!(2);
        assert_ne!(
            other.feedback_id(None, None),
            id,
            "a different vote is a new assessment"
        );
        assert_eq!(
            other.feedback_id(Some("k1"), None),
            r.feedback_id(Some("k1"), None),
            "the key decides"
        );
        assert_ne!(
            r.feedback_id(Some("k1"), Some("team-a")),
            r.feedback_id(Some("k1"), Some("team-b")),
            "each tenant's keys are its own"
        );
        assert_ne!(
            r.feedback_id(Some("k1"), Some("team-a")),
            r.feedback_id(Some("k1"), None)
        );
    }

    #[test]
    fn mlflow_bodies_for_each_value_shape() {
        let mut r =
            parse(json!({"client_request_id": "a", "name": "n", "value": {"x": [1]}})).unwrap();
        let b = r.mlflow_body("gw-1", "tr-1");
        assert_eq!(b["assessment"]["feedback"]["value"], json!({"x": [1]}));
        assert_eq!(b["assessment"]["source"]["source_type"], "HUMAN");
        r.kind = Kind::Expectation;
        let b = r.mlflow_body("gw-1", "tr-1");
        assert_eq!(
            b["assessment"]["expectation"]["serialized_value"]["value"],
            "{\"x\":[1]}"
        );
        r.value = json!("Paris");
        assert_eq!(
            r.mlflow_body("gw-1", "tr-1")["assessment"]["expectation"]["value"],
            "Paris"
        );
    }

    #[test]
    fn long_request_ids_are_fitted_like_the_mapping_table_does() {
        let r =
            parse(json!({"client_request_id": "r".repeat(80), "name": "n", "value": 1})).unwrap();
        assert_eq!(r.target, TargetRef::ClientRequestId("r".repeat(50)));
    }
}
