//! The gateway's own gRPC `FeedbackService` (proto/gateway/feedback/v1/feedback.proto), served
//! on the OTLP gRPC port with the HTTP API's semantics.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;
use tonic::{Request, Response, Status};

use super::auth::{Denial, Principal};
use super::model::{AssessmentRequest, Kind, RequestExtras, check_idempotency_key};
use super::service::{FeedbackService, Outcome, SubmitError};
use super::store::Status as RecordStatus;
use crate::tls::PeerInfo;

pub mod proto {
    tonic::include_proto!("gateway.feedback.v1");
}

use proto::feedback_service_server::{FeedbackService as FeedbackApi, FeedbackServiceServer};
use proto::{AssessmentStatus, GetFeedbackRequest, LogAssessmentRequest, log_assessment_request};

pub struct GrpcFeedback {
    service: Arc<FeedbackService>,
}

impl GrpcFeedback {
    pub fn server(service: Arc<FeedbackService>) -> FeedbackServiceServer<Self> {
        let limit = service.max_body_bytes();
        FeedbackServiceServer::new(Self { service }).max_decoding_message_size(limit)
    }

    fn guard<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        let auth = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let peer = request.extensions().get::<PeerInfo>();
        let ip = request
            .remote_addr()
            .or(peer.map(|p| p.remote))
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        let subjects = peer.map_or(&[][..], PeerInfo::cert_subjects);
        self.service
            .gate
            .check(auth, subjects, &ip)
            .map_err(|denial| {
                metrics::counter!("gateway_feedback_rejected_total", "reason" => denial.reason())
                    .increment(1);
                match denial {
                    Denial::Unauthenticated(m) => Status::unauthenticated(m),
                    Denial::Forbidden(m) => Status::permission_denied(m),
                    Denial::RateLimited(_) => Status::resource_exhausted(denial.to_string()),
                }
            })
    }

    async fn log(
        &self,
        kind: Kind,
        request: Request<LogAssessmentRequest>,
    ) -> Result<Response<AssessmentStatus>, Status> {
        let caller = self.guard(&request)?;
        let user = request
            .metadata()
            .get("x-user-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let r = request.into_inner();
        let (crid, trace_id) = match r.target {
            Some(log_assessment_request::Target::ClientRequestId(c)) => (Some(c), None),
            Some(log_assessment_request::Target::TraceId(t)) => (None, Some(t)),
            None => (None, None),
        };
        let source = r
            .source
            .map(|s| (Some(s.r#type), Some(s.id)))
            .unwrap_or((None, None));
        let bad = |e: super::model::InvalidField| {
            metrics::counter!("gateway_feedback_rejected_total", "reason" => "invalid")
                .increment(1);
            Status::invalid_argument(e.to_string())
        };
        let key = check_idempotency_key(Some(&r.idempotency_key)).map_err(bad)?;
        let request = AssessmentRequest::build(
            kind,
            crid,
            trace_id,
            Some(r.name),
            r.value.map(value_to_json),
            Some(r.rationale),
            source,
            r.metadata.into_iter().collect::<BTreeMap<_, _>>(),
            Some(r.span_id),
            &RequestExtras {
                query_client_request_id: None,
                user_id_header: user,
            },
        )
        .map_err(bad)?;
        match self.service.submit(request, key.as_deref(), &caller).await {
            Ok(outcome) => Ok(Response::new(status(outcome))),
            Err(e @ SubmitError::Rejected(_)) => Err(Status::invalid_argument(e.to_string())),
            Err(e @ SubmitError::NotFound) => Err(Status::not_found(e.to_string())),
            // The trace is gone for good: retrying cannot help.
            Err(e @ SubmitError::Gone(_)) => Err(Status::failed_precondition(e.to_string())),
            Err(e @ SubmitError::Full(_)) => Err(Status::unavailable(e.to_string())),
            Err(e @ SubmitError::Storage(_)) => {
                tracing::error!(error = %e, "feedback not stored");
                Err(Status::unavailable(
                    "feedback storage unavailable; retry later",
                ))
            }
        }
    }
}

fn status(o: Outcome) -> AssessmentStatus {
    AssessmentStatus {
        status: o.status.as_str().to_string(),
        assessment_id: if o.status == RecordStatus::Logged {
            o.feedback_id.clone()
        } else {
            String::new()
        },
        feedback_id: o.feedback_id,
        trace_id: o.trace_id.unwrap_or_default(),
        detail: o
            .detail
            .filter(|_| o.status != RecordStatus::Logged)
            .unwrap_or_default(),
    }
}

/// `google.protobuf.Value` -> JSON.
pub fn value_to_json(v: prost_types::Value) -> Value {
    use prost_types::value::Kind as K;
    match v.kind {
        None | Some(K::NullValue(_)) => Value::Null,
        Some(K::NumberValue(n)) => serde_json::Number::from_f64(n)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        Some(K::StringValue(s)) => Value::String(s),
        Some(K::BoolValue(b)) => Value::Bool(b),
        Some(K::StructValue(s)) => Value::Object(
            s.fields
                .into_iter()
                .map(|(k, v)| (k, value_to_json(v)))
                .collect(),
        ),
        Some(K::ListValue(l)) => Value::Array(l.values.into_iter().map(value_to_json).collect()),
    }
}

#[tonic::async_trait]
impl FeedbackApi for GrpcFeedback {
    async fn log_feedback(
        &self,
        request: Request<LogAssessmentRequest>,
    ) -> Result<Response<AssessmentStatus>, Status> {
        self.log(Kind::Feedback, request).await
    }

    async fn log_expectation(
        &self,
        request: Request<LogAssessmentRequest>,
    ) -> Result<Response<AssessmentStatus>, Status> {
        self.log(Kind::Expectation, request).await
    }

    async fn get_feedback(
        &self,
        request: Request<GetFeedbackRequest>,
    ) -> Result<Response<AssessmentStatus>, Status> {
        let caller = self.guard(&request)?;
        let id = request.into_inner().feedback_id;
        self.service
            .get(&id, &caller)
            .map(|o| Response::new(status(o)))
            .ok_or_else(|| Status::not_found(format!("no feedback with id '{id}'")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::value::Kind as K;

    #[test]
    fn protobuf_values_become_json() {
        let v = prost_types::Value {
            kind: Some(K::StructValue(prost_types::Struct {
                fields: [(
                    "a".to_string(),
                    prost_types::Value {
                        kind: Some(K::ListValue(prost_types::ListValue {
                            values: vec![prost_types::Value {
                                kind: Some(K::BoolValue(true)),
                            }],
                        })),
                    },
                )]
                .into_iter()
                .collect(),
            })),
        };
        assert_eq!(value_to_json(v), serde_json::json!({"a": [true]}));
    }
}
