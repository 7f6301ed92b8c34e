//! What travels through the pipeline: spans for one experiment plus the context they came with.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::OwnedSemaphorePermit;

use crate::map::trace_info::TraceInfoJob;
use crate::spool::{Ack, Delivery};
use crate::vocab::ExperimentRef;

/// A spooled record on its way to MLflow. Holding `permit` keeps its bytes counted against the
/// memory budget until its spans are delivered; `ack` takes it out of the spool once its spans
/// and TraceInfo writes are all done.
pub struct Envelope {
    pub experiment: ExperimentRef,
    /// The tenant that sent it; None without tenants.
    pub tenant: Option<Arc<str>>,
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
            tenant: d.record.tenant.map(Arc::from),
            body: d.record.body,
            span_count: d.record.span_count,
            roots: d.record.roots,
            permit: d.permit,
            ack: d.ack,
        }
    }
}
