//! One request's way through ingest: screen its spans, route each resource to an experiment,
//! hold the tenant to its experiments and quota, map, and spool.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::resource::v1::Resource;

use super::authorize::{Verdict, authorize};
use super::{Accepted, Ingest, IngestError, RequestContext};
use crate::auth::Tenant;
use crate::config::is_experiment_id;
use crate::map::attrs::find_str;
use crate::map::request::{RequestMapper, resource_attrs};
use crate::map::trace_info::{TraceInfoJob, mlflow_trace_id};
use crate::otlp::{self, ParsedRequest, ResourceSpansView};
use crate::pipeline::request_ids::IndexedTrace;
use crate::pipeline::screen::{self, Screened};
use crate::spool::{SpoolError, SpoolRecord};
use crate::vocab::{ExperimentRef, labels};

/// How long a request may wait on MLflow to learn whether its experiment exists; past this the
/// spans are accepted and the exporter resolves the experiment (MLflow may be down).
const QUICK_RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);
/// Resource attributes that pick an experiment (MLflow's own names for them).
const EXPERIMENT_ID_ATTR: &str = "mlflow.experiment.id";
const EXPERIMENT_NAME_ATTR: &str = "mlflow.experiment.name";

struct Group {
    experiment: ExperimentRef,
    resource_spans: Vec<ResourceSpansView>,
    span_count: usize,
}

