//! Mapping OTel data onto MLflow's trace model: the attribute table, limits, span fixes and the
//! TraceInfo body.

pub mod attrs;
pub mod refusals;
pub mod request;
pub mod rules;
pub mod spans;
pub mod trace_info;
pub mod traces;
