//! Liveness and readiness. Ready means: listeners are up, MLflow answers, the gateway's
//! credentials work, and it is not draining for shutdown.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Default)]
pub struct Health {
    listeners_up: AtomicBool,
    draining: AtomicBool,
    mlflow_problem: Mutex<Option<String>>,
    export_problem: Mutex<Option<String>>,
    spool_check: std::sync::OnceLock<SpoolCheck>,
}

/// Reports a nearly full spool or memory queue, evaluated on every readiness probe.
pub type SpoolCheck = Box<dyn Fn() -> Option<String> + Send + Sync>;

impl Health {
    pub fn new() -> Self {
        Self {
            mlflow_problem: Mutex::new(Some("MLflow not checked yet".into())),
            ..Self::default()
        }
    }

    pub fn set_listeners_up(&self, up: bool) {
        self.listeners_up.store(up, Ordering::SeqCst);
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn set_mlflow_problem(&self, problem: Option<String>) {
        *self
            .mlflow_problem
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = problem;
    }

    /// A problem seen while exporting (for example refused credentials); cleared by the next
    /// successful delivery.
    pub fn set_export_problem(&self, problem: Option<String>) {
        let mut slot = self
            .export_problem
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if slot.is_some() || problem.is_some() {
            if let Some(p) = &problem
                && slot.as_ref() != Some(p)
            {
                tracing::error!(problem = %p, "not ready");
            }
            *slot = problem;
        }
    }

    /// Installs the live spool check (once).
    pub fn set_spool_check(&self, check: SpoolCheck) {
        let _ = self.spool_check.set(check);
    }

    /// `Ok` when ready, else every reason it is not.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let mut reasons = Vec::new();
        if !self.listeners_up.load(Ordering::SeqCst) {
            reasons.push("listeners are not up".to_string());
        }
        if self.draining.load(Ordering::SeqCst) {
            reasons.push("draining for shutdown".to_string());
        }
        if let Some(p) = self
            .mlflow_problem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            reasons.push(p);
        }
        if let Some(p) = self
            .export_problem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            reasons.push(p);
        }
        if let Some(p) = self.spool_check.get().and_then(|check| check()) {
            reasons.push(p);
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_condition_holds() {
        let h = Health::new();
        assert_eq!(h.readiness().unwrap_err().len(), 2);
        h.set_listeners_up(true);
        h.set_mlflow_problem(None);
        assert!(h.readiness().is_ok());
        h.set_export_problem(Some("401".into()));
        assert_eq!(h.readiness().unwrap_err(), vec!["401".to_string()]);
        h.set_export_problem(None);
        h.set_draining();
        assert!(h.readiness().is_err());
    }
}
