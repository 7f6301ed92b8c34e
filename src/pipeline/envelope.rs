//! What travels through the pipeline: spans for one experiment plus the context they came with.

use std::time::Instant;

use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use tokio::sync::OwnedSemaphorePermit;

use crate::map::trace_info::TraceInfoJob;

/// An MLflow experiment as a request or rule names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ExperimentRef {
    Id(String),
    Name(String),
}

impl std::fmt::Display for ExperimentRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExperimentRef::Id(id) => write!(f, "id {id}"),
            ExperimentRef::Name(name) => write!(f, "'{name}'"),
        }
    }
}

/// Where a request came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    HttpProtobuf,
    HttpJson,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::HttpProtobuf => "http_protobuf",
            Transport::HttpJson => "http_json",
        }
    }
}

/// Accepted spans of one request bound for one experiment. Holding `permit` keeps their bytes
/// counted against the queue budget until MLflow has them (or they are given up).
#[derive(Debug)]
pub struct Envelope {
    pub experiment: ExperimentRef,
    pub resource_spans: Vec<ResourceSpans>,
    pub span_count: usize,
    pub encoded_len: usize,
    /// TraceInfo writes for the roots in this envelope, sent once the spans are delivered.
    pub roots: Vec<TraceInfoJob>,
    pub permit: OwnedSemaphorePermit,
    pub received_at: Instant,
}
