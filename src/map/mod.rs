//! Mapping OTel data onto MLflow's trace model: the attribute table, limits, span fixes and the
//! TraceInfo body.

pub mod attrs;
mod json;
pub mod refusals;
pub mod request;
pub mod rules;
pub mod span_types;
pub mod spans;
pub mod trace_info;
pub mod trace_io;
pub mod traces;
