//! OTLP/HTTP receiver: `POST /v1/traces` with protobuf or JSON, optionally compressed.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};
use prost::Message;

use super::decode::{self, DecodeError, Format};
use super::errors::{RpcStatus, http_status, rpc_code_for_http};
use crate::map::wire::ResourceSpansView;
use crate::pipeline::envelope::Transport;
use crate::pipeline::ingest::{Accepted, Ingest, RequestContext};

/// Bodies above this size are decompressed and decoded on the blocking pool, off the runtime.
const BLOCKING_THRESHOLD: usize = 64 * 1024;
/// MLflow's header for routing to an experiment; gateways in front of MLflow honour it.
const EXPERIMENT_HEADER: &str = "x-mlflow-experiment-id";

#[derive(Clone)]
pub struct HttpReceiver {
    pub ingest: Arc<Ingest>,
    pub max_message_bytes: usize,
    pub max_decompressed_bytes: usize,
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

fn decode_error_response(err: DecodeError, format: Format) -> Response {
    let status = match err {
        DecodeError::UnsupportedContentType(_) | DecodeError::UnsupportedEncoding(_) => {
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        }
        DecodeError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        DecodeError::Corrupt { .. } | DecodeError::Malformed { .. } => StatusCode::BAD_REQUEST,
    };
    error_response(status, format, err.to_string(), None)
}

fn success_response(format: Format, accepted: Accepted) -> Response {
    let response = ExportTraceServiceResponse {
        partial_success: (accepted.rejected_spans > 0).then(|| ExportTracePartialSuccess {
            rejected_spans: accepted.rejected_spans as i64,
            error_message: accepted.message.unwrap_or_default(),
        }),
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

async fn export(State(rx): State<HttpReceiver>, headers: HeaderMap, body: Body) -> Response {
    let header_str = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let format = match decode::parse_content_type(header_str(header::CONTENT_TYPE)) {
        Ok(f) => f,
        Err(e) => return decode_error_response(e, Format::Json),
    };
    let transport = match format {
        Format::Protobuf => Transport::HttpProtobuf,
        Format::Json => Transport::HttpJson,
    };
    let _slot = match rx.ingest.admit(transport) {
        Ok(slot) => slot,
        Err(e) => return error_response(http_status(&e), format, e.to_string(), e.retry_after()),
    };
    let encoding = match decode::parse_encoding(header_str(header::CONTENT_ENCODING)) {
        Ok(e) => e,
        Err(e) => return decode_error_response(e, format),
    };
    let too_large = DecodeError::TooLarge {
        limit: rx.max_message_bytes,
        stage: "on the wire",
    };
    if header_str(header::CONTENT_LENGTH)
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|len| len > rx.max_message_bytes)
    {
        return decode_error_response(too_large, format);
    }
    let bytes = match axum::body::to_bytes(body, rx.max_message_bytes).await {
        Ok(b) => b,
        Err(_) => return decode_error_response(too_large, format),
    };
    let limit = rx.max_decompressed_bytes;
    let wire_len = bytes.len();
    let turn = rx.ingest.ingest_turn().await;
    let work = move || -> Result<Vec<ResourceSpansView>, DecodeError> {
        let _turn = turn;
        let raw = decode::decompress(encoding, &bytes, limit)?;
        decode::decode(format, raw)
    };
    let decoded = if wire_len >= BLOCKING_THRESHOLD {
        match tokio::task::spawn_blocking(work).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "decode task failed");
                return error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format,
                    "internal error while decoding".into(),
                    None,
                );
            }
        }
    } else {
        work()
    };
    let request = match decoded {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "undecodable OTLP/HTTP request");
            return decode_error_response(e, format);
        }
    };
    let ctx = RequestContext {
        transport,
        experiment_header: headers
            .get(EXPERIMENT_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    };
    match rx.ingest.accept(request, ctx).await {
        Ok(accepted) => success_response(format, accepted),
        Err(e) => error_response(http_status(&e), format, e.to_string(), e.retry_after()),
    }
}
