//! client_request_id -> trace, recorded by the pipeline for every trace it maps. A bounded
//! cache of the most recent ids: MLflow's own search is the source of truth behind it.

use std::sync::Mutex;

use crate::vocab::ExperimentRef;
use crate::vocab::Generations;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedTrace {
    pub trace_id: String,
    pub experiment: ExperimentRef,
    /// The tenant that sent the trace; None without tenants.
    pub tenant: Option<std::sync::Arc<str>>,
}

/// Two generations of at most half the capacity each: the most recent `capacity / 2` ids are
/// always held.
pub struct RequestIdIndex {
    inner: Mutex<Generations<String, IndexedTrace>>,
}

impl RequestIdIndex {
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Generations::new(capacity / 2)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations<String, IndexedTrace>> {
        // A panic while holding the lock leaves the maps consistent enough to keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn insert(&self, client_request_id: String, trace: IndexedTrace) {
        self.lock().insert(client_request_id, trace);
    }

    pub fn get(&self, client_request_id: &str) -> Option<IndexedTrace> {
        self.lock().get(client_request_id).cloned()
    }

    /// Entries held (an id re-sent across a rotation counts twice).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(id: &str) -> IndexedTrace {
        IndexedTrace {
            trace_id: id.into(),
            experiment: ExperimentRef::Id("1".into()),
            tenant: None,
        }
    }

    #[test]
    fn bounded_with_the_most_recent_kept() {
        let idx = RequestIdIndex::new(4);
        idx.insert("a".into(), t("tr-a"));
        idx.insert("a".into(), t("tr-a2"));
        assert_eq!(
            idx.get("a").unwrap().trace_id,
            "tr-a2",
            "a re-sent id updates"
        );
        for n in 0..100 {
            idx.insert(format!("id-{n}"), t(&format!("tr-{n}")));
            assert!(idx.len() <= 4, "{}", idx.len());
        }
        assert!(idx.get("a").is_none(), "the oldest are forgotten");
        assert_eq!(idx.get("id-99").unwrap().trace_id, "tr-99");
        assert_eq!(idx.get("id-98").unwrap().trace_id, "tr-98");
    }

    #[test]
    fn a_re_sent_id_answers_with_its_latest_trace() {
        let idx = RequestIdIndex::new(4);
        idx.insert("a".into(), t("tr-a"));
        idx.insert("b".into(), t("tr-b")); // rotates: a and b are in the previous generation
        idx.insert("a".into(), t("tr-a2"));
        assert_eq!(idx.get("a").unwrap().trace_id, "tr-a2");
    }
}
