//! The gateway's shared vocabulary, at the bottom of its layers: the words every other module
//! uses (an experiment as a request names it, the transport a request came in on, the clock) and
//! the one small container several keep their caches in.

pub mod generations;
pub mod glob;
pub mod limits;

pub use generations::Generations;
pub use glob::glob_matches;

/// MLflow's header (HTTP) and metadata (gRPC) for the experiment of an OTLP request; the
/// gateway takes it on its receivers and sends it on `/v1/traces`.
pub const EXPERIMENT_HEADER: &str = "x-mlflow-experiment-id";

/// An MLflow experiment as a request or rule names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExperimentRef {
    Id(String),
    Name(String),
}

impl std::fmt::Display for ExperimentRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExperimentRef::Id(id) => write!(f, "id {id}"),
            ExperimentRef::Name(name) => write!(f, "'{name}'"),
        }
    }
}

/// Where a request came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    HttpProtobuf,
    HttpJson,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::HttpProtobuf => "http_protobuf",
            Transport::HttpJson => "http_json",
        }
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Metric labels, with `tenant` added when there is one: a gateway without tenants keeps its
/// series as they were, and each tenant's are its own.
pub fn labels(
    pairs: &[(&'static str, &'static str)],
    tenant: Option<&std::sync::Arc<str>>,
) -> Vec<metrics::Label> {
    let mut labels: Vec<metrics::Label> = pairs
        .iter()
        .map(|(k, v)| metrics::Label::from_static_parts(k, v))
        .collect();
    if let Some(t) = tenant {
        labels.push(metrics::Label::new(
            "tenant",
            metrics::SharedString::from(t.clone()),
        ));
    }
    labels
}
