//! Admission and mapping: the one path both receivers feed. Validates spans (bad ones are
//! reported, their siblings go on), routes them to experiments, applies the mapping table,
//! charges their bytes to the queue budget and hands them to the batcher. A request is
//! acknowledged once this returns Ok.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::envelope::{ExperimentRef, Transport};
use super::traces::TraceTracker;
use crate::config::{Config, is_experiment_id};
use crate::feedback::index::{IndexedTrace, RequestIdIndex};
use crate::map::attrs::find_str;
use crate::map::rules::MappingTable;
use crate::map::spans;
use crate::map::trace_info::{TraceInfoJob, TraceState, mlflow_trace_id};
use crate::map::wire::{self, ResourceSpansView};
use crate::mlflow::experiments::Experiments;
use crate::spool::{Spool, SpoolError, SpoolRecord};

/// How long a request may wait on MLflow to learn whether its experiment exists; past this the
/// spans are accepted and the exporter resolves the experiment (MLflow may be down).
const QUICK_RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);
/// Resource attributes that pick an experiment (MLflow's own names for them).
const EXPERIMENT_ID_ATTR: &str = "mlflow.experiment.id";
const EXPERIMENT_NAME_ATTR: &str = "mlflow.experiment.name";

/// Why a request was not (fully) accepted. Mapped onto HTTP and gRPC codes in `receive::errors`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IngestError {
    /// The input can never succeed; OTLP clients must not retry it.
    #[error("{0}")]
    InvalidArgument(String),
    /// The queue budget (memory, or disk in durable mode) is spent; retry after it drains.
    #[error("gateway queue is full ({detail}); retry later")]
    QueueFull {
        detail: String,
        retry_after: Duration,
    },
    /// The spool could not make the data safe (disk error); retrying may succeed.
    #[error("gateway cannot store the spans ({detail}); retry later")]
    Storage {
        detail: String,
        retry_after: Duration,
    },
    /// Too many requests are being processed at once.
    #[error("too many concurrent export requests; retry later")]
    TooManyRequests { retry_after: Duration },
    /// The gateway is draining for shutdown.
    #[error("gateway is shutting down; retry against another instance or later")]
    ShuttingDown { retry_after: Duration },
}

impl IngestError {
    pub fn reason(&self) -> &'static str {
        match self {
            IngestError::InvalidArgument(_) => "invalid",
            IngestError::QueueFull { .. } => "queue_full",
            IngestError::Storage { .. } => "storage",
            IngestError::TooManyRequests { .. } => "too_many_requests",
            IngestError::ShuttingDown { .. } => "shutting_down",
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            IngestError::InvalidArgument(_) => None,
            IngestError::QueueFull { retry_after, .. }
            | IngestError::Storage { retry_after, .. }
            | IngestError::TooManyRequests { retry_after }
            | IngestError::ShuttingDown { retry_after } => Some(*retry_after),
        }
    }
}

/// Request context carried from the receiver.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub transport: Transport,
    /// `x-mlflow-experiment-id` header or gRPC metadata, if sent.
    pub experiment_header: Option<String>,
}

/// The outcome of an accepted request: OTLP partial success when some spans were unusable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accepted {
    pub accepted_spans: usize,
    pub rejected_spans: usize,
    pub message: Option<String>,
}

/// A resource's attributes; none when the resource is absent.
fn resource_attrs(resource: Option<&Resource>) -> &[KeyValue] {
    resource.map(|r| &r.attributes[..]).unwrap_or(&[])
}

/// Shared by the receivers.
pub struct Ingest {
    mapping: MappingTable,
    tracker: Arc<TraceTracker>,
    experiments: Experiments,
    default_experiment: ExperimentRef,
    routes: Vec<(String, ExperimentRef)>,
    spool: Spool,
    inflight: Arc<Semaphore>,
    retry_after: Duration,
    request_ids: Arc<RequestIdIndex>,
}

struct Group {
    experiment: ExperimentRef,
    resource_spans: Vec<ResourceSpansView>,
    span_count: usize,
}

