//! What travels through the pipeline: spans for one experiment plus the context they came with.

use bytes::Bytes;
use tokio::sync::OwnedSemaphorePermit;

use crate::map::trace_info::TraceInfoJob;
use crate::spool::{Ack, Delivery};

/// An MLflow experiment as a request or rule names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
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

/// A spooled record on its way to MLflow. Holding `permit` keeps its bytes counted against the
/// memory budget until its spans are delivered; `ack` takes it out of the spool once its spans
/// and TraceInfo writes are all done.
pub struct Envelope {
    pub experiment: ExperimentRef,
    /// An encoded `ExportTraceServiceRequest`.
    pub body: Bytes,
    pub span_count: usize,
    /// TraceInfo writes for the roots in this record, sent once the spans are delivered.
    pub roots: Vec<TraceInfoJob>,
    pub permit: OwnedSemaphorePermit,
    pub ack: Ack,
}

impl From<Delivery> for Envelope {
    fn from(d: Delivery) -> Self {
        Self {
            experiment: d.record.experiment,
            body: d.record.body,
            span_count: d.record.span_count,
            roots: d.record.roots,
            permit: d.permit,
            ack: d.ack,
        }
    }
}
