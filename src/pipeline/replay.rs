//! `mlflow-otlp-gateway replay-dead-letters`: every dead letter sent to MLflow again, after the
//! cause was fixed; what still fails stays in the file.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde_json::Value;

use crate::mlflow::Identities;
use crate::spool::deadletter::{self, DeadLetter};

/// What a replay did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReplayReport {
    pub delivered: usize,
    pub still_failing: usize,
    pub unreadable: usize,
}

/// Sends every dead letter in `data_dir` again, each under its tenant's MLflow identity (the
/// gateway's for letters without one); rewrites the file with what still fails.
pub async fn replay(data_dir: &Path, identities: &Identities) -> std::io::Result<ReplayReport> {
    let path = deadletter::file_in(data_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ReplayReport::default()),
        Err(e) => return Err(e),
    };
    let mut report = ReplayReport::default();
    let mut keep = String::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(letter) = serde_json::from_str::<DeadLetter>(line) else {
            report.unreadable += 1;
            keep.push_str(line);
            keep.push('\n');
            continue;
        };
        let Ok(body) = STANDARD.decode(&letter.body) else {
            report.unreadable += 1;
            keep.push_str(line);
            keep.push('\n');
            continue;
        };
        let client = identities.of(letter.tenant.as_deref());
        // Batches whose experiment could not be resolved carry its name; resolve it now.
        let experiment_id = match letter.experiment_id.strip_prefix("name:") {
            Some(name) => match client.get_experiment_by_name(name).await {
                Ok(Some(exp)) if exp.is_active() => exp.experiment_id,
                Ok(_) => {
                    report.still_failing += 1;
                    keep.push_str(line);
                    keep.push('\n');
                    continue;
                }
                Err(e) => return Err(std::io::Error::other(e.to_string())),
            },
            None => letter.experiment_id.clone(),
        };
        let mut result = client.post_spans(&experiment_id, Bytes::from(body)).await;
        if result.is_ok() {
            for info in &letter.trace_infos {
                let mut info = info.clone();
                info["trace"]["trace_info"]["trace_location"]["mlflow_experiment"]["experiment_id"] =
                    Value::String(experiment_id.clone());
                let body = Bytes::from(serde_json::to_vec(&info).unwrap_or_default());
                if let Err(e) = client.start_trace(body).await {
                    result = Err(e);
                    break;
                }
            }
        }
        match result {
            Ok(()) => report.delivered += 1,
            Err(e) => {
                report.still_failing += 1;
                let mut letter = letter;
                letter.reason = format!("replay: {e}");
                keep.push_str(&serde_json::to_string(&letter).map_err(std::io::Error::other)?);
                keep.push('\n');
            }
        }
    }
    deadletter::rewrite(&path, &keep)?;
    Ok(report)
}
