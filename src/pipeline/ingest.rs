//! Admission and mapping: the one path both receivers feed. Validates spans (bad ones are
//! reported, their siblings go on), routes them to experiments, applies the mapping table,
//! charges their bytes to the queue budget and hands them to the batcher. A request is
//! acknowledged once this returns Ok.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::resource::v1::Resource;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::screen::{self, Screened};
use crate::config::{Config, is_experiment_id};
use crate::map::attrs::find_str;
use crate::map::request::{RequestMapper, resource_attrs};
use crate::map::rules::MappingTable;
use crate::map::trace_info::{TraceInfoJob, mlflow_trace_id};
use crate::map::traces::TraceTracker;
use crate::mlflow::experiments::Experiments;
use crate::otlp::{self, ParsedRequest, ResourceSpansView};
use crate::pipeline::request_ids::{IndexedTrace, RequestIdIndex};
use crate::spool::{Spool, SpoolError, SpoolRecord};
use crate::vocab::{ExperimentRef, Transport};

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

/// Shared by the receivers.
pub struct Ingest {
    mapping: MappingTable,
    tracker: Arc<TraceTracker>,
    experiments: Experiments,
    default_experiment: ExperimentRef,
    routes: Vec<(String, ExperimentRef)>,
    spool: Spool,
    inflight: Arc<Semaphore>,
    /// Turns for the CPU work of a request (`receiver.ingest_concurrency`).
    turns: Arc<Semaphore>,
    retry_after: Duration,
    request_ids: Arc<RequestIdIndex>,
}

/// A turn for a request's CPU work (checking, decoding, mapping), from `Ingest::ingest_turn`;
/// given back when dropped.
pub struct IngestTurn {
    _permit: Option<OwnedSemaphorePermit>,
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
            turns: Arc::new(Semaphore::new(
                cfg.receiver
                    .ingest_concurrency
                    .unwrap_or_else(crate::config::default_ingest_concurrency),
            )),
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

    /// Waits for a turn to do a request's CPU work. Under overload the requests beyond
    /// `receiver.ingest_concurrency` wait here (their clients with them) instead of taking
    /// every CPU from delivery, which then fell to a tenth of what the gateway sustains.
    /// Only waits are timed (`gateway_receiver_ingest_wait_seconds`): a free turn costs no
    /// clock reads or metric updates.
    pub async fn ingest_turn(&self) -> IngestTurn {
        if let Ok(permit) = self.turns.clone().try_acquire_owned() {
            return IngestTurn {
                _permit: Some(permit),
            };
        }
        let waited = std::time::Instant::now();
        // The semaphore is never closed, so a permit always comes.
        let permit = self.turns.clone().acquire_owned().await.ok();
        metrics::histogram!("gateway_receiver_ingest_wait_seconds")
            .record(waited.elapsed().as_secs_f64());
        IngestTurn { _permit: permit }
    }

    /// Counts a request refused because the budget for decoded bytes in flight was spent.
    pub fn count_busy(&self, transport: Transport) {
        metrics::counter!("gateway_receiver_requests_refused_total",
            "transport" => transport.as_str(), "reason" => "decode_budget")
        .increment(1);
    }

    /// Counts spans refused with a whole-request error.
    pub fn count_refused(&self, transport: Transport, err: &IngestError, spans: usize) {
        metrics::counter!("gateway_receiver_spans_refused_total",
            "transport" => transport.as_str(), "reason" => err.reason())
        .increment(spans as u64);
    }

