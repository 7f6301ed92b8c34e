//! MLflow's field limits and the fitting of values to them. The figures are MLflow 3.17.2's:
//! `mlflow/tracing/constant.py` (`MAX_CHARS_IN_TRACE_INFO_*`) and the trace tables in
//! `mlflow/store/tracking/dbmodels/models.py`.
//!
//! The gateway never forwards a value MLflow is known to reject or silently mangle: it shortens
//! it first and counts the shortening in `gateway_truncations_total{field}`.

/// `client_request_id` is `VARCHAR(50)` on strict databases.
pub const MAX_CLIENT_REQUEST_ID_CHARS: usize = 50;
/// Every MLflow response cuts metadata values to 250 characters.
pub const MAX_METADATA_VALUE_CHARS: usize = 250;
/// Tag values come back cut to 4096 characters.
pub const MAX_TAG_VALUE_CHARS: usize = 4096;
/// `session.id` / `gen_ai.conversation.id` over 250 characters make MLflow reject the whole batch
/// (its trace table's `session_id` column is 250 characters wide).
pub const MAX_SESSION_ID_CHARS: usize = 250;
/// Tag and metadata keys.
pub const MAX_KEY_CHARS: usize = 250;

/// Which limit a value was fitted to; the label of the truncation metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    ClientRequestId,
    MetadataValue,
    TagValue,
    SpanSessionId,
}

impl Field {
    pub fn as_str(self) -> &'static str {
        match self {
            Field::ClientRequestId => "client_request_id",
            Field::MetadataValue => "metadata_value",
            Field::TagValue => "tag_value",
            Field::SpanSessionId => "span_session_id",
        }
    }

    pub fn max_chars(self) -> usize {
        match self {
            Field::ClientRequestId => MAX_CLIENT_REQUEST_ID_CHARS,
            Field::MetadataValue => MAX_METADATA_VALUE_CHARS,
            Field::TagValue => MAX_TAG_VALUE_CHARS,
            Field::SpanSessionId => MAX_SESSION_ID_CHARS,
        }
    }
}

/// Whether `fit` would shorten `value`.
pub fn exceeds(value: &str, field: Field) -> bool {
    let max = field.max_chars();
    value.len() > max && value.chars().nth(max).is_some()
}

/// Shortens `value` in place to the field's limit in characters (never splitting a UTF-8
/// character). Returns whether it was shortened, and counts it.
pub fn fit(value: &mut String, field: Field) -> bool {
    let max = field.max_chars();
    // Fast path: a string of at most `max` bytes has at most `max` characters.
    if value.len() <= max {
        return false;
    }
    match value.char_indices().nth(max) {
        Some((cut, _)) => {
            value.truncate(cut);
            metrics::counter!("gateway_truncations_total", "field" => field.as_str()).increment(1);
            true
        }
        None => false,
    }
}

/// MLflow's tag/metadata key rule: 1-250 characters of alphanumerics (any script), `_ - . / :`
/// and spaces, and no path tricks. Invalid keys are refused by the tags API and silently skipped
/// at span ingest, so the gateway skips them itself.
pub fn is_valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.chars().count() <= MAX_KEY_CHARS
        && !key.contains("..")
        && !key.starts_with('/')
        && key
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | ':' | ' '))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_cuts_on_character_boundaries() {
        let mut s = "é".repeat(60);
        assert!(fit(&mut s, Field::ClientRequestId));
        assert_eq!(s.chars().count(), 50);
        let mut short = "é".repeat(30); // 60 bytes, 30 chars: not cut
        assert!(!fit(&mut short, Field::ClientRequestId));
        assert_eq!(short.chars().count(), 30);
    }

    #[test]
    fn fit_leaves_values_at_the_limit() {
        let mut s = "a".repeat(250);
        assert!(!fit(&mut s, Field::SpanSessionId));
        let mut s = "a".repeat(251);
        assert!(fit(&mut s, Field::SpanSessionId));
        assert_eq!(s.len(), 250);
    }

    #[test]
    fn key_rules_follow_mlflow() {
        assert!(is_valid_key("team"));
        assert!(is_valid_key("mlflow.trace.user"));
        assert!(is_valid_key("a b/c:d-e_f"));
        assert!(is_valid_key("チーム"));
        assert!(!is_valid_key(""));
        assert!(!is_valid_key("bad!"));
        assert!(!is_valid_key("../x"));
        assert!(!is_valid_key(&"k".repeat(251)));
    }
}