impl Ingest {
    pub fn new(
        cfg: &Config,
        tracker: Arc<TraceTracker>,
        experiments: Experiments,
        spool: Spool,
        request_ids: Arc<RequestIdIndex>,
    ) -> Self {
        let routes = cfg
            .routing
            .rules
            .iter()
            .map(|r| {
                let exp = match (&r.experiment_id, &r.experiment_name) {
                    (Some(id), _) => ExperimentRef::Id(id.clone()),
                    (None, Some(name)) => ExperimentRef::Name(name.clone()),
                    (None, None) => cfg.default_experiment(),
                };
                (r.service_name.clone(), exp)
            })
            .collect();
        Self {
            mapping: MappingTable::new(&cfg.mapping),
            tracker,
            experiments,
            default_experiment: cfg.default_experiment(),
            routes,
            spool,
            inflight: Arc::new(Semaphore::new(cfg.receiver.max_inflight_requests)),
            retry_after: cfg.receiver.retry_after,
            request_ids,
        }
    }

    /// Takes an in-flight slot for one request, or refuses when saturated or shutting down.
    pub fn admit(&self, transport: Transport) -> Result<OwnedSemaphorePermit, IngestError> {
        self.inflight.clone().try_acquire_owned().map_err(|_| {
            let err = IngestError::TooManyRequests {
                retry_after: self.retry_after,
            };
            metrics::counter!("gateway_receiver_requests_refused_total",
                "transport" => transport.as_str(), "reason" => err.reason())
            .increment(1);
            err
        })
    }

    /// Counts spans refused with a whole-request error.
    pub fn count_refused(&self, transport: Transport, err: &IngestError, spans: usize) {
        metrics::counter!("gateway_receiver_spans_refused_total",
            "transport" => transport.as_str(), "reason" => err.reason())
        .increment(spans as u64);
    }

