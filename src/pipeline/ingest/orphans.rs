//! Traces whose root never came (`traces.finalize_without_root`): a TraceInfo from the spans
//! that did, spooled like any other so it survives a restart and is written after their spans.

use std::sync::Arc;

use bytes::Bytes;

use super::Ingest;
use crate::map::trace_info::{TraceInfoJob, TraceState};
use crate::map::traces::Orphan;
use crate::spool::SpoolRecord;

/// The tag on a TraceInfo the gateway made without the trace's root span.
pub const ROOT_MISSING_TAG: (&str, &str) = ("gateway.root_missing", "true");

impl Ingest {
    /// Spools a TraceInfo for each trace whose root did not come. Returns how many were
    /// spooled; those the spool cannot take now are counted and logged, their spans stay in
    /// MLflow as they are.
    pub async fn finalize_orphans(&self, orphans: Vec<Orphan>) -> usize {
        let mut spooled = 0;
        for orphan in orphans {
            let partial = orphan.partial;
            let mut facts = self.mapping.evaluate(&[], &[], &orphan.attrs);
            facts
                .tags
                .insert(ROOT_MISSING_TAG.0.into(), ROOT_MISSING_TAG.1.into());
            let job = TraceInfoJob {
                trace_id: orphan.trace_id,
                root_span_id: [0; 8],
                root_name: String::from_utf8_lossy(&partial.first_name).into_owned(),
                start_unix_nano: partial.start_unix_nano,
                end_unix_nano: partial.end_unix_nano,
                state: if partial.errored {
                    TraceState::Error
                } else {
                    TraceState::Ok
                },
                facts,
                from_mlflow_sdk: false,
            };
            let record = SpoolRecord {
                experiment: Arc::unwrap_or_clone(partial.experiment),
                tenant: partial.tenant.map(|t| t.to_string()),
                span_count: 0,
                roots: vec![job],
                received_ms: crate::vocab::now_ms(),
                sampled: false,
                body: Bytes::new(),
            };
            match self.spool.append_prepared(self.spool.prepare(record)).await {
                Ok(()) => spooled += 1,
                Err(e) => {
                    metrics::counter!("gateway_export_failures_total", "kind" => "trace_info", "reason" => "root_missing_not_spooled")
                        .increment(1);
                    tracing::warn!(error = %e, "could not spool the TraceInfo of a trace without its root; it stays IN_PROGRESS in MLflow");
                }
            }
        }
        if spooled > 0 {
            metrics::counter!("gateway_traces_finalized_without_root_total")
                .increment(spooled as u64);
        }
        spooled
    }
}
