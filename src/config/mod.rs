//! Typed configuration: the TOML file, environment twins and flags all land here.
//!
//! Every default is a named constant with the reason for its value. The doc comments on the
//! structs are the configuration reference; `config/gateway.toml` mirrors them key by key.
//! Validation collects every problem before failing, so `--check-config` reports them all at once.

mod access;
mod defaults;
mod mapping;
mod redaction;
mod sampling;
mod secret;
mod sections;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use access::{AuthConfig, TenantConfig, TenantMlflowIdentity, TlsConfig};
pub use defaults::*;
pub use mapping::{DEFAULT_TAG_PREFIXES, MappingConfig, RuleConfig, Target};
pub use redaction::{
    ContentMode, DETECTOR_NAMES, REGEX_PREFIX, RedactionAction, RedactionConfig, RedactionRule,
};
pub use sampling::{
    AttributeMatch, DEFAULT_DECISION_WAIT, DEFAULT_FEEDBACK_WINDOW, DEFAULT_PROBABILITY,
    SamplingConfig,
};
pub use secret::Secret;
pub use sections::*;

/// The whole configuration. Unknown keys are errors, so a typo never silently does nothing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listener addresses.
    pub server: ServerConfig,
    /// Limits applied to incoming OTLP requests.
    pub receiver: ReceiverConfig,
    /// The MLflow tracking server spans are forwarded to.
    pub mlflow: MlflowConfig,
    /// How spans are grouped into MLflow requests.
    pub batch: BatchConfig,
    /// Memory bounds for data waiting to be delivered.
    pub queue: QueueConfig,
    /// The durable spool under `data_dir` (used when `data_dir` is set).
    pub spool: SpoolConfig,
    /// Retry policy for MLflow calls.
    pub retry: RetryConfig,
    /// Tracking of traces whose root span has not arrived yet.
    pub traces: TracesConfig,
    /// Experiment routing by `service.name`.
    pub routing: RoutingConfig,
    /// Attribute-to-TraceInfo mapping table.
    pub mapping: MappingConfig,
    /// Personal data and secrets removed at ingest, before anything is written.
    pub redaction: RedactionConfig,
    /// Which traces go to MLflow when there are more than it can take (off by default).
    pub sampling: SamplingConfig,
    /// Feedback and expectations API.
    pub feedback: FeedbackConfig,
    /// Whether every request must authenticate as a tenant.
    pub auth: AuthConfig,
    /// The tenants of a shared gateway; none: open, as a sidecar.
    pub tenants: Vec<TenantConfig>,
    /// Logging.
    pub log: LogConfig,
    /// Directory for durable state (pending feedback, spool). Created if missing.
    pub data_dir: Option<PathBuf>,
    /// Time allowed on SIGTERM/SIGINT to flush what is in memory to MLflow.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::default(),
            receiver: ReceiverConfig::default(),
            mlflow: MlflowConfig::default(),
            batch: BatchConfig::default(),
            queue: QueueConfig::default(),
            spool: SpoolConfig::default(),
            retry: RetryConfig::default(),
            traces: TracesConfig::default(),
            routing: RoutingConfig::default(),
            mapping: MappingConfig::default(),
            redaction: RedactionConfig::default(),
            sampling: SamplingConfig::default(),
            feedback: FeedbackConfig::default(),
            auth: AuthConfig::default(),
            tenants: Vec::new(),
            log: LogConfig::default(),
            data_dir: None,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
        }
    }
}

/// Errors from loading or validating configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// The resolved listener addresses of a valid config.
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    pub otlp_grpc: SocketAddr,
    pub otlp_http: SocketAddr,
    pub api: SocketAddr,
    pub probe: Option<SocketAddr>,
}

impl Config {
    /// Parses a TOML document.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Reads and parses a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Applies MLflow's environment conventions over file values. `lookup` is the environment
    /// (injected so tests need not mutate the process environment).
    pub fn apply_mlflow_env(&mut self, lookup: &dyn Fn(&str) -> Option<String>) {
        let get = |k: &str| lookup(k).filter(|v| !v.trim().is_empty());
        if let Some(v) = get("MLFLOW_TRACKING_URI") {
            self.mlflow.tracking_uri = v;
        }
        if let Some(v) = get("MLFLOW_EXPERIMENT_ID") {
            self.mlflow.experiment_id = Some(v);
        }
        if let Some(v) = get("MLFLOW_EXPERIMENT_NAME") {
            self.mlflow.experiment_name = Some(v);
        }
        if let Some(v) = get("MLFLOW_TRACKING_TOKEN") {
            self.mlflow.token = Some(Secret::new(v));
        }
        if let Some(v) = get("MLFLOW_TRACKING_USERNAME") {
            self.mlflow.username = Some(v);
        }
        if let Some(v) = get("MLFLOW_TRACKING_PASSWORD") {
            self.mlflow.password = Some(Secret::new(v));
        }
        if let Some(v) = get("MLFLOW_TRACKING_SERVER_CERT_PATH") {
            self.mlflow.ca_cert = Some(PathBuf::from(v));
        }
        if let Some(v) = get("MLFLOW_TRACKING_INSECURE_TLS") {
            self.mlflow.insecure_tls =
                matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes");
        }
        for tenant in &mut self.tenants {
            tenant.resolve_mlflow_identity(lookup);
        }
    }

    /// The default experiment as the pipeline names it.
    pub fn default_experiment(&self) -> crate::vocab::ExperimentRef {
        use crate::vocab::ExperimentRef;
        match (&self.mlflow.experiment_id, &self.mlflow.experiment_name) {
            (Some(id), _) => ExperimentRef::Id(id.clone()),
            (None, Some(name)) => ExperimentRef::Name(name.clone()),
            (None, None) => ExperimentRef::Id(DEFAULT_EXPERIMENT_ID.into()),
        }
    }
}

/// MLflow experiment ids are integers (MLflow answers 400 to anything else).
pub fn is_experiment_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests;