    /// Validates, routes, maps and enqueues one OTLP request (read by `map::wire`).
    #[tracing::instrument(skip_all, fields(transport = ctx.transport.as_str(), spans))]
    pub async fn accept(
        &self,
        request: Vec<ResourceSpansView>,
        ctx: RequestContext,
    ) -> Result<Accepted, IngestError> {
        let transport = ctx.transport.as_str();
        let header = match ctx.experiment_header.as_deref().map(str::trim) {
            // An empty header is treated as absent: MLflow itself would answer 200 and drop.
            None | Some("") => None,
            Some(id) if is_experiment_id(id) => Some(ExperimentRef::Id(id.to_string())),
            Some(id) => {
                return Err(IngestError::InvalidArgument(format!(
                    "x-mlflow-experiment-id '{id}' is not a numeric experiment id"
                )));
            }
        };

        let mut received = 0usize;
        let mut rejected = 0usize;
        let mut problem: Option<String> = None;
        let mut groups: Vec<Group> = Vec::new();
        for mut rs in request {
            let mut count = 0;
            for ss in rs.scope_spans.iter_mut() {
                received += ss.spans.len();
                ss.spans.retain(|span| match spans::check_view(span) {
                    Ok(()) => true,
                    Err(p) => {
                        rejected += 1;
                        metrics::counter!("gateway_receiver_spans_rejected_total",
                            "transport" => transport, "reason" => p.as_str())
                        .increment(1);
                        problem.get_or_insert_with(|| format!("span '{}': {p}", span.name()));
                        false
                    }
                });
                count += ss.spans.len();
            }
            if count == 0 {
                continue;
            }
            let experiment = match header.clone() {
                Some(h) => h,
                None => match self.route(rs.resource.as_ref()) {
                    Ok(exp) => exp,
                    Err(msg) => {
                        rejected += count;
                        metrics::counter!("gateway_receiver_spans_rejected_total",
                            "transport" => transport, "reason" => "bad_experiment")
                        .increment(count as u64);
                        problem.get_or_insert(msg);
                        continue;
                    }
                },
            };
            match groups.iter_mut().find(|g| g.experiment == experiment) {
                Some(g) => {
                    g.resource_spans.push(rs);
                    g.span_count += count;
                }
                None => groups.push(Group {
                    experiment,
                    resource_spans: vec![rs],
                    span_count: count,
                }),
            }
        }
        tracing::Span::current().record("spans", received);
        metrics::counter!("gateway_receiver_spans_received_total", "transport" => transport)
            .increment(received as u64);
        if received == 0 {
            return Ok(Accepted::default());
        }

        // Experiments that definitely cannot take spans: reject those spans, keep the rest.
        let mut kept = Vec::with_capacity(groups.len());
        for mut g in groups {
            match self.quick_resolve(&g.experiment).await {
                Ok(Some(id)) => {
                    g.experiment = ExperimentRef::Id(id);
                    kept.push(g);
                }
                Ok(None) => kept.push(g),
                Err(msg) => {
                    rejected += g.span_count;
                    metrics::counter!("gateway_receiver_spans_rejected_total",
                        "transport" => transport, "reason" => "bad_experiment")
                    .increment(g.span_count as u64);
                    problem.get_or_insert(msg);
                }
            }
        }
        if kept.is_empty() {
            let msg = problem.unwrap_or_else(|| "no usable spans".into());
            return Err(IngestError::InvalidArgument(format!(
                "all {received} spans rejected: {msg}"
            )));
        }

        let received_ms = crate::feedback::store::now_ms();
        let mut accepted = 0;
        for mut g in kept {
            let roots = self.map_group(&mut g.resource_spans, &g.experiment);
            let body = wire::encode_request(&g.resource_spans);
            let record = SpoolRecord {
                experiment: g.experiment,
                span_count: g.span_count,
                roots,
                received_ms,
                body: Bytes::from(body),
            };
            if let Err(e) = self.spool.append(record).await {
                let err = match e {
                    SpoolError::Full(detail) => IngestError::QueueFull {
                        detail,
                        retry_after: self.retry_after,
                    },
                    SpoolError::Closed => IngestError::ShuttingDown {
                        retry_after: self.retry_after,
                    },
                    SpoolError::Io(detail) => {
                        tracing::error!(error = %detail, "spool append failed");
                        IngestError::Storage {
                            detail,
                            retry_after: self.retry_after,
                        }
                    }
                };
                // Whatever went in before this group is safe and will be delivered; the client
                // retries the whole request and the duplicates are harmless upserts.
                self.count_refused(ctx.transport, &err, received - rejected - accepted);
                return Err(err);
            }
            accepted += g.span_count;
        }
        metrics::counter!("gateway_receiver_spans_accepted_total", "transport" => transport)
            .increment(accepted as u64);
        metrics::gauge!("gateway_traces_awaiting_root").set(self.tracker.awaiting() as f64);
        if rejected > 0 {
            tracing::warn!(rejected, accepted, problem = ?problem, "rejected unusable spans");
        }
        Ok(Accepted {
            accepted_spans: accepted,
            rejected_spans: rejected,
            message: problem
                .filter(|_| rejected > 0)
                .map(|p| format!("{rejected} of {received} spans rejected; first problem: {p}")),
        })
    }

    /// Experiment routing below the header: resource attributes, then rules by service name,
    /// then the default.
    fn route(&self, resource: Option<&Resource>) -> Result<ExperimentRef, String> {
        let attrs = resource_attrs(resource);
        if let Some(id) = find_str(attrs, EXPERIMENT_ID_ATTR) {
            return if is_experiment_id(&id) {
                Ok(ExperimentRef::Id(id))
            } else {
                Err(format!(
                    "resource attribute {EXPERIMENT_ID_ATTR} '{id}' is not a numeric experiment id"
                ))
            };
        }
        if let Some(name) = find_str(attrs, EXPERIMENT_NAME_ATTR) {
            return Ok(ExperimentRef::Name(name));
        }
        if let Some(service) = find_str(attrs, "service.name")
            && let Some((_, exp)) = self.routes.iter().find(|(s, _)| *s == service)
        {
            return Ok(exp.clone());
        }
        Ok(self.default_experiment.clone())
    }

