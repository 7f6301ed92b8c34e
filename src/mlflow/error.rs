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
}

impl MlflowError {
    pub fn class(&self) -> ErrorClass {
        match self {
            MlflowError::Connect(_) | MlflowError::Timeout | MlflowError::Stalled => {
                ErrorClass::Retryable
            }
            MlflowError::BadReply(_) => ErrorClass::Retryable,
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
            MlflowError::Status { status, .. } => Some(*status),
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
}
