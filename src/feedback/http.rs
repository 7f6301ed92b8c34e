//! HTTP API on the side listener: `POST /v1/feedback`, `POST /v1/expectations`,
//! `GET /v1/feedback/{feedback_id}`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::auth::{Denial, Principal};
use super::model::{AssessmentRequest, InvalidField, Kind, RequestExtras, check_idempotency_key};
use super::service::{FeedbackService, SubmitError};
use super::store::Status;
use crate::tls::PeerInfo;

pub fn router(service: Arc<FeedbackService>) -> Router {
    let limit = service.max_body_bytes();
    Router::new()
        .route("/v1/feedback", post(post_feedback))
        .route("/v1/expectations", post(post_expectation))
        .route("/v1/feedback/{feedback_id}", get(get_feedback))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(service)
}

fn error(status: StatusCode, message: impl Into<String>, field: Option<&str>) -> Response {
    let mut body = json!({"error": message.into()});
    if let Some(f) = field {
        body["field"] = json!(f);
    }
    (status, axum::Json(body)).into_response()
}

fn rejected(reason: &'static str) {
    metrics::counter!("gateway_feedback_rejected_total", "reason" => reason).increment(1);
}

/// Authentication, then rate limiting (per tenant or token, or per client address without
/// auth): the caller, or the refusal.
fn guard(
    service: &FeedbackService,
    headers: &HeaderMap,
    peer: &PeerInfo,
) -> Result<Principal, Denial> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    service
        .gate
        .check(auth, peer.cert_subjects(), &peer.remote.ip().to_string())
        .inspect_err(|denial| rejected(denial.reason()))
}

/// The answer to a refused caller.
fn denied(denial: Denial) -> Response {
    let mut r = match &denial {
        Denial::Unauthenticated(m) => error(StatusCode::UNAUTHORIZED, m.clone(), None),
        Denial::Forbidden(m) => error(StatusCode::FORBIDDEN, m.clone(), None),
        Denial::RateLimited(_) => error(StatusCode::TOO_MANY_REQUESTS, denial.to_string(), None),
    };
    match denial {
        Denial::Unauthenticated(_) => {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        Denial::RateLimited(wait) => {
            if let Ok(v) = HeaderValue::from_str(&(wait.ceil().max(1.0) as u64).to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        Denial::Forbidden(_) => {}
    }
    r
}

fn invalid(e: InvalidField) -> Response {
    rejected("invalid");
    error(StatusCode::BAD_REQUEST, e.to_string(), Some(&e.field))
}

async fn post_feedback(
    state: State<Arc<FeedbackService>>,
    peer: ConnectInfo<PeerInfo>,
    query: Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    submit(Kind::Feedback, state, peer, query, headers, body).await
}

async fn post_expectation(
    state: State<Arc<FeedbackService>>,
    peer: ConnectInfo<PeerInfo>,
    query: Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    submit(Kind::Expectation, state, peer, query, headers, body).await
}

async fn submit(
    kind: Kind,
    State(service): State<Arc<FeedbackService>>,
    ConnectInfo(peer): ConnectInfo<PeerInfo>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let caller = match guard(&service, &headers, &peer) {
        Ok(caller) => caller,
        Err(denial) => return denied(denial),
    };
    let json: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            rejected("invalid");
            return error(
                StatusCode::BAD_REQUEST,
                format!("body: not valid JSON: {e}"),
                Some("body"),
            );
        }
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let key = match check_idempotency_key(header("idempotency-key").as_deref()) {
        Ok(k) => k,
        Err(e) => return invalid(e),
    };
    let extras = RequestExtras {
        query_client_request_id: query.get("client_request_id").cloned(),
        user_id_header: header("x-user-id"),
    };
    let request = match AssessmentRequest::from_json(kind, &json, &extras) {
        Ok(r) => r,
        Err(e) => return invalid(e),
    };
    match service.submit(request, key.as_deref(), &caller).await {
        Ok(outcome) => {
            let status = match outcome.status {
                Status::Logged => StatusCode::CREATED,
                Status::Pending | Status::Expired => StatusCode::ACCEPTED,
            };
            (status, axum::Json(outcome.to_json())).into_response()
        }
        Err(e @ SubmitError::Rejected(_)) => error(StatusCode::BAD_REQUEST, e.to_string(), None),
        Err(e @ SubmitError::NotFound) => error(StatusCode::NOT_FOUND, e.to_string(), None),
        Err(e @ SubmitError::Gone(_)) => error(StatusCode::GONE, e.to_string(), None),
        Err(e @ SubmitError::Full(_)) => {
            let mut r = error(StatusCode::SERVICE_UNAVAILABLE, e.to_string(), None);
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            r
        }
        Err(e @ SubmitError::Storage(_)) => {
            tracing::error!(error = %e, "feedback not stored");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "feedback storage unavailable; retry later",
                None,
            )
        }
    }
}

async fn get_feedback(
    State(service): State<Arc<FeedbackService>>,
    ConnectInfo(peer): ConnectInfo<PeerInfo>,
    headers: HeaderMap,
    Path(feedback_id): Path<String>,
) -> Response {
    let caller = match guard(&service, &headers, &peer) {
        Ok(caller) => caller,
        Err(denial) => return denied(denial),
    };
    match service.get(&feedback_id, &caller) {
        Some(outcome) => (StatusCode::OK, axum::Json(outcome.to_json())).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no feedback with id '{feedback_id}'"),
            None,
        ),
    }
}
