//! Why a request was not (fully) accepted, in the terms the receivers answer with.

use std::time::Duration;

use crate::auth::AuthError;

/// Why a request was not (fully) accepted. Mapped onto HTTP and gRPC codes in `receive::errors`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IngestError {
    /// The input can never succeed; OTLP clients must not retry it.
    #[error("{0}")]
    InvalidArgument(String),
    /// No tenant's credentials (401 / UNAUTHENTICATED); nothing was read.
    #[error("{0}")]
    Unauthenticated(AuthError),
    /// Nothing in the request may go where it names (403 / PERMISSION_DENIED).
    #[error("{0}")]
    PermissionDenied(String),
    /// The queue budget (memory, or disk in durable mode) is spent; retry after it drains.
    #[error("gateway queue is full ({detail}); retry later")]
    QueueFull {
        detail: String,
        retry_after: Duration,
    },
    /// The tenant sends more than its quota, or holds its whole share of the spool; retry
    /// after the delay (429 / RESOURCE_EXHAUSTED with a retry delay).
    #[error("{detail}; retry later")]
    OverQuota {
        detail: String,
        retry_after: Duration,
    },
    /// The spool could not make the data safe (disk error); retrying may succeed.
    #[error("gateway cannot store the spans ({detail}); retry later")]
    Storage {
        detail: String,
        retry_after: Duration,
    },
    /// What the request may do cannot be decided now (MLflow does not answer); retrying may
    /// succeed.
    #[error("{detail}; retry later")]
    Undecided {
        detail: String,
        retry_after: Duration,
    },
    /// Too many requests are being processed at once.
    #[error("too many concurrent export requests; retry later")]
    TooManyRequests { retry_after: Duration },
    /// The gateway is draining for shutdown.
    #[error("gateway is shutting down; retry against another instance or later")]
    ShuttingDown { retry_after: Duration },
}

impl IngestError {
    pub fn reason(&self) -> &'static str {
        match self {
            IngestError::InvalidArgument(_) => "invalid",
            IngestError::Unauthenticated(e) => e.reason(),
            IngestError::PermissionDenied(_) => "forbidden",
            IngestError::QueueFull { .. } => "queue_full",
            IngestError::OverQuota { .. } => "over_quota",
            IngestError::Storage { .. } => "storage",
            IngestError::Undecided { .. } => "undecided",
            IngestError::TooManyRequests { .. } => "too_many_requests",
            IngestError::ShuttingDown { .. } => "shutting_down",
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            IngestError::InvalidArgument(_)
            | IngestError::Unauthenticated(_)
            | IngestError::PermissionDenied(_) => None,
            IngestError::QueueFull { retry_after, .. }
            | IngestError::OverQuota { retry_after, .. }
            | IngestError::Storage { retry_after, .. }
            | IngestError::Undecided { retry_after, .. }
            | IngestError::TooManyRequests { retry_after }
            | IngestError::ShuttingDown { retry_after } => Some(*retry_after),
        }
    }
}
