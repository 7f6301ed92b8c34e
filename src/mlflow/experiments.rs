//! Experiment resolution with a cache: names to ids (creating missing experiments when allowed),
//! and the checks MLflow itself skips (`/v1/traces` writes into deleted experiments).

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::client::MlflowClient;
use super::error::MlflowError;
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
    result: Result<String, ResolveError>,
    at: Instant,
}

/// Shared resolver.
#[derive(Clone)]
pub struct Experiments {
    client: MlflowClient,
    create_missing: bool,
    cache: Arc<DashMap<ExperimentRef, Entry>>,
    unavailable_since: Arc<std::sync::Mutex<Option<Instant>>>,
}

impl Experiments {
    pub fn new(client: MlflowClient, create_missing: bool) -> Self {
        Self {
            client,
            create_missing,
            cache: Arc::new(DashMap::new()),
            unavailable_since: Arc::new(std::sync::Mutex::new(None)),
        }
    }

    /// The cached answer, if fresh.
    pub fn cached(&self, r: &ExperimentRef) -> Option<Result<String, ResolveError>> {
        let e = self.cache.get(r)?;
        (e.at.elapsed() < CACHE_TTL).then(|| e.result.clone())
    }

    /// Resolves to an active experiment id. Definite answers are cached; transient failures
    /// are not.
    pub async fn resolve(&self, r: &ExperimentRef) -> Result<String, ResolveError> {
        if let Some(hit) = self.cached(r) {
            return hit;
        }
        let result = self.lookup(r).await;
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

    async fn lookup(&self, r: &ExperimentRef) -> Result<String, ResolveError> {
        match r {
            ExperimentRef::Id(id) => match self.client.get_experiment(id).await? {
                None => Err(ResolveError::Missing(format!("id {id}"))),
                Some(exp) if !exp.is_active() => {
                    Err(ResolveError::Deleted(format!("'{}' (id {id})", exp.name)))
                }
                Some(exp) => Ok(exp.experiment_id),
            },
            ExperimentRef::Name(name) => match self.client.get_experiment_by_name(name).await? {
                Some(exp) if !exp.is_active() => Err(ResolveError::Deleted(format!(
                    "'{name}' (id {})",
                    exp.experiment_id
                ))),
                Some(exp) => Ok(exp.experiment_id),
                None if self.create_missing => {
                    let id = self.client.create_experiment(name).await?;
                    tracing::info!(experiment = %name, experiment_id = %id, "created experiment");
                    Ok(id)
                }
                None => Err(ResolveError::Missing(format!(
                    "'{name}' (and mlflow.create_missing_experiments is off)"
                ))),
            },
        }
    }
}
