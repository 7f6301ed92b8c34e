//! Per-span checks and fixes: what makes a span unusable (reported in `partial_success`), what
//! must be shortened before MLflow sees it, and what is added to root spans so MLflow lifts
//! session, user and tags at ingest, before the TraceInfo write lands.

use std::borrow::Cow;

use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;

use super::attrs::set_str;
use super::rules::TraceFacts;
use crate::otlp::SpanView;
use crate::vocab::limits::{self, Field};

/// Span attributes MLflow reads as the session; over 250 characters they sink the whole batch.
const SESSION_ATTRS: [&str; 2] = ["session.id", "gen_ai.conversation.id"];
/// Span attribute MLflow lifts into `mlflow.trace.user`.
const USER_ATTR: &str = "user.id";
/// Root-span attribute prefix MLflow turns into trace tags.
const TRACE_TAG_PREFIX: &str = "mlflow.traceTag.";

/// Why a span cannot be forwarded. The text goes to the client in `partial_success`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SpanProblem {
    #[error("trace_id must be 16 bytes and not all zero")]
    BadTraceId,
    #[error("span_id must be 8 bytes and not all zero")]
    BadSpanId,
    #[error("parent_span_id must be empty or 8 bytes")]
    BadParentId,
    #[error("span is unfinished (end_time_unix_nano is 0)")]
    Unfinished,
    #[error("end_time_unix_nano is before start_time_unix_nano")]
    EndBeforeStart,
}

impl SpanProblem {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            SpanProblem::BadTraceId => "bad_trace_id",
            SpanProblem::BadSpanId => "bad_span_id",
            SpanProblem::BadParentId => "bad_parent_id",
            SpanProblem::Unfinished => "unfinished",
            SpanProblem::EndBeforeStart => "end_before_start",
        }
    }
}

/// Checks what MLflow needs of a span. Wrong-length ids are caught here because OTLP/JSON with
/// snake_case keys decodes into empty ids without an error.
pub fn check_view(span: &SpanView) -> Result<(), SpanProblem> {
    check_parts(
        span.trace_id(),
        span.span_id(),
        span.parent_span_id(),
        span.start_time_unix_nano,
        span.end_time_unix_nano,
    )
}

fn check_parts(
    trace_id: &[u8],
    span_id: &[u8],
    parent_span_id: &[u8],
    start: u64,
    end: u64,
) -> Result<(), SpanProblem> {
    if trace_id.len() != 16 || trace_id.iter().all(|b| *b == 0) {
        return Err(SpanProblem::BadTraceId);
    }
    if span_id.len() != 8 || span_id.iter().all(|b| *b == 0) {
        return Err(SpanProblem::BadSpanId);
    }
    if !(parent_span_id.is_empty() || parent_span_id.len() == 8) {
        return Err(SpanProblem::BadParentId);
    }
    // MLflow stores an end time of 0 as the epoch and gives the trace a negative duration.
    if end == 0 {
        return Err(SpanProblem::Unfinished);
    }
    if end < start {
        return Err(SpanProblem::EndBeforeStart);
    }
    Ok(())
}

/// A span is a trace root when it has no parent (an all-zero parent id counts as none).
pub fn is_root_parent(parent_span_id: &[u8]) -> bool {
    parent_span_id.iter().all(|b| *b == 0)
}

/// Whether `fit` may have to change an attribute of this name.
pub fn may_need_fit(key: impl AsRef<[u8]>) -> bool {
    SESSION_ATTRS.iter().any(|a| a.as_bytes() == key.as_ref())
}

/// Whether `fit` would change any of these attributes (the span's session attributes).
pub fn needs_fit(attrs: &[KeyValue]) -> bool {
    attrs.iter().any(|kv| {
        may_need_fit(&kv.key)
            && match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => limits::exceeds(s, Field::SpanSessionId),
                Some(Value::ArrayValue(_))
                | Some(Value::KvlistValue(_))
                | Some(Value::BytesValue(_)) => true,
                _ => false,
            }
    })
}

/// Shortens the attributes MLflow would reject the whole batch for.
pub fn fit(span: &mut Span) {
    for kv in span.attributes.iter_mut() {
        if !SESSION_ATTRS.contains(&kv.key.as_str()) {
            continue;
        }
        let Some(value) = kv.value.as_mut() else {
            continue;
        };
        match value.value.as_mut() {
            Some(Value::StringValue(s)) => {
                limits::fit(s, Field::SpanSessionId);
            }
            // MLflow stringifies other values before its length check; an array or map can
            // exceed it, so it is sent as the (fitted) string MLflow would have made.
            Some(Value::ArrayValue(_))
            | Some(Value::KvlistValue(_))
            | Some(Value::BytesValue(_)) => {
                let mut s = serde_json::to_string(&*value).unwrap_or_default();
                if limits::fit(&mut s, Field::SpanSessionId) {
                    value.value = Some(Value::StringValue(s));
                }
            }
            _ => {}
        }
    }
}

/// Puts the trace's facts on its root span in the attributes MLflow lifts at ingest, so the
/// trace is searchable by session, user and tags as soon as its spans land.
pub fn enrich_root(span: &mut Span, facts: &TraceFacts) {
    for (key, value) in root_attributes(facts) {
        set_str(&mut span.attributes, &key, value);
    }
}