    /// Screens, routes, maps and enqueues one OTLP request (read by `otlp`).
    #[tracing::instrument(skip_all, fields(transport = ctx.transport.as_str(), spans))]
    pub async fn accept(
        &self,
        request: ParsedRequest,
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

        let mut screened = screen::screen(request, ctx.transport);
        let received = screened.received;
        tracing::Span::current().record("spans", received);
        metrics::counter!("gateway_receiver_spans_received_total", "transport" => transport)
            .increment(received as u64);
        if screened.repaired > 0 {
            metrics::counter!("gateway_receiver_spans_repaired_total", "transport" => transport)
                .increment(screened.repaired as u64);
        }
        if received == 0 {
            // An empty request is valid OTLP; one whose fields were all unknown was meant to
            // carry spans (snake_case or misspelled names, another signal's message).
            return match screened.unknown_field.take() {
                Some(field) => Err(IngestError::InvalidArgument(format!(
                    "no spans found: unrecognized {field}"
                ))),
                None => Ok(Accepted::default()),
            };
        }
        let mut groups: Vec<Group> = Vec::new();
        for rs in std::mem::take(&mut screened.resource_spans) {
            let count = rs.span_count();
            if count == 0 {
                continue;
            }
            let experiment = match header.clone() {
                Some(h) => h,
                None => match self.route(rs.resource.as_ref()) {
                    Ok(exp) => exp,
                    Err(msg) => {
                        screened.reject(ctx.transport, "bad_experiment", count, || msg);
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

        // Experiments that definitely cannot take spans: reject those spans, keep the rest.
        let mut kept = Vec::with_capacity(groups.len());
        for mut g in groups {
            match self.quick_resolve(&g.experiment).await {
                Ok(Some(id)) => {
                    g.experiment = ExperimentRef::Id(id);
                    kept.push(g);
                }
                Ok(None) => kept.push(g),
                Err(msg) => screened.reject(ctx.transport, "bad_experiment", g.span_count, || msg),
            }
        }
        if kept.is_empty() {
            let msg = screened.problem.unwrap_or_else(|| "no usable spans".into());
            return Err(IngestError::InvalidArgument(format!(
                "all {received} spans rejected: {msg}"
            )));
        }

        let received_ms = crate::vocab::now_ms();
        let to_accept: usize = kept.iter().map(|g| g.span_count).sum();
        let mut accepted = 0;
        for mut g in kept {
            // Not held over the append: a group commit gathers the appends waiting for it.
            let turn = self.ingest_turn().await;
            let roots = self.map(&mut g.resource_spans, &g.experiment);
            let body = otlp::encode_request(&g.resource_spans);
            let record = self.spool.prepare(SpoolRecord {
                experiment: g.experiment,
                span_count: g.span_count,
                roots,
                received_ms,
                body: Bytes::from(body),
            });
            drop(turn);
            if let Err(e) = self.spool.append_prepared(record).await {
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
                self.count_refused(ctx.transport, &err, to_accept - accepted);
                return Err(err);
            }
            accepted += g.span_count;
        }
        metrics::counter!("gateway_receiver_spans_accepted_total", "transport" => transport)
            .increment(accepted as u64);
        metrics::gauge!("gateway_traces_awaiting_root").set(self.tracker.awaiting() as f64);
        Ok(outcome(&screened, accepted))
    }

    /// Maps a group's spans (`map::request`) and remembers each root's client request id, for
    /// the feedback API.
    fn map(
        &self,
        resource_spans: &mut [ResourceSpansView],
        experiment: &ExperimentRef,
    ) -> Vec<TraceInfoJob> {
        let mapper = RequestMapper {
            mapping: &self.mapping,
            tracker: &self.tracker,
        };
        let jobs = mapper.map(resource_spans);
        for job in &jobs {
            if let Some(crid) = &job.facts.client_request_id {
                self.request_ids.insert(
                    crid.clone(),
                    IndexedTrace {
                        trace_id: mlflow_trace_id(&job.trace_id),
                        experiment: experiment.clone(),
                    },
                );
            }
        }
        jobs
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
}

/// The answer to a request that was (partly) accepted: the rejected spans and the first
/// problem, or a warning when text was repaired (OTLP allows a message with nothing rejected).
fn outcome(screened: &Screened, accepted: usize) -> Accepted {
    let (received, rejected) = (screened.received, screened.rejected);
    let message = match (&screened.problem, screened.repaired) {
        (Some(problem), _) if rejected > 0 => {
            tracing::warn!(rejected, accepted, problem = %problem, "rejected unusable spans");
            Some(format!(
                "{rejected} of {received} spans rejected; first problem: {problem}"
            ))
        }
        (_, 0) => None,
        (_, repaired) => Some(format!(
            "{repaired} of {received} spans held text that was not UTF-8; it was replaced with \
             U+FFFD"
        )),
    };
    Accepted {
        accepted_spans: accepted,
        rejected_spans: rejected,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mlflow::MlflowClient;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::KeyValue;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message;

    fn ingest_with(cfg: &Config) -> Ingest {
        let client = MlflowClient::new(&cfg.mlflow).expect("client");
        Ingest::new(
            cfg,
            Arc::new(TraceTracker::new(100, Duration::from_secs(60))),
            Experiments::new(client, false),
            Spool::memory(1 << 20),
            Arc::new(RequestIdIndex::new(100)),
        )
    }

    fn span(trace: u8, id: u8, root: bool, attributes: Vec<KeyValue>) -> Span {
        Span {
            trace_id: vec![trace; 16],
            span_id: vec![id; 8],
            parent_span_id: if root { vec![] } else { vec![trace; 8] },
            name: format!("span {id}"),
            start_time_unix_nano: 1,
            end_time_unix_nano: 2,
            attributes,
            ..Default::default()
        }
    }

    fn resource_spans(attributes: Vec<KeyValue>, spans: Vec<Span>) -> ResourceSpans {
        ResourceSpans {
            resource: Some(Resource {
                attributes,
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// With one turn, a request waits while another holds it (nothing reaches the queue), and
    /// goes in once the turn is given back.
    #[tokio::test]
    async fn requests_beyond_the_ingest_concurrency_wait_for_a_turn() {
        // A port nothing listens on: resolving the experiment fails at once and the spans are
        // queued to be resolved at delivery, as while MLflow is down.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut cfg = Config::default();
        cfg.mlflow.tracking_uri = format!("http://127.0.0.1:{port}");
        cfg.receiver.ingest_concurrency = Some(1);
        let ingest = Arc::new(ingest_with(&cfg));
        let request = ExportTraceServiceRequest {
            resource_spans: vec![resource_spans(vec![], vec![span(1, 1, true, vec![])])],
        };
        let views = otlp::parse_request(&Bytes::from(request.encode_to_vec()), 100).expect("valid");
        let ctx = RequestContext {
            transport: Transport::Grpc,
            experiment_header: None,
        };

        let held = ingest.ingest_turn().await;
        let waiting = tokio::spawn({
            let ingest = ingest.clone();
            async move { ingest.accept(views, ctx).await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !waiting.is_finished(),
            "accepted while the only turn was held"
        );
        assert_eq!(
            ingest.spool.stats().memory_bytes,
            0,
            "queued without a turn"
        );

        drop(held);
        let accepted = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("accepted once the turn was back")
            .expect("task")
            .expect("accepted");
        assert_eq!(accepted.accepted_spans, 1);
        assert!(ingest.spool.stats().memory_bytes > 0);
    }
}
