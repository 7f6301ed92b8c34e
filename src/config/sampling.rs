//! `[sampling]`: which traces go to MLflow when there are more than it can take. Decided per
//! trace once its root has come and `decision_wait` has passed; "keep if any" policy says so.
//! Traces it would drop wait on disk for `feedback_window`, where feedback can still bring them.

use std::time::Duration;

use serde::Deserialize;

/// Children that end after their root are exported in the SDK's next batch: one
/// BatchSpanProcessor interval (5 s) covers them.
pub const DEFAULT_DECISION_WAIT: Duration = Duration::from_secs(5);
/// Users rate an answer within minutes of reading it; fifteen covers most of them while a
/// dropped trace costs disk for no longer (README, "Sizing the data directory").
pub const DEFAULT_FEEDBACK_WINDOW: Duration = Duration::from_secs(15 * 60);
/// One conversation in ten, beyond those kept by the other policies: a sample large enough to
/// browse, a tenth of the load on MLflow.
pub const DEFAULT_PROBABILITY: f64 = 0.1;
/// Longest wait worth having: the trace's spans sit in the spool meanwhile.
const MAX_DECISION_WAIT: Duration = Duration::from_secs(600);

/// Keep traces with an attribute (any span's, or the TraceInfo's mapped metadata and tags, such
/// as `mlflow.trace.user`) whose value matches one of `values` (`*` and `?` globs).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttributeMatch {
    pub key: String,
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingConfig {
    /// Off: every trace is kept, as without this section.
    pub enabled: bool,
    /// How long after a trace's root the decision waits, so late children count.
    #[serde(with = "humantime_serde")]
    pub decision_wait: Duration,
    /// How long a trace the sampler drops (or has not decided yet: its root has not come)
    /// stays on disk, where feedback can still bring it to MLflow. Longer than `decision_wait`.
    #[serde(with = "humantime_serde")]
    pub feedback_window: Duration,
    /// Keep every trace with a span whose status is ERROR.
    pub keep_errors: bool,
    /// Keep traces whose root took at least this long.
    #[serde(with = "humantime_serde")]
    pub keep_slower_than: Option<Duration>,
    /// Keep traces with a matching attribute.
    pub keep_when: Vec<AttributeMatch>,
    /// Share of the other traces kept, by session: a hash of the session id (of the trace id
    /// where there is none) decides, so a conversation is kept or dropped whole.
    pub probability: f64,
    /// Most traces per second kept by `probability` (`0`: no ceiling); a session admitted
    /// once keeps its later traces. Set it to what MLflow can take.
    pub max_traces_per_second: f64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            decision_wait: DEFAULT_DECISION_WAIT,
            feedback_window: DEFAULT_FEEDBACK_WINDOW,
            keep_errors: true,
            keep_slower_than: None,
            keep_when: Vec::new(),
            probability: DEFAULT_PROBABILITY,
            max_traces_per_second: 0.0,
        }
    }
}

impl SamplingConfig {
    /// Every problem with the section; `has_data_dir` says whether dropped traces can wait
    /// on disk.
    pub fn check(&self, has_data_dir: bool, errors: &mut Vec<String>) {
        if !(0.0..=1.0).contains(&self.probability) {
            errors.push(format!(
                "sampling.probability: {} is not between 0 and 1",
                self.probability
            ));
        }
        if !self.max_traces_per_second.is_finite() || self.max_traces_per_second < 0.0 {
            errors.push(format!(
                "sampling.max_traces_per_second: {} is not a rate (0 for no ceiling)",
                self.max_traces_per_second
            ));
        }
        if self.decision_wait > MAX_DECISION_WAIT {
            errors.push(format!(
                "sampling.decision_wait: at most {}s",
                MAX_DECISION_WAIT.as_secs()
            ));
        }
        for (i, m) in self.keep_when.iter().enumerate() {
            if m.key.is_empty() {
                errors.push(format!("sampling.keep_when[{i}]: an empty key"));
            }
            if m.values.is_empty() {
                errors.push(format!(
                    "sampling.keep_when[{i}]: give values (\"*\" for any)"
                ));
            }
        }
        if self.feedback_window <= self.decision_wait {
            errors.push(
                "sampling.feedback_window: must be longer than sampling.decision_wait".into(),
            );
        }
        if self.enabled && !has_data_dir {
            errors.push(
                "sampling.enabled: traces not kept wait on disk for the feedback window; set \
                 data_dir"
                    .into(),
            );
        }
    }
}
