//! Mapping one request's spans onto MLflow's trace model: fit values to MLflow's limits, keep
//! what non-root spans say until their root comes (`traces`), and for each root derive the
//! trace's facts (`rules`), put them on the root span and make its TraceInfo job.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;

use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;

use super::attrs::{decode_json, set_str};
use super::rules::MappingTable;
use super::span_types::{self, LOG_LEVEL_ATTR, SPAN_TYPE_ATTR, SpanTypeChange};
use super::trace_info::{TraceInfoJob, TraceState};
use super::traces::{Seen, TraceTracker};
use super::{spans, trace_io};
use crate::otlp::{AttributeAt, ResourceSpansView, SpanView};
use crate::vocab::ExperimentRef;

/// An attribute MLflow's SDK puts on every span it makes (the MLflow trace id).
const MLFLOW_SDK_ATTR: &str = "mlflow.traceRequestId";

/// A resource's attributes; none when the resource is absent.
pub fn resource_attrs(resource: Option<&Resource>) -> &[KeyValue] {
    resource.map(|r| &r.attributes[..]).unwrap_or(&[])
}

/// The mapping table and the trace table one request is mapped with, and where its spans go.
pub struct RequestMapper<'a> {
    pub mapping: &'a MappingTable,
    pub tracker: &'a TraceTracker,
    pub experiment: &'a Arc<ExperimentRef>,
    pub tenant: Option<&'a Arc<str>>,
}

impl RequestMapper<'_> {
    /// Fits spans to MLflow's limits, gives each its span type and a final status, records
    /// facts of non-root spans, and for each root derives the trace's facts, puts them on the
    /// root and returns its TraceInfo job. Only roots and spans that need fitting are decoded;
    /// the rest are forwarded as received, with what is added appended.
    pub fn map(&self, resource_spans: &mut [ResourceSpansView]) -> Vec<TraceInfoJob> {
        let wanted = |key: &[u8]| {
            self.mapping.is_interesting(key)
                || spans::may_need_fit(key)
                || span_types::reads(key)
                || key == MLFLOW_SDK_ATTR.as_bytes()
        };
        let root_wanted = |key: &[u8]| wanted(key) || trace_io::reads(key);
        let mut forgotten = 0;
        for rs in resource_spans.iter_mut() {
            let resource = resource_attrs(rs.resource.as_ref());
            let mut run: Option<ChildRun> = None;
            for ss in rs.scope_spans.iter_mut() {
                for span in ss.spans.iter_mut() {
                    if spans::is_root_parent(span.parent_span_id()) {
                        continue;
                    }
                    let attributes = span.attributes_where(&ss.attributes, wanted);
                    let mut fitted = None;
                    if spans::needs_fit(&attributes)
                        && let Ok(mut decoded) = span.decode()
                    {
                        spans::fit(&mut decoded);
                        fitted = Some(decoded);
                    }
                    finish_span(span, &ss.attributes, &attributes, fitted, Vec::new());
                    let Ok(trace_id) = <[u8; 16]>::try_from(span.trace_id()) else {
                        continue;
                    };
                    match &mut run {
                        Some(r) if r.trace_id == trace_id => r.add(span, attributes),
                        _ => {
                            let next = ChildRun::new(trace_id, span, attributes);
                            if let Some(done) = run.replace(next) {
                                forgotten += self.record_children(done, resource);
                            }
                        }
                    }
                }
            }
            if let Some(done) = run {
                forgotten += self.record_children(done, resource);
            }
        }
        let mut jobs = Vec::new();
        for rs in resource_spans.iter_mut() {
            let resource = rs.resource.as_ref();
            for ss in rs.scope_spans.iter_mut() {
                for view in ss.spans.iter_mut() {
                    if !spans::is_root_parent(view.parent_span_id()) {
                        continue;
                    }
                    let (Ok(trace_id), Ok(root_span_id)) = (
                        <[u8; 16]>::try_from(view.trace_id()),
                        <[u8; 8]>::try_from(view.span_id()),
                    ) else {
                        continue;
                    };
                    // Only the attributes the mapping reads are decoded; the root is decoded
                    // whole only when a session id must be fitted (rare).
                    let attributes = view.attributes_where(&ss.attributes, root_wanted);
                    let mut fitted = None;
                    if spans::needs_fit(&attributes) {
                        let Ok(mut span) = view.decode() else {
                            continue;
                        };
                        spans::fit(&mut span);
                        fitted = Some(span);
                    }
                    let others = self.tracker.complete(trace_id);
                    let root_attributes =
                        fitted.as_ref().map_or(&attributes[..], |s| &s.attributes);
                    let mut facts =
                        self.mapping
                            .evaluate(root_attributes, resource_attrs(resource), &others);
                    for (key, value) in trace_io::metadata(&attributes) {
                        facts.metadata.entry(key.to_string()).or_insert(value);
                    }
                    let from_mlflow_sdk = attributes.iter().any(|kv| kv.key == MLFLOW_SDK_ATTR);
                    finish_span(
                        view,
                        &ss.attributes,
                        &attributes,
                        fitted,
                        spans::root_attributes(&facts),
                    );
                    let state = if view.status_code == StatusCode::Error as i32 {
                        TraceState::Error
                    } else {
                        TraceState::Ok
                    };
                    jobs.push(TraceInfoJob {
                        trace_id,
                        root_span_id,
                        root_name: view.name().to_string(),
                        start_unix_nano: view.start_time_unix_nano,
                        end_unix_nano: view.end_time_unix_nano,
                        state,
                        facts,
                        from_mlflow_sdk,
                    });
                }
            }
        }
        if forgotten > 0 {
            metrics::counter!("gateway_traces_without_root_total").increment(forgotten as u64);
        }
        jobs
    }

    /// Records what a run of a trace's non-root spans says, in one visit to the trace table.
    /// Returns the traces forgotten to make room. The order (first span, its resource, the
    /// other spans) gives the same result as recording span by span, each followed by the
    /// resource: first writer wins, so the resource adds nothing after its first turn.
    fn record_children(&self, run: ChildRun, resource: &[KeyValue]) -> usize {
        let (first, rest) = run.attributes.split_at(run.first_len);
        let seen = Seen {
            experiment: self.experiment,
            tenant: self.tenant,
            first_name: &run.first_name,
            start_unix_nano: run.start_unix_nano,
            end_unix_nano: run.end_unix_nano,
            errored: run.errored,
        };
        self.tracker
            .record(run.trace_id, seen, |c| {
                self.mapping.collect(first, c);
                self.mapping.collect(resource, c);
                self.mapping.collect(rest, c);
            })
            .without_root
    }
}

