//! OTLP/HTTP receiver: `POST /v1/traces` with protobuf or JSON, optionally compressed.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;

use super::decode::{self, DecodeError, DecodeLimits, Format};
use super::errors::{BEARER_CHALLENGE, RpcStatus, http_status, partial_success, rpc_code_for_http};
use super::intake::{self, Credentials, Refused};
use crate::pipeline::ingest::{Accepted, Ingest, IngestError};
use crate::tls::PeerInfo;
use crate::vocab::{EXPERIMENT_HEADER, Transport};

#[derive(Clone)]
pub struct HttpReceiver {
    pub ingest: Arc<Ingest>,
    pub max_message_bytes: usize,
    pub limits: DecodeLimits,
}

pub fn router(receiver: HttpReceiver) -> Router {
    Router::new()
        .route("/v1/traces", post(export))
        // The body limit is enforced in the handler, where it can answer 413 in OTLP form.
        .layer(DefaultBodyLimit::disable())
        .with_state(receiver)
}

fn error_response(
    status: StatusCode,
    format: Format,
    message: String,
    retry_after: Option<Duration>,
) -> Response {
    let rpc = RpcStatus {
        code: rpc_code_for_http(status),
        message: message.clone(),
        details: vec![],
    };
    let (content_type, body) = match format {
        Format::Protobuf => ("application/x-protobuf", rpc.encode_to_vec()),
        Format::Json => (
            "application/json",
            serde_json::to_vec(&serde_json::json!({"code": rpc.code, "message": message}))
                .unwrap_or_default(),
        ),
    };
    let mut response = (status, [(header::CONTENT_TYPE, content_type)], body).into_response();
    if let Some(after) = retry_after
        && let Ok(v) = HeaderValue::from_str(&after.as_secs().max(1).to_string())
    {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}

/// An ingest error's answer; a 401 carries the `WWW-Authenticate` challenge.
fn ingest_error_response(e: &IngestError, format: Format) -> Response {
    let mut response = error_response(http_status(e), format, e.to_string(), e.retry_after());
    if matches!(e, IngestError::Unauthenticated(_)) {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(BEARER_CHALLENGE),
        );
    }
    response
}

fn decode_error_response(err: DecodeError, format: Format, retry_after: Duration) -> Response {
    let (status, retry) = match err {
        DecodeError::UnsupportedContentType(_) | DecodeError::UnsupportedEncoding(_) => {
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, None)
        }
        DecodeError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, None),
        DecodeError::Corrupt { .. } | DecodeError::Malformed { .. } => {
            (StatusCode::BAD_REQUEST, None)
        }
        DecodeError::Busy => (StatusCode::SERVICE_UNAVAILABLE, Some(retry_after)),
    };
    error_response(status, format, err.to_string(), retry)
}

fn success_response(format: Format, accepted: Accepted) -> Response {
    let response = ExportTraceServiceResponse {
        partial_success: partial_success(accepted),
    };
    match format {
        Format::Protobuf => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            response.encode_to_vec(),
        )
            .into_response(),
        Format::Json => {
            let body = match &response.partial_success {
                Some(p) => serde_json::json!({"partialSuccess": {
                    "rejectedSpans": p.rejected_spans.to_string(),
                    "errorMessage": p.error_message,
                }}),
                None => serde_json::json!({}),
            };
            (StatusCode::OK, axum::Json(body)).into_response()
        }
    }
}

async fn export(
    State(rx): State<HttpReceiver>,
    peer: Option<Extension<ConnectInfo<PeerInfo>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let header_str = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let retry_after = rx.limits.retry_after;
    let format = match decode::parse_content_type(header_str(header::CONTENT_TYPE)) {
        Ok(f) => f,
        Err(e) => return decode_error_response(e, Format::Json, retry_after),
    };
    let transport = match format {
        Format::Protobuf => Transport::HttpProtobuf,
        Format::Json => Transport::HttpJson,
    };
    let credentials = Credentials {
        authorization: header_str(header::AUTHORIZATION),
        cert_subjects: peer.as_ref().map_or(&[], |p| p.0.0.cert_subjects()),
    };
    let admitted = match intake::admit(&rx.ingest, transport, credentials) {
        Ok(admitted) => admitted,
        Err(e) => return ingest_error_response(&e, format),
    };
    let encoding = match decode::parse_encoding(header_str(header::CONTENT_ENCODING)) {
        Ok(e) => e,
        Err(e) => return decode_error_response(e, format, retry_after),
    };
    let too_large = DecodeError::TooLarge {
        limit: rx.max_message_bytes,
        stage: "on the wire",
    };
    if header_str(header::CONTENT_LENGTH)
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|len| len > rx.max_message_bytes)
    {
        return decode_error_response(too_large, format, retry_after);
    }
    let bytes = match axum::body::to_bytes(body, rx.max_message_bytes).await {
        Ok(b) => b,
        Err(_) => return decode_error_response(too_large, format, retry_after),
    };
    let limits = rx.limits.clone();
    let experiment_header = headers
        .get(EXPERIMENT_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let taken = admitted
        .take_in(experiment_header, bytes.len(), move || {
            decode::decode_body(format, encoding, bytes, &limits)
        })
        .await;
    match taken {
        Ok(accepted) => success_response(format, accepted),
        Err(Refused::Decode(e)) => decode_error_response(e, format, retry_after),
        Err(Refused::Ingest(e)) => ingest_error_response(&e, format),
        Err(Refused::Internal(e)) => {
            tracing::error!(error = %e, "internal error while decoding");
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                format,
                "internal error while decoding".into(),
                None,
            )
        }
    }
}
