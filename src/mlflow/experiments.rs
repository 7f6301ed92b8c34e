//! Experiment resolution with a cache: names to ids (creating missing experiments when allowed),
//! and the checks MLflow itself skips (`/v1/traces` writes into deleted experiments).

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::client::MlflowClient;
use super::error::MlflowError;
use super::identities::Identities;
use crate::auth::Tenant;
use crate::vocab::ExperimentRef;

/// Resolved experiments are re-checked this often, so a deletion is noticed within a minute.
const CACHE_TTL: Duration = Duration::from_secs(60);
/// After MLflow failed to answer a lookup, receivers skip lookups this long instead of each
/// request waiting on a dead server.
const UNAVAILABLE_BACKOFF: Duration = Duration::from_secs(5);

/// Why an experiment cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ResolveError {
    #[error("experiment {0} does not exist")]
    Missing(String),
    #[error("experiment {0} is deleted; restore it in MLflow or route these spans elsewhere")]
    Deleted(String),
    #[error("cannot resolve experiment: {0}")]
    Unavailable(#[from] MlflowError),
}

impl ResolveError {
    /// Missing and deleted experiments will not fix themselves; an unreachable MLflow may.
    pub fn is_permanent(&self) -> bool {
        match self {
            ResolveError::Missing(_) | ResolveError::Deleted(_) => true,
            ResolveError::Unavailable(e) => !e.is_retryable(),
        }
    }
}

#[derive(Clone)]
struct Entry {
    result: Result<Resolved, ResolveError>,
    at: Instant,
}

/// An active experiment.
#[derive(Debug, Clone)]
struct Resolved {
    id: String,
    name: String,
}

/// Who may create a missing experiment, and under which identity.
enum Create<'a> {
    As(&'a MlflowClient),
    Never(&'static str),
}

/// Shared resolver.
#[derive(Clone)]
pub struct Experiments {
    identities: Identities,
    create_missing: bool,
    cache: Arc<DashMap<ExperimentRef, Entry>>,
    unavailable_since: Arc<std::sync::Mutex<Option<Instant>>>,
}

impl Experiments {
    pub fn new(identities: Identities, create_missing: bool) -> Self {
        Self {
            identities,
            create_missing,
            cache: Arc::new(DashMap::new()),
            unavailable_since: Arc::new(std::sync::Mutex::new(None)),
        }
    }

    fn fresh(&self, r: &ExperimentRef) -> Option<Result<Resolved, ResolveError>> {
        let e = self.cache.get(r)?;
        (e.at.elapsed() < CACHE_TTL).then(|| e.result.clone())
    }

    /// The cached answer, if fresh.
    pub fn cached(&self, r: &ExperimentRef) -> Option<Result<String, ResolveError>> {
        self.fresh(r).map(|hit| hit.map(|e| e.id))
    }

    /// Resolves to an active experiment id, creating a missing one when
    /// `mlflow.create_missing_experiments` allows. Definite answers are cached; transient
    /// failures are not.
    pub async fn resolve(&self, r: &ExperimentRef) -> Result<String, ResolveError> {
        self.resolve_for(r, None).await
    }

    /// `resolve` for a tenant's data: a missing experiment is created only if the tenant may
    /// (`create_experiments`), under the tenant's own identity when it has one.
    pub async fn resolve_for(
        &self,
        r: &ExperimentRef,
        tenant: Option<&Tenant>,
    ) -> Result<String, ResolveError> {
        let create = match tenant {
            Some(t) if t.create_experiments => Create::As(self.identities.of(Some(&t.name))),
            Some(_) => Create::Never("its tenant may not create experiments"),
            None if self.create_missing => Create::As(self.identities.gateway()),
            None => Create::Never("mlflow.create_missing_experiments is off"),
        };
        self.resolve_with(r, create).await.map(|e| e.id)
    }

    /// The name of the experiment with this id (never created).
    pub async fn name_of(&self, id: &str) -> Result<String, ResolveError> {
        self.resolve_with(&ExperimentRef::Id(id.to_string()), Create::Never(""))
            .await
            .map(|e| e.name)
    }

    async fn resolve_with(
        &self,
        r: &ExperimentRef,
        create: Create<'_>,
    ) -> Result<Resolved, ResolveError> {
        match self.fresh(r) {
            // A missing name that this caller may create is looked up (and created) again.
            Some(Err(ResolveError::Missing(_))) if matches!(create, Create::As(_)) => {}
            Some(hit) => return hit,
            None => {}
        }
        let result = self.lookup(r, create).await;
        let unavailable = matches!(&result, Err(ResolveError::Unavailable(e)) if e.is_retryable());
        *self
            .unavailable_since
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = unavailable.then(Instant::now);
        if !matches!(result, Err(ResolveError::Unavailable(_))) {
            self.cache.insert(
                r.clone(),
                Entry {
                    result: result.clone(),
                    at: Instant::now(),
                },
            );
        }
        if let Ok(e) = &result {
            // What one form taught holds for the other.
            let other = match r {
                ExperimentRef::Id(_) => ExperimentRef::Name(e.name.clone()),
                ExperimentRef::Name(_) => ExperimentRef::Id(e.id.clone()),
            };
            self.cache.insert(
                other,
                Entry {
                    result: result.clone(),
                    at: Instant::now(),
                },
            );
        }
        result
    }

    /// Whether MLflow failed a lookup within the last few seconds.
    pub fn recently_unavailable(&self) -> bool {
        self.unavailable_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| t.elapsed() < UNAVAILABLE_BACKOFF)
    }

    /// Records that MLflow did not answer in time.
    pub fn mark_unavailable(&self) {
        *self
            .unavailable_since
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// Forgets a cached answer (after MLflow contradicted it).
    pub fn invalidate(&self, r: &ExperimentRef) {
        self.cache.remove(r);
    }

    async fn lookup(
        &self,
        r: &ExperimentRef,
        create: Create<'_>,
    ) -> Result<Resolved, ResolveError> {
        let client = self.identities.gateway();
        match r {
            ExperimentRef::Id(id) => match client.get_experiment(id).await? {
                None => Err(ResolveError::Missing(format!("id {id}"))),
                Some(exp) if !exp.is_active() => {
                    Err(ResolveError::Deleted(format!("'{}' (id {id})", exp.name)))
                }
                Some(exp) => Ok(Resolved {
                    id: exp.experiment_id,
                    name: exp.name,
                }),
            },
            ExperimentRef::Name(name) => match client.get_experiment_by_name(name).await? {
                Some(exp) if !exp.is_active() => Err(ResolveError::Deleted(format!(
                    "'{name}' (id {})",
                    exp.experiment_id
                ))),
                Some(exp) => Ok(Resolved {
                    id: exp.experiment_id,
                    name: exp.name,
                }),
                None => match create {
                    Create::As(creator) => {
                        let id = creator.create_experiment(name).await?;
                        tracing::info!(experiment = %name, experiment_id = %id, tenant = creator.tenant().unwrap_or(""), "created experiment");
                        Ok(Resolved {
                            id,
                            name: name.clone(),
                        })
                    }
                    Create::Never(why) => Err(ResolveError::Missing(format!("'{name}' ({why})"))),
                },
            },
        }
    }
}