/// Non-root spans in a typical run (GenAI traces: a handful to a dozen spans).
const TYPICAL_RUN_SPANS: usize = 8;

/// Consecutive non-root spans of one trace under one resource (SDKs export a trace's spans
/// together), so the trace table is locked and searched once per run, not once per span
/// (BENCHMARKS.md, "Decisions").
struct ChildRun {
    trace_id: [u8; 16],
    /// The mapped attributes of the run's spans, in order.
    attributes: Vec<KeyValue>,
    /// Where the first span's attributes end.
    first_len: usize,
    /// The name of the run's earliest span.
    first_name: Bytes,
    start_unix_nano: u64,
    end_unix_nano: u64,
    errored: bool,
}

impl ChildRun {
    fn new(trace_id: [u8; 16], span: &SpanView, mut attributes: Vec<KeyValue>) -> Self {
        let first_len = attributes.len();
        // Room for the run's other spans, which carry about as many: growing the list span by
        // span reallocates it several times.
        attributes.reserve(first_len * TYPICAL_RUN_SPANS);
        Self {
            trace_id,
            first_len,
            attributes,
            first_name: span.name_bytes(),
            start_unix_nano: span.start_time_unix_nano,
            end_unix_nano: span.end_time_unix_nano,
            errored: span.status_code == StatusCode::Error as i32,
        }
    }

    fn add(&mut self, span: &SpanView, attributes: Vec<KeyValue>) {
        self.attributes.extend(attributes);
        if span.start_time_unix_nano < self.start_unix_nano {
            self.start_unix_nano = span.start_time_unix_nano;
            self.first_name = span.name_bytes();
        }
        self.end_unix_nano = self.end_unix_nano.max(span.end_time_unix_nano);
        self.errored |= span.status_code == StatusCode::Error as i32;
    }
}

/// Makes a span's changes: the `set` string attributes (a root's enrichment), its span type
/// and log level (`span_types`) and, for a span whose status is unset, OK, as MLflow's SDK ends its spans
/// (`LiveSpan.end`). `fitted` is the span decoded and fitted, when it had to be. A span from
/// MLflow's SDK, whose attribute values are all JSON text, gets them decoded (`attrs::decode_json`)
/// so that MLflow stores them as the SDK writing directly does.
fn finish_span(
    view: &mut SpanView,
    scope_attributes: &[AttributeAt],
    attributes: &[KeyValue],
    fitted: Option<Span>,
    set: Vec<(Cow<'static, str>, &str)>,
) {
    let settled = span_types::settle(attributes, view.has_exception_event);
    let change = settled.span_type;
    // The same list, borrowing for as long as `change` lives.
    let mut set: Vec<(Cow<'static, str>, &str)> = set;
    if let SpanTypeChange::Replace(kind) = &change {
        set.push((Cow::Borrowed(SPAN_TYPE_ATTR), kind));
    }
    let from_mlflow_sdk = attributes.iter().any(|kv| kv.key == MLFLOW_SDK_ATTR);
    let decoded = match fitted {
        None if from_mlflow_sdk => view.decode().ok(),
        fitted => fitted,
    };
    match decoded {
        Some(mut span) => {
            if from_mlflow_sdk {
                decode_json(&mut span.attributes);
            }
            for (key, value) in &set {
                set_str(&mut span.attributes, key, value);
            }
            view.replace(&span);
        }
        None if !set.is_empty() => view.set_string_attributes(scope_attributes, &set),
        None => {}
    }
    if let SpanTypeChange::Add(kind) = change {
        view.append_string_attribute(SPAN_TYPE_ATTR, kind);
    }
    if let Some(level) = settled.log_level {
        view.append_int_attribute(LOG_LEVEL_ATTR, level);
    }
    if view.status_code == StatusCode::Unset as i32 {
        view.set_status_code(StatusCode::Ok);
    }
}

#[cfg(test)]
pub(crate) mod tests;
