//! User feedback and expectations keyed by client request id (or trace id), logged as MLflow
//! assessments, kept pending on disk until the trace exists.

pub mod auth;
pub mod grpc;
pub mod http;
pub mod model;
pub mod resolve;
pub mod service;
pub mod store;
