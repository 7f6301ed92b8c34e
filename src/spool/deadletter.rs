//! Dead letters: spans MLflow rejected for good (after the batch was split to isolate them), with
//! MLflow's reason, in `<data_dir>/deadletter/dead-letters.jsonl`. `mlflow-otlp-gateway
//! replay-dead-letters` sends them again after a fix and keeps only what still fails
//! (`pipeline::replay`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use serde_json::Value;

const FILE: &str = "dead-letters.jsonl";

/// One rejected request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeadLetter {
    pub time_ms: u64,
    pub experiment_id: String,
    pub reason: String,
    pub spans: usize,
    /// Encoded `ExportTraceServiceRequest`, base64.
    pub body: String,
    /// StartTraceV3 bodies for the trace roots among these spans.
    #[serde(default)]
    pub trace_infos: Vec<Value>,
    /// The tenant whose spans these are (replayed under its MLflow identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

impl DeadLetter {
    pub fn new(
        experiment_id: &str,
        reason: &str,
        spans: usize,
        body: &[u8],
        trace_infos: Vec<Value>,
    ) -> Self {
        Self {
            time_ms: crate::vocab::now_ms(),
            experiment_id: experiment_id.to_string(),
            reason: reason.to_string(),
            spans,
            body: STANDARD.encode(body),
            trace_infos,
            tenant: None,
        }
    }

    /// The same letter, marked as `tenant`'s.
    pub fn of_tenant(mut self, tenant: Option<&str>) -> Self {
        self.tenant = tenant.map(str::to_string);
        self
    }
}

/// Appends dead letters; without a data directory they are only logged.
pub struct DeadLetters {
    path: Option<PathBuf>,
    lock: Mutex<()>,
}

impl DeadLetters {
    pub fn new(data_dir: Option<&Path>) -> std::io::Result<Self> {
        let path = match data_dir {
            Some(d) => {
                let dir = d.join("deadletter");
                std::fs::create_dir_all(&dir)?;
                Some(dir.join(FILE))
            }
            None => None,
        };
        Ok(Self {
            path,
            lock: Mutex::new(()),
        })
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn write(&self, letter: &DeadLetter) {
        let tenant = letter.tenant.as_deref().map(std::sync::Arc::from);
        let labels = || crate::vocab::labels(&[], tenant.as_ref());
        metrics::counter!("gateway_dead_letters_total", labels()).increment(1);
        metrics::counter!("gateway_dead_letter_spans_total", labels())
            .increment(letter.spans as u64);
        let Some(path) = &self.path else {
            tracing::error!(experiment_id = %letter.experiment_id, reason = %letter.reason,
                spans = letter.spans, "rejected spans dropped (no data_dir for dead letters)");
            return;
        };
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let result = (|| -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            let mut line = serde_json::to_vec(letter).map_err(std::io::Error::other)?;
            line.push(b'\n');
            f.write_all(&line)?;
            f.sync_data()
        })();
        match result {
            Ok(()) => {
                tracing::error!(experiment_id = %letter.experiment_id, reason = %letter.reason,
                spans = letter.spans, file = %path.display(), "rejected spans written to the dead-letter file")
            }
            Err(e) => tracing::error!(error = %e, reason = %letter.reason, spans = letter.spans,
                "cannot write dead letter; rejected spans dropped"),
        }
    }
}

/// The dead-letter file under `data_dir`.
pub fn file_in(data_dir: &Path) -> PathBuf {
    data_dir.join("deadletter").join(FILE)
}

/// Replaces the dead-letter file at `path` with `text`, atomically (written beside it, synced,
/// renamed over it).
pub fn rewrite(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("jsonl.tmp");
    std::fs::write(&tmp, text.as_bytes())?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters_append_as_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let dl = DeadLetters::new(Some(dir.path())).unwrap();
        dl.write(&DeadLetter::new("3", "bad span", 1, b"\x0a\x00", vec![]));
        dl.write(&DeadLetter::new("3", "bad span 2", 2, b"", vec![]));
        let text = std::fs::read_to_string(dl.path().unwrap()).unwrap();
        let lines: Vec<DeadLetter> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].reason, "bad span");
        assert_eq!(STANDARD.decode(&lines[0].body).unwrap(), b"\x0a\x00");
    }
}
