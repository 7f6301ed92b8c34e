//! Whether a tenant may write to the experiment its spans were routed to. A name is checked
//! against the tenant's names and globs; an id against its ids, else by the experiment's name,
//! which only MLflow knows (cached).

use std::time::Duration;

use crate::auth::Tenant;
use crate::mlflow::experiments::{Experiments, ResolveError};
use crate::vocab::ExperimentRef;

/// How long a request may wait on MLflow for an experiment's name before it is refused with a
/// retryable code (its permission cannot be decided without it).
const NAME_LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) enum Verdict {
    Allowed,
    /// Not the tenant's: the reason, naming the experiment only as the request did.
    Denied(String),
    /// MLflow did not say what the experiment is called.
    Undecided(String),
}

pub(super) async fn authorize(
    experiments: &Experiments,
    tenant: &Tenant,
    experiment: &ExperimentRef,
) -> Verdict {
    if tenant.scope.allows_ref(experiment) {
        return Verdict::Allowed;
    }
    let denied = || {
        Verdict::Denied(format!(
            "experiment {experiment} is not among tenant '{}''s experiments",
            tenant.name
        ))
    };
    let ExperimentRef::Id(id) = experiment else {
        return denied();
    };
    if !tenant.scope.has_names() {
        return denied();
    }
    match tokio::time::timeout(NAME_LOOKUP_TIMEOUT, experiments.name_of(id)).await {
        Ok(Ok(name)) if tenant.scope.allows_name(&name) => Verdict::Allowed,
        // Missing, deleted or another's: the same answer, so ids cannot be probed.
        Ok(Ok(_)) | Ok(Err(ResolveError::Missing(_) | ResolveError::Deleted(_))) => denied(),
        Ok(Err(e)) => Verdict::Undecided(format!(
            "cannot check whether experiment {experiment} is tenant '{}''s: {e}",
            tenant.name
        )),
        Err(_) => {
            experiments.mark_unavailable();
            Verdict::Undecided(format!(
                "cannot check whether experiment {experiment} is tenant '{}''s: MLflow did not \
                 answer in time",
                tenant.name
            ))
        }
    }
}
