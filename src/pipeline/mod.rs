//! The data path between receivers and MLflow: ingest (admit, route, map) -> batcher ->
//! span export -> TraceInfo export.

pub mod backlog;
pub mod batcher;
pub mod envelope;
pub mod export;
pub mod ingest;
pub mod replay;
pub mod request_ids;
pub mod sampling;
pub mod screen;