    /// `Ok(Some(id))` resolved, `Ok(None)` unknown for now (MLflow slow or down: the exporter
    /// resolves later), `Err` when the experiment definitely cannot take spans.
    async fn quick_resolve(&self, exp: &ExperimentRef) -> Result<Option<String>, String> {
        let result = match self.experiments.cached(exp) {
            Some(hit) => hit,
            None if self.experiments.recently_unavailable() => return Ok(None),
            None => {
                match tokio::time::timeout(QUICK_RESOLVE_TIMEOUT, self.experiments.resolve(exp))
                    .await
                {
                    Ok(r) => r,
                    Err(_) => {
                        self.experiments.mark_unavailable();
                        return Ok(None);
                    }
                }
            }
        };
        match result {
            Ok(id) => Ok(Some(id)),
            Err(e) if e.is_permanent() => Err(e.to_string()),
            Err(_) => Ok(None),
        }
    }

    /// Fits spans to MLflow's limits, records facts of non-root spans, and for each root
    /// derives the trace's facts, puts them on the root and returns its TraceInfo job. Only
    /// roots and spans that need fitting are decoded; the rest are forwarded as received.
    fn map_group(
        &self,
        resource_spans: &mut [ResourceSpansView],
        experiment: &ExperimentRef,
    ) -> Vec<TraceInfoJob> {
        let wanted = |key: &str| self.mapping.is_interesting(key) || spans::may_need_fit(key);
        let mut forgotten = 0;
        for rs in resource_spans.iter_mut() {
            let resource = rs.resource.as_ref();
            for ss in rs.scope_spans.iter_mut() {
                for span in ss.spans.iter_mut() {
                    if spans::is_root_parent(span.parent_span_id()) {
                        continue;
                    }
                    let attributes = span.attributes_where(wanted);
                    if spans::needs_fit(&attributes)
                        && let Ok(mut decoded) = span.decode()
                    {
                        spans::fit(&mut decoded);
                        span.replace(&decoded);
                    }
                    let Ok(trace_id) = <[u8; 16]>::try_from(span.trace_id()) else {
                        continue;
                    };
                    forgotten += self
                        .tracker
                        .record(trace_id, |c| {
                            self.mapping.collect(&attributes, c);
                            self.mapping.collect(resource_attrs(resource), c);
                        })
                        .without_root;
                }
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
                    let (Ok(trace_id), Ok(root_span_id), Ok(mut span)) = (
                        <[u8; 16]>::try_from(view.trace_id()),
                        <[u8; 8]>::try_from(view.span_id()),
                        view.decode(),
                    ) else {
                        continue;
                    };
                    spans::fit(&mut span);
                    let (others, evicted) = self.tracker.complete(trace_id);
                    forgotten += evicted.without_root;
                    let facts =
                        self.mapping
                            .evaluate(&span.attributes, resource_attrs(resource), &others);
                    spans::enrich_root(&mut span, &facts);
                    view.replace(&span);
                    if let Some(crid) = &facts.client_request_id {
                        self.request_ids.insert(
                            crid.clone(),
                            IndexedTrace {
                                trace_id: mlflow_trace_id(&trace_id),
                                experiment: experiment.clone(),
                            },
                        );
                    }
                    let state = match span.status.as_ref().map(|s| s.code) {
                        Some(code) if code == StatusCode::Error as i32 => TraceState::Error,
                        _ => TraceState::Ok,
                    };
                    jobs.push(TraceInfoJob {
                        trace_id,
                        root_span_id,
                        root_name: span.name,
                        start_unix_nano: span.start_time_unix_nano,
                        end_unix_nano: span.end_time_unix_nano,
                        state,
                        facts,
                    });
                }
            }
        }
        if forgotten > 0 {
            metrics::counter!("gateway_traces_without_root_total").increment(forgotten as u64);
        }
        jobs
    }
}