/// The string attributes `enrich_root` sets, for a root that is not decoded
/// (`SpanView::set_string_attributes`).
pub fn root_attributes(facts: &TraceFacts) -> Vec<(Cow<'static, str>, &str)> {
    let mut out = Vec::with_capacity(2 + facts.tags.len());
    if let Some(session) = facts.session() {
        // The session wins over gen_ai.conversation.id only if that one disagrees; keep both
        // consistent so MLflow's "first attribute wins" picks the mapped value.
        out.push((Cow::Borrowed(SESSION_ATTRS[0]), session));
    }
    if let Some(user) = facts.user() {
        out.push((Cow::Borrowed(USER_ATTR), user));
    }
    for (key, value) in &facts.tags {
        out.push((
            Cow::Owned(format!("{TRACE_TAG_PREFIX}{key}")),
            value.as_str(),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::attrs::{find_str, kv_str};
    use opentelemetry_proto::tonic::common::v1::KeyValue;

    fn check(s: &Span) -> Result<(), SpanProblem> {
        check_parts(
            &s.trace_id,
            &s.span_id,
            &s.parent_span_id,
            s.start_time_unix_nano,
            s.end_time_unix_nano,
        )
    }

    fn is_root(s: &Span) -> bool {
        is_root_parent(&s.parent_span_id)
    }

    pub fn span(parent: &[u8]) -> Span {
        Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            parent_span_id: parent.to_vec(),
            name: "s".into(),
            start_time_unix_nano: 10,
            end_time_unix_nano: 20,
            ..Default::default()
        }
    }

    #[test]
    fn valid_spans_pass_and_roots_are_detected() {
        assert_eq!(check(&span(&[])), Ok(()));
        assert!(is_root(&span(&[])));
        assert!(is_root(&span(&[0; 8])));
        assert!(!is_root(&span(&[3; 8])));
    }

    #[test]
    fn each_problem_is_named() {
        let mut s = span(&[]);
        s.trace_id = vec![];
        assert_eq!(check(&s), Err(SpanProblem::BadTraceId));
        s.trace_id = vec![0; 16];
        assert_eq!(check(&s), Err(SpanProblem::BadTraceId));
        s.trace_id = vec![1; 15];
        assert_eq!(check(&s), Err(SpanProblem::BadTraceId));
        let mut s = span(&[]);
        s.span_id = vec![];
        assert_eq!(check(&s), Err(SpanProblem::BadSpanId));
        let s = span(&[1; 4]);
        assert_eq!(check(&s), Err(SpanProblem::BadParentId));
        let mut s = span(&[]);
        s.end_time_unix_nano = 0;
        assert_eq!(check(&s), Err(SpanProblem::Unfinished));
        s.end_time_unix_nano = 5;
        assert_eq!(check(&s), Err(SpanProblem::EndBeforeStart));
    }

    #[test]
    fn long_session_ids_are_cut_on_every_span() {
        let mut s = span(&[7; 8]);
        s.attributes = vec![
            kv_str("session.id", &"x".repeat(400)),
            kv_str("gen_ai.conversation.id", &"y".repeat(251)),
            kv_str("other", &"z".repeat(400)),
        ];
        assert!(needs_fit(&s.attributes));
        fit(&mut s);
        assert!(!needs_fit(&s.attributes));
        assert_eq!(find_str(&s.attributes, "session.id").unwrap().len(), 250);
        assert_eq!(
            find_str(&s.attributes, "gen_ai.conversation.id")
                .unwrap()
                .len(),
            250
        );
        assert_eq!(find_str(&s.attributes, "other").unwrap().len(), 400);
    }

    #[test]
    fn long_non_string_session_ids_become_fitted_strings() {
        use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue};
        let mut s = span(&[7; 8]);
        let ints = (0..200)
            .map(|i| AnyValue {
                value: Some(Value::IntValue(i)),
            })
            .collect();
        s.attributes = vec![crate::map::attrs::kv_value(
            "session.id",
            Value::ArrayValue(ArrayValue { values: ints }),
        )];
        fit(&mut s);
        match s.attributes[0]
            .value
            .as_ref()
            .and_then(|v| v.value.as_ref())
        {
            Some(Value::StringValue(v)) => assert_eq!(v.chars().count(), 250),
            other => panic!("not fitted: {other:?}"),
        }
    }

    #[test]
    fn root_gets_the_attributes_mlflow_lifts() {
        let mut s = span(&[]);
        s.attributes = vec![kv_str("session.id", "old")];
        let mut facts = TraceFacts::default();
        facts
            .metadata
            .insert("mlflow.trace.session".into(), "sess".into());
        facts
            .metadata
            .insert("mlflow.trace.user".into(), "u".into());
        facts.tags.insert("team".into(), "alpha".into());
        enrich_root(&mut s, &facts);
        let get = |k: &str| find_str(&s.attributes, k);
        assert_eq!(get("session.id").as_deref(), Some("sess"));
        assert_eq!(get("user.id").as_deref(), Some("u"));
        assert_eq!(get("mlflow.traceTag.team").as_deref(), Some("alpha"));
        assert_eq!(
            s.attributes
                .iter()
                .filter(|kv: &&KeyValue| kv.key == "session.id")
                .count(),
            1
        );
    }
}
