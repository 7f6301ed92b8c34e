//! Feedback records, kept in memory and, with a data directory, on disk: one JSON file per
//! record under `<data_dir>/feedback/`, written to a temporary file, fsynced and renamed into
//! place (then the directory fsynced), so a crash leaves either the old or the new record,
//! never a torn one. A vote is on disk before the client hears 202.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::model::AssessmentRequest;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pending,
    Logged,
    Expired,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Logged => "logged",
            Status::Expired => "expired",
        }
    }
}

/// One feedback or expectation request and what became of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub feedback_id: String,
    pub request: AssessmentRequest,
    pub status: Status,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub updated_ms: u64,
    /// Earliest time of the next delivery attempt.
    pub next_attempt_ms: u64,
    pub attempts: u32,
    pub trace_id: Option<String>,
    pub detail: Option<String>,
    /// The tenant that sent it: only it may read it, and it is logged under its identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot persist feedback record {id} in {dir}: {source}")]
pub struct StoreError {
    id: String,
    dir: PathBuf,
    source: std::io::Error,
}

pub struct FeedbackStore {
    dir: Option<PathBuf>,
    records: Mutex<HashMap<String, Record>>,
}

/// What loading found on disk.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Loaded {
    pub records: usize,
    pub pending: usize,
    pub unreadable: usize,
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

impl FeedbackStore {
    /// A store under `data_dir/feedback`, loading what an earlier run left; memory-only
    /// without a data directory.
    pub fn open(data_dir: Option<&Path>) -> std::io::Result<(Self, Loaded)> {
        let mut loaded = Loaded::default();
        let mut records = HashMap::new();
        let dir = match data_dir {
            None => None,
            Some(d) => {
                let dir = d.join("feedback");
                std::fs::create_dir_all(&dir)?;
                for entry in std::fs::read_dir(&dir)? {
                    let path = entry?.path();
                    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    if name.ends_with(".tmp") {
                        // A write that never reached its rename: the old record (if any) stands.
                        let _ = std::fs::remove_file(&path);
                        continue;
                    }
                    if !name.ends_with(".json") {
                        continue;
                    }
                    match std::fs::read(&path)
                        .ok()
                        .and_then(|b| serde_json::from_slice::<Record>(&b).ok())
                    {
                        Some(r) => {
                            loaded.records += 1;
                            if r.status == Status::Pending {
                                loaded.pending += 1;
                            }
                            records.insert(r.feedback_id.clone(), r);
                        }
                        None => {
                            loaded.unreadable += 1;
                            tracing::error!(path = %path.display(), "unreadable feedback record kept aside");
                            let _ = std::fs::rename(&path, path.with_extension("corrupt"));
                        }
                    }
                }
                Some(dir)
            }
        };
        Ok((
            Self {
                dir,
                records: Mutex::new(records),
            },
            loaded,
        ))
    }

    pub fn is_durable(&self) -> bool {
        self.dir.is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Record>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, id: &str) -> Option<Record> {
        self.lock().get(id).cloned()
    }

    /// Writes a record (durably first, when there is a data directory).
    pub fn put(&self, record: &Record) -> Result<(), StoreError> {
        if let Some(dir) = &self.dir {
            let err = |source| StoreError {
                id: record.feedback_id.clone(),
                dir: dir.clone(),
                source,
            };
            let path = dir.join(format!("{}.json", record.feedback_id));
            let tmp = dir.join(format!("{}.json.tmp", record.feedback_id));
            let bytes = serde_json::to_vec(record).map_err(|e| err(std::io::Error::other(e)))?;
            let mut f = std::fs::File::create(&tmp).map_err(err)?;
            f.write_all(&bytes).map_err(err)?;
            f.sync_all().map_err(err)?;
            std::fs::rename(&tmp, &path).map_err(err)?;
            fsync_dir(dir).map_err(err)?;
        }
        self.lock()
            .insert(record.feedback_id.clone(), record.clone());
        Ok(())
    }

    /// Pending records due for an attempt at `now`, oldest first, at most `limit`.
    pub fn due(&self, now: u64, limit: usize) -> Vec<Record> {
        let mut due: Vec<Record> = self
            .lock()
            .values()
            .filter(|r| {
                r.status == Status::Pending && (r.next_attempt_ms <= now || r.expires_ms <= now)
            })
            .cloned()
            .collect();
        due.sort_by_key(|r| r.created_ms);
        due.truncate(limit);
        due
    }

    pub fn pending_count(&self) -> usize {
        self.lock()
            .values()
            .filter(|r| r.status == Status::Pending)
            .count()
    }

    /// Forgets finished records older than `retention_ms` (their files too).
    pub fn prune(&self, now: u64, retention_ms: u64) -> usize {
        let old: Vec<String> = self
            .lock()
            .values()
            .filter(|r| r.status != Status::Pending && r.updated_ms + retention_ms <= now)
            .map(|r| r.feedback_id.clone())
            .collect();
        for id in &old {
            if let Some(dir) = &self.dir {
                let _ = std::fs::remove_file(dir.join(format!("{id}.json")));
            }
            self.lock().remove(id);
        }
        old.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feedback::model::{Kind, RequestExtras};

    fn record(id: &str, status: Status, created: u64) -> Record {
        let request = AssessmentRequest::from_json(
            Kind::Feedback,
            &serde_json::json!({"client_request_id": "r", "name": "n", "value": true}),
            &RequestExtras::default(),
        )
        .unwrap();
        Record {
            feedback_id: id.into(),
            request,
            status,
            created_ms: created,
            expires_ms: created + 1000,
            updated_ms: created,
            next_attempt_ms: created,
            attempts: 0,
            trace_id: None,
            detail: None,
            tenant: None,
        }
    }

    #[test]
    fn records_survive_a_reopen_and_torn_writes_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, loaded) = FeedbackStore::open(Some(dir.path())).unwrap();
            assert_eq!(loaded, Loaded::default());
            store.put(&record("a", Status::Pending, 1)).unwrap();
            store.put(&record("b", Status::Logged, 2)).unwrap();
        }
        let fdir = dir.path().join("feedback");
        std::fs::write(fdir.join("c.json.tmp"), b"{\"half").unwrap();
        std::fs::write(fdir.join("d.json"), b"garbage").unwrap();
        let (store, loaded) = FeedbackStore::open(Some(dir.path())).unwrap();
        assert_eq!(
            loaded,
            Loaded {
                records: 2,
                pending: 1,
                unreadable: 1
            }
        );
        assert_eq!(store.get("a").unwrap().status, Status::Pending);
        assert!(!fdir.join("c.json.tmp").exists());
        assert!(fdir.join("d.corrupt").exists());
    }

    #[test]
    fn due_is_oldest_first_and_prune_keeps_pending() {
        let (store, _) = FeedbackStore::open(None).unwrap();
        store.put(&record("late", Status::Pending, 20)).unwrap();
        store.put(&record("early", Status::Pending, 10)).unwrap();
        store.put(&record("done", Status::Logged, 5)).unwrap();
        let due: Vec<String> = store
            .due(100, 10)
            .into_iter()
            .map(|r| r.feedback_id)
            .collect();
        assert_eq!(due, vec!["early", "late"]);
        assert_eq!(store.prune(100, 50), 1);
        assert!(store.get("done").is_none());
        assert_eq!(store.pending_count(), 2);
    }
}
