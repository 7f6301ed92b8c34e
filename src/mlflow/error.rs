//! The two-class error model for calls to MLflow, decided once here: retryable (the same call
//! may succeed later) or permanent (it never will). Authentication failures are their own class:
//! retrying does not help until an operator fixes credentials, so they fail readiness loudly
//! while the data waits.

use std::time::Duration;

/// An error's text with its causes, `top: cause: cause`: HTTP clients' top-level text hides
/// what happened underneath (refused, reset, closed).
pub(super) fn with_causes(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// How a failed MLflow call should be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    Retryable,
    Permanent,
    Auth,
}

/// A failed MLflow call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MlflowError {
    #[error("cannot reach MLflow: {0}")]
    Connect(String),
    #[error("MLflow did not answer within the request timeout")]
    Timeout,
    /// A call timed out earlier and MLflow's `/health` has not answered since.
    #[error("MLflow has not answered since a call timed out; waiting for /health")]
    Stalled,
    #[error("MLflow answered {status}: {message}")]
    Status {
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("unexpected reply from MLflow: {0}")]
    BadReply(String),
    /// MLflow refused a tenant's own credentials or permission (its `basic-auth` app): that
    /// tenant's data cannot go until an operator grants it, and no other tenant is affected.
    #[error("MLflow denied the tenant's identity ({status}): {message}")]
    Denied { status: u16, message: String },
}

impl MlflowError {
    /// MLflow's answer to a second create with an id it already holds (an assessment): a 500
    /// naming the database's unique constraint.
    pub fn is_duplicate(&self) -> bool {
        matches!(self, MlflowError::Status { status: 500, message, .. } if message.contains("constraint"))
    }

    pub fn class(&self) -> ErrorClass {
        match self {
            MlflowError::Connect(_) | MlflowError::Timeout | MlflowError::Stalled => {
                ErrorClass::Retryable
            }
            MlflowError::BadReply(_) => ErrorClass::Retryable,
            MlflowError::Denied { .. } => ErrorClass::Permanent,
            MlflowError::Status {
                status, message, ..
            } => classify_status(*status, message),
        }
    }

    pub fn is_retryable(&self) -> bool {
        self.class() != ErrorClass::Permanent
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            MlflowError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            MlflowError::Status { status, .. } | MlflowError::Denied { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }

    /// Short metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            MlflowError::Connect(_) => "connect",
            MlflowError::Timeout => "timeout",
            MlflowError::Stalled => "stalled",
            MlflowError::BadReply(_) => "bad_reply",
            MlflowError::Denied { .. } => "denied",
            MlflowError::Status { status, .. } => match status {
                401 | 403 => "auth",
                404 => "not_found",
                429 => "throttled",
                400..=499 => "rejected",
                _ => "server_error",
            },
        }
    }
}

/// 408/429/5xx are transient; MLflow answers 422 both for store contention ("Failed to log
/// OpenTelemetry spans", retryable) and for unconvertible spans (permanent).
fn classify_status(status: u16, message: &str) -> ErrorClass {
    match status {
        401 | 403 => ErrorClass::Auth,
        408 | 429 => ErrorClass::Retryable,
        422 if message.contains("Cannot convert") => ErrorClass::Permanent,
        422 => ErrorClass::Retryable,
        501 => ErrorClass::Permanent,
        500..=599 => ErrorClass::Retryable,
        _ => ErrorClass::Permanent,
    }
}

/// A reply's `Retry-After`, in the delay-seconds form MLflow and proxies send.
pub(super) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| parse_retry_after(v.as_bytes()))
}

/// A `Retry-After` value in the delay-seconds form.
pub(super) fn parse_retry_after(value: &[u8]) -> Option<Duration> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// A reply's body if its status is a success, else the classified error it carries.
pub(super) fn status_outcome(
    status: u16,
    retry_after: Option<Duration>,
    body: bytes::Bytes,
) -> Result<bytes::Bytes, MlflowError> {
    if (200..300).contains(&status) {
        return Ok(body);
    }
    Err(MlflowError::Status {
        status,
        message: error_message(&body),
        retry_after,
    })
}

/// MLflow's two error shapes: `{"error_code","message"}` and FastAPI's `{"detail"}`.
pub(super) fn error_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return text.chars().take(500).collect();
    };
    if let Some(msg) = v.get("message").and_then(serde_json::Value::as_str) {
        let code = v
            .get("error_code")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("");
        return format!("{code} {msg}").trim().chars().take(1000).collect();
    }
    if let Some(detail) = v.get("detail") {
        return match detail {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        }
        .chars()
        .take(1000)
        .collect();
    }
    text.chars().take(500).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, msg: &str) -> MlflowError {
        MlflowError::Status {
            status: code,
            message: msg.into(),
            retry_after: None,
        }
    }

    #[test]
    fn classes_follow_the_documented_table() {
        assert_eq!(MlflowError::Timeout.class(), ErrorClass::Retryable);
        assert_eq!(
            MlflowError::Connect("x".into()).class(),
            ErrorClass::Retryable
        );
        assert_eq!(status(503, "").class(), ErrorClass::Retryable);
        assert_eq!(status(500, "").class(), ErrorClass::Retryable);
        assert_eq!(status(429, "").class(), ErrorClass::Retryable);
        assert_eq!(
            status(422, "Failed to log OpenTelemetry spans").class(),
            ErrorClass::Retryable
        );
        assert_eq!(
            status(422, "Cannot convert OpenTelemetry span to MLflow span").class(),
            ErrorClass::Permanent
        );
        assert_eq!(
            status(400, "Session ID exceeds").class(),
            ErrorClass::Permanent
        );
        assert_eq!(status(404, "").class(), ErrorClass::Permanent);
        assert_eq!(status(401, "").class(), ErrorClass::Auth);
        assert_eq!(status(403, "").class(), ErrorClass::Auth);
    }

    #[test]
    fn error_messages_from_both_shapes() {
        assert_eq!(
            error_message(br#"{"error_code":"RESOURCE_DOES_NOT_EXIST","message":"No Experiment"}"#),
            "RESOURCE_DOES_NOT_EXIST No Experiment"
        );
        assert_eq!(
            error_message(br#"{"detail":"Invalid OpenTelemetry format"}"#),
            "Invalid OpenTelemetry format"
        );
        assert_eq!(error_message(b"<html>oops"), "<html>oops");
    }
}
