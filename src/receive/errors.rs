//! The one place where pipeline errors become OTLP answers: HTTP status + `Retry-After`, and
//! gRPC codes with `RetryInfo` (OTLP clients retry RESOURCE_EXHAUSTED only when it is present).

use axum::http::StatusCode;
use bytes::Bytes;
use prost::Message;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess;

use crate::pipeline::ingest::{Accepted, IngestError};

/// `google.rpc.Status`, the body of OTLP error replies.
#[derive(Clone, PartialEq, Message)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<ProtoAny>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, Message)]
pub struct ProtoAny {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// `google.rpc.RetryInfo`.
#[derive(Clone, PartialEq, Message)]
pub struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    pub retry_delay: Option<ProtoDuration>,
}

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, Message)]
pub struct ProtoDuration {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// HTTP status for an ingest error.
pub fn http_status(err: &IngestError) -> StatusCode {
    match err {
        IngestError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
        IngestError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        IngestError::PermissionDenied(_) => StatusCode::FORBIDDEN,
        IngestError::QueueFull { .. } | IngestError::OverQuota { .. } => {
            StatusCode::TOO_MANY_REQUESTS
        }
        IngestError::TooManyRequests { .. }
        | IngestError::ShuttingDown { .. }
        | IngestError::Undecided { .. }
        | IngestError::Storage { .. } => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The `WWW-Authenticate` challenge of a 401 (RFC 6750).
pub const BEARER_CHALLENGE: &str = "Bearer realm=\"mlflow-otlp-gateway\"";

/// gRPC status for an ingest error.
pub fn grpc_status(err: &IngestError) -> tonic::Status {
    let message = err.to_string();
    match err {
        IngestError::InvalidArgument(_) => tonic::Status::invalid_argument(message),
        IngestError::Unauthenticated(_) => tonic::Status::unauthenticated(message),
        IngestError::PermissionDenied(_) => tonic::Status::permission_denied(message),
        IngestError::QueueFull { retry_after, .. } | IngestError::OverQuota { retry_after, .. } => {
            let retry = RetryInfo {
                retry_delay: Some(ProtoDuration {
                    seconds: retry_after.as_secs() as i64,
                    nanos: retry_after.subsec_nanos() as i32,
                }),
            };
            let status = RpcStatus {
                code: tonic::Code::ResourceExhausted as i32,
                message: message.clone(),
                details: vec![ProtoAny {
                    type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
                    value: retry.encode_to_vec(),
                }],
            };
            tonic::Status::with_details(
                tonic::Code::ResourceExhausted,
                message,
                Bytes::from(status.encode_to_vec()),
            )
        }
        IngestError::TooManyRequests { .. }
        | IngestError::ShuttingDown { .. }
        | IngestError::Undecided { .. }
        | IngestError::Storage { .. } => tonic::Status::unavailable(message),
    }
}

/// OTLP's partial success: the rejected spans and why, or a warning with none rejected (text
/// that was repaired), as the specification allows; absent when all went in as sent.
pub fn partial_success(accepted: Accepted) -> Option<ExportTracePartialSuccess> {
    (accepted.rejected_spans > 0 || accepted.message.is_some()).then(|| ExportTracePartialSuccess {
        rejected_spans: accepted.rejected_spans as i64,
        error_message: accepted.message.unwrap_or_default(),
    })
}

/// gRPC code number for an HTTP status, for `google.rpc.Status` bodies.
pub fn rpc_code_for_http(status: StatusCode) -> i32 {
    match status.as_u16() {
        400 => tonic::Code::InvalidArgument as i32,
        401 => tonic::Code::Unauthenticated as i32,
        403 => tonic::Code::PermissionDenied as i32,
        413 => tonic::Code::InvalidArgument as i32,
        415 => tonic::Code::InvalidArgument as i32,
        429 => tonic::Code::ResourceExhausted as i32,
        503 => tonic::Code::Unavailable as i32,
        _ => tonic::Code::Internal as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn retryable_errors_map_to_retryable_codes() {
        let full = IngestError::QueueFull {
            detail: "1 byte".into(),
            retry_after: Duration::from_secs(2),
        };
        assert_eq!(http_status(&full), StatusCode::TOO_MANY_REQUESTS);
        let s = grpc_status(&full);
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        let details = RpcStatus::decode(s.details()).unwrap();
        let retry = RetryInfo::decode(&details.details[0].value[..]).unwrap();
        assert_eq!(retry.retry_delay.unwrap().seconds, 2);
        let busy = IngestError::ShuttingDown {
            retry_after: Duration::from_secs(1),
        };
        assert_eq!(http_status(&busy), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(grpc_status(&busy).code(), tonic::Code::Unavailable);
        let bad = IngestError::InvalidArgument("x".into());
        assert_eq!(http_status(&bad), StatusCode::BAD_REQUEST);
        assert_eq!(grpc_status(&bad).code(), tonic::Code::InvalidArgument);
    }
}
