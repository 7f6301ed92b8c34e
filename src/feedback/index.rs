//! client_request_id -> trace, recorded by the pipeline for every trace it maps. A bounded
//! cache (oldest evicted first): MLflow's own search is the source of truth behind it.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crate::pipeline::envelope::ExperimentRef;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedTrace {
    pub trace_id: String,
    pub experiment: ExperimentRef,
}

pub struct RequestIdIndex {
    inner: Mutex<(HashMap<String, IndexedTrace>, VecDeque<String>)>,
    capacity: usize,
}

impl RequestIdIndex {
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new((HashMap::new(), VecDeque::new())),
            capacity: capacity.max(1),
        }
    }

    pub fn insert(&self, client_request_id: String, trace: IndexedTrace) {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (map, order) = &mut *guard;
        if map.insert(client_request_id.clone(), trace).is_none() {
            order.push_back(client_request_id);
            while map.len() > self.capacity {
                match order.pop_front() {
                    Some(old) => {
                        map.remove(&old);
                    }
                    None => break,
                }
            }
        }
    }

    pub fn get(&self, client_request_id: &str) -> Option<IndexedTrace> {
        let guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        guard.0.get(client_request_id).cloned()
    }

    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).0.len()
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
        }
    }

    #[test]
    fn bounded_with_oldest_evicted() {
        let idx = RequestIdIndex::new(2);
        idx.insert("a".into(), t("tr-a"));
        idx.insert("b".into(), t("tr-b"));
        idx.insert("a".into(), t("tr-a2"));
        assert_eq!(idx.get("a").unwrap().trace_id, "tr-a2");
        idx.insert("c".into(), t("tr-c"));
        assert_eq!(idx.len(), 2);
        assert!(idx.get("a").is_none());
        assert!(idx.get("c").is_some());
    }
}