impl Ingest {
    /// Screens, routes, maps and enqueues one OTLP request (read by `otlp`).
    #[tracing::instrument(skip_all, fields(transport = ctx.transport.as_str(), tenant, spans))]
    pub async fn accept(
        &self,
        request: ParsedRequest,
        ctx: RequestContext,
    ) -> Result<Accepted, IngestError> {
        let transport = ctx.transport.as_str();
        let tenant = ctx.tenant.as_deref();
        let tenant_name = tenant.map(|t| &t.name);
        if let Some(t) = tenant {
            tracing::Span::current().record("tenant", &*t.name);
        }
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

        let mut screened = screen::screen(request, ctx.transport, tenant_name.cloned());
        let received = screened.received;
        tracing::Span::current().record("spans", received);
        let by_transport = || labels(&[("transport", transport)], tenant_name);
        metrics::counter!("gateway_receiver_spans_received_total", by_transport())
            .increment(received as u64);
        if screened.repaired > 0 {
            metrics::counter!("gateway_receiver_spans_repaired_total", by_transport())
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
        if let Some(t) = tenant
            && let Some(quota) = &t.quota
            && let Err(wait) = quota.take(received)
        {
            let err = self.over_quota(t, wait);
            self.count_refused(ctx.transport, tenant, &err, received);
            return Err(err);
        }

        // Before anything reads or keeps the spans: routing, mapping, the spool.
        self.redactors
            .of(tenant_name.map(|n| &**n))
            .apply(&mut screened.resource_spans);
        let groups = self.route_all(&mut screened, header, tenant);
        let groups = match self.authorize_all(&mut screened, groups, tenant).await {
            Ok(groups) => groups,
            Err(e) => {
                self.count_refused(ctx.transport, tenant, &e, received);
                return Err(e);
            }
        };
        let forbidden = groups.is_empty() && screened.forbidden > 0;

        // Experiments that definitely cannot take spans: reject those spans, keep the rest.
        let mut kept = Vec::with_capacity(groups.len());
        for mut g in groups {
            match self.quick_resolve(&g.experiment, tenant).await {
                Ok(Some(id)) => {
                    g.experiment = ExperimentRef::Id(id);
                    kept.push(g);
                }
                Ok(None) => kept.push(g),
                Err(msg) => screened.reject("bad_experiment", g.span_count, || msg),
            }
        }
        if kept.is_empty() {
            let msg = screened.problem.unwrap_or_else(|| "no usable spans".into());
            let msg = format!("all {received} spans rejected: {msg}");
            return Err(if forbidden {
                IngestError::PermissionDenied(msg)
            } else {
                IngestError::InvalidArgument(msg)
            });
        }

        let accepted = self.spool_groups(kept, &ctx).await?;
        metrics::counter!("gateway_receiver_spans_accepted_total", by_transport())
            .increment(accepted as u64);
        metrics::gauge!("gateway_traces_awaiting_root").set(self.tracker.awaiting() as f64);
        Ok(outcome(&screened, accepted))
    }

    /// Each resource's experiment: the header's, else `route`'s. Resources are grouped by it.
    fn route_all(
        &self,
        screened: &mut Screened,
        header: Option<ExperimentRef>,
        tenant: Option<&Tenant>,
    ) -> Vec<Group> {
        let mut groups: Vec<Group> = Vec::new();
        for rs in std::mem::take(&mut screened.resource_spans) {
            let count = rs.span_count();
            if count == 0 {
                continue;
            }
            let experiment = match header.clone() {
                Some(h) => h,
                None => match self.route(rs.resource.as_ref(), tenant) {
                    Ok(exp) => exp,
                    Err(msg) => {
                        screened.reject("bad_experiment", count, || msg);
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
        groups
    }

    /// The groups the tenant may write; the others' spans are rejected as `forbidden`. A group
    /// whose permission cannot be decided now (MLflow down) refuses the request, retryably.
    async fn authorize_all(
        &self,
        screened: &mut Screened,
        groups: Vec<Group>,
        tenant: Option<&Tenant>,
    ) -> Result<Vec<Group>, IngestError> {
        let Some(tenant) = tenant else {
            return Ok(groups);
        };
        let mut allowed = Vec::with_capacity(groups.len());
        for g in groups {
            match authorize(&self.experiments, tenant, &g.experiment).await {
                Verdict::Allowed => allowed.push(g),
                Verdict::Denied(msg) => {
                    screened.forbidden += g.span_count;
                    screened.reject("forbidden_experiment", g.span_count, || msg);
                }
                Verdict::Undecided(detail) => {
                    return Err(IngestError::Undecided {
                        detail,
                        retry_after: self.retry_after,
                    });
                }
            }
        }
        Ok(allowed)
    }

    /// Maps and spools each group, one ingest turn each; returns the spans accepted.
    async fn spool_groups(
        &self,
        kept: Vec<Group>,
        ctx: &RequestContext,
    ) -> Result<usize, IngestError> {
        let tenant = ctx.tenant.as_deref();
        let received_ms = crate::vocab::now_ms();
        let to_accept: usize = kept.iter().map(|g| g.span_count).sum();
        let mut accepted = 0;
        for mut g in kept {
            // Not held over the append: a group commit gathers the appends waiting for it.
            let turn = self.ingest_turn().await;
            let roots = self.map(&mut g.resource_spans, &g.experiment, tenant);
            if let Some(sampler) = &self.sampler {
                sampler.note(&g.resource_spans);
            }
            let body = otlp::encode_request(&g.resource_spans);
            let record = self.spool.prepare(SpoolRecord {
                experiment: g.experiment,
                tenant: tenant.map(|t| t.name.to_string()),
                span_count: g.span_count,
                roots,
                received_ms,
                sampled: false,
                body: Bytes::from(body),
            });
            drop(turn);
            if let Err(e) = self.spool.append_prepared(record).await {
                let err = self.spool_error(e);
                // Whatever went in before this group is safe and will be delivered; the client
                // retries the whole request and the duplicates are harmless upserts.
                self.count_refused(ctx.transport, tenant, &err, to_accept - accepted);
                return Err(err);
            }
            accepted += g.span_count;
        }
        Ok(accepted)
    }

    fn spool_error(&self, e: SpoolError) -> IngestError {
        let retry_after = self.retry_after;
        match e {
            SpoolError::Full(detail) => IngestError::QueueFull {
                detail,
                retry_after,
            },
            SpoolError::TenantShare(detail) => IngestError::OverQuota {
                detail,
                retry_after,
            },
            SpoolError::Closed => IngestError::ShuttingDown { retry_after },
            SpoolError::Io(detail) => {
                tracing::error!(error = %detail, "spool append failed");
                IngestError::Storage {
                    detail,
                    retry_after,
                }
            }
        }
    }

    /// Maps a group's spans (`map::request`) and remembers each root's client request id, for
    /// the feedback API.
    fn map(
        &self,
        resource_spans: &mut [ResourceSpansView],
        experiment: &ExperimentRef,
        tenant: Option<&Tenant>,
    ) -> Vec<TraceInfoJob> {
        // Shared by the traces of this group that await their root.
        let shared_experiment = Arc::new(experiment.clone());
        let mapper = RequestMapper {
            mapping: &self.mapping,
            tracker: &self.tracker,
            experiment: &shared_experiment,
            tenant: tenant.map(|t| &t.name),
        };
        let jobs = mapper.map(resource_spans);
        for job in &jobs {
            if let Some(crid) = &job.facts.client_request_id {
                self.request_ids.insert(
                    crid.clone(),
                    IndexedTrace {
                        trace_id: mlflow_trace_id(&job.trace_id),
                        experiment: experiment.clone(),
                        tenant: tenant.map(|t| t.name.clone()),
                    },
                );
            }
        }
        jobs
    }

    /// Experiment routing below the header: resource attributes, then rules by service name,
    /// then the tenant's default, then the gateway's.
    fn route(
        &self,
        resource: Option<&Resource>,
        tenant: Option<&Tenant>,
    ) -> Result<ExperimentRef, String> {
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
        Ok(tenant
            .and_then(|t| t.default_experiment.clone())
            .unwrap_or_else(|| self.default_experiment.clone()))
    }

    /// `Ok(Some(id))` resolved, `Ok(None)` unknown for now (MLflow slow or down: the exporter
    /// resolves later), `Err` when the experiment definitely cannot take spans (a tenant's
    /// missing experiment among them, unless it may create experiments).
    async fn quick_resolve(
        &self,
        exp: &ExperimentRef,
        tenant: Option<&Tenant>,
    ) -> Result<Option<String>, String> {
        let may_create = tenant.is_some_and(|t| t.create_experiments);
        let result = match self.experiments.cached(exp) {
            // A cached "missing" is asked again for a tenant that may create it.
            Some(Err(_)) if may_create => None,
            hit => hit,
        };
        let result = match result {
            Some(hit) => hit,
            None if self.experiments.recently_unavailable() => return Ok(None),
            None => {
                let resolve = self.experiments.resolve_for(exp, tenant);
                match tokio::time::timeout(QUICK_RESOLVE_TIMEOUT, resolve).await {
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
