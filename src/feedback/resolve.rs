//! Which trace a feedback request is about, as its caller may see it: the pipeline's index of
//! client request ids, then MLflow's search; for a tenant, only traces in its experiments.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use super::model::TargetRef;
use crate::auth::Tenant;
use crate::mlflow::client::Experiment;
use crate::mlflow::experiments::{Experiments, ResolveError};
use crate::mlflow::{Identities, MlflowError};
use crate::pipeline::request_ids::{IndexedTrace, RequestIdIndex};
use crate::vocab::ExperimentRef;

/// The experiments searched for an unknown client request id are re-listed this often.
const EXPERIMENT_LIST_TTL: Duration = Duration::from_secs(30);
/// Most experiments one search covers (most recently updated first).
const MAX_SEARCH_EXPERIMENTS: usize = 100;

/// Where a request's trace stands for its caller.
pub enum Found {
    /// The trace, which the caller may reach.
    Trace(String),
    /// No such trace in MLflow yet (its spans may still come).
    NotYet(String),
    /// The trace is in an experiment outside the caller's tenant: answered as not found.
    Elsewhere,
}

pub struct TraceFinder {
    identities: Identities,
    experiments: Experiments,
    index: Arc<RequestIdIndex>,
    /// Experiments this gateway routes to by configuration, searched beside the recent ones.
    known: Vec<ExperimentRef>,
    recent: Mutex<Option<(Instant, Vec<Experiment>)>>,
}

impl TraceFinder {
    pub fn new(
        identities: Identities,
        experiments: Experiments,
        index: Arc<RequestIdIndex>,
        known: Vec<ExperimentRef>,
    ) -> Self {
        Self {
            identities,
            experiments,
            index,
            known,
            recent: Mutex::new(None),
        }
    }

    pub async fn find(
        &self,
        target: &TargetRef,
        tenant: Option<&Tenant>,
    ) -> Result<Found, MlflowError> {
        match target {
            TargetRef::TraceId(trace_id) => self.check_trace(trace_id, tenant).await,
            TargetRef::ClientRequestId(crid) => self.by_client_request_id(crid, tenant).await,
        }
    }

    /// A trace named by id: for a tenant, it must be in one of its experiments.
    async fn check_trace(
        &self,
        trace_id: &str,
        tenant: Option<&Tenant>,
    ) -> Result<Found, MlflowError> {
        let Some(tenant) = tenant else {
            return Ok(Found::Trace(trace_id.to_string()));
        };
        match self.identities.gateway().trace_experiment(trace_id).await? {
            None => Ok(Found::NotYet(format!(
                "trace {trace_id} is not in MLflow yet"
            ))),
            Some(id) if self.allows(tenant, &ExperimentRef::Id(id.clone())).await? => {
                Ok(Found::Trace(trace_id.to_string()))
            }
            Some(_) => Ok(Found::Elsewhere),
        }
    }

    /// client_request_id -> trace: the pipeline's index, then MLflow's search (over the
    /// tenant's experiments only, for a tenant).
    async fn by_client_request_id(
        &self,
        crid: &str,
        tenant: Option<&Tenant>,
    ) -> Result<Found, MlflowError> {
        let mut elsewhere = false;
        if let Some(t) = self.index.get(crid) {
            match tenant {
                None => return Ok(Found::Trace(t.trace_id)),
                Some(tenant)
                    if t.tenant.as_deref() == Some(&*tenant.name)
                        || self.allows(tenant, &t.experiment).await? =>
                {
                    return Ok(Found::Trace(t.trace_id));
                }
                // Another tenant's; the caller may still have one of its own by that id.
                Some(_) => elsewhere = true,
            }
        }
        let experiments = self.search_experiments(tenant).await?;
        let found = self
            .identities
            .of(tenant.map(|t| &*t.name))
            .find_trace_by_client_request_id(&experiments, crid)
            .await?;
        match found {
            Some(found) => {
                if !elsewhere {
                    self.index.insert(
                        crid.to_string(),
                        IndexedTrace {
                            trace_id: found.trace_id.clone(),
                            experiment: ExperimentRef::Id(found.experiment_id),
                            tenant: tenant.map(|t| t.name.clone()),
                        },
                    );
                }
                Ok(Found::Trace(found.trace_id))
            }
            None if elsewhere => Ok(Found::Elsewhere),
            None => Ok(Found::NotYet(
                "no trace with this client_request_id has reached MLflow yet".into(),
            )),
        }
    }

    /// Whether the experiment is one of the tenant's (by id, or by the name MLflow gives it).
    async fn allows(
        &self,
        tenant: &Tenant,
        experiment: &ExperimentRef,
    ) -> Result<bool, MlflowError> {
        if tenant.scope.allows_ref(experiment) {
            return Ok(true);
        }
        let ExperimentRef::Id(id) = experiment else {
            return Ok(false);
        };
        match self.experiments.name_of(id).await {
            Ok(name) => Ok(tenant.scope.allows_name(&name)),
            Err(ResolveError::Unavailable(e)) => Err(e),
            Err(_) => Ok(false),
        }
    }

    /// Active experiments to search: the most recently updated ones, plus those this gateway
    /// routes to by configuration; for a tenant, only its own.
    async fn search_experiments(
        &self,
        tenant: Option<&Tenant>,
    ) -> Result<Vec<String>, MlflowError> {
        let recent = {
            let mut cached = self.recent.lock().await;
            match cached.as_ref() {
                Some((at, list)) if at.elapsed() < EXPERIMENT_LIST_TTL => list.clone(),
                _ => {
                    let list = self
                        .identities
                        .gateway()
                        .recent_experiments(MAX_SEARCH_EXPERIMENTS)
                        .await?;
                    *cached = Some((Instant::now(), list.clone()));
                    list
                }
            }
        };
        let mut ids: Vec<String> = recent
            .iter()
            .filter(|e| {
                tenant.is_none_or(|t| {
                    t.scope.allows_id(&e.experiment_id) || t.scope.allows_name(&e.name)
                })
            })
            .map(|e| e.experiment_id.clone())
            .collect();
        let tenant_ids: Vec<ExperimentRef>;
        let known: Vec<&ExperimentRef> = match tenant {
            None => self.known.iter().collect(),
            Some(t) => {
                tenant_ids = t.scope.ids().cloned().map(ExperimentRef::Id).collect();
                t.default_experiment.iter().chain(&tenant_ids).collect()
            }
        };
        for known in known {
            let id = match known {
                ExperimentRef::Id(id) => Some(id.clone()),
                ExperimentRef::Name(_) => self.experiments.cached(known).and_then(Result::ok),
            };
            if let Some(id) = id
                && !ids.contains(&id)
            {
                ids.push(id);
            }
        }
        Ok(ids)
    }
}
