//! OTLP receivers: gRPC TraceService on :4317 and HTTP `POST /v1/traces` on :4318.

pub mod budget;
pub mod buffer;
pub mod decode;
pub mod errors;
pub mod grpc;
pub mod http;
pub mod intake;
