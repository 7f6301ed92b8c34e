//! Who may connect and what they may do: TLS on the listeners (`[server.tls]`), whether every
//! request must authenticate (`[auth]`), and the tenants (`[[tenants]]`).

use std::path::PathBuf;

use serde::Deserialize;

use super::defaults::*;
use super::secret::Secret;

/// TLS on all three listeners (OTLP gRPC, OTLP HTTP, API). The files are re-read when they
/// change (a rotated Kubernetes Secret), without a restart.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first. Env GATEWAY_TLS_CERT_FILE.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1). Env GATEWAY_TLS_KEY_FILE.
    pub key_file: PathBuf,
    /// PEM CA certificates: when set, every client must present a certificate they sign
    /// (mTLS); one without fails the handshake. Env GATEWAY_TLS_CLIENT_CA_FILE.
    pub client_ca_file: Option<PathBuf>,
}

/// Authentication of OTLP and feedback requests.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Every OTLP and feedback request must authenticate as a tenant (token or client
    /// certificate); others get 401 / UNAUTHENTICATED. Needs at least one `[[tenants]]`.
    /// Env GATEWAY_AUTH_REQUIRED.
    pub required: bool,
}

/// One tenant of a shared gateway: its credentials, the experiments it may write to, and its
/// share of the gateway.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Its name in logs, metrics (`tenant` label) and dead letters.
    pub name: String,
    /// Bearer tokens that are this tenant.
    #[serde(default)]
    pub tokens: Vec<Secret>,
    /// File with one token per line (`#` comments); re-read when it changes.
    #[serde(default)]
    pub tokens_file: Option<PathBuf>,
    /// Client certificate identities (subject CN, or a DNS, email or URI SAN) that are this
    /// tenant; needs `server.tls.client_ca_file`.
    #[serde(default)]
    pub client_cert_subjects: Vec<String>,
    /// Experiment names (`*` and `?` globs) or ids it may write to.
    #[serde(default)]
    pub experiments: Vec<String>,
    /// Its experiment (name or id) where routing finds none; replaces the global default.
    #[serde(default)]
    pub default_experiment: Option<String>,
    /// It may name experiments that do not exist yet; they are then created.
    #[serde(default)]
    pub create_experiments: bool,
    /// It may use the feedback API, on traces in its own experiments only.
    #[serde(default = "default_true")]
    pub feedback: bool,
    /// Environment variable holding its own MLflow bearer token (absent: the gateway's
    /// identity).
    #[serde(default)]
    pub mlflow_token_env: Option<String>,
    /// Environment variables holding its own MLflow basic-auth user and password.
    #[serde(default)]
    pub mlflow_username_env: Option<String>,
    #[serde(default)]
    pub mlflow_password_env: Option<String>,
    /// Redaction rules for its spans, added to the global `[redaction]` (its `content = "drop"`
    /// drops its content even where the global section keeps it).
    #[serde(default)]
    pub redaction: Option<super::RedactionConfig>,
    /// Spans per second it may send; over it, requests get 429 / RESOURCE_EXHAUSTED with a
    /// retry delay. 0: no quota.
    #[serde(default)]
    pub max_spans_per_second: f64,
    /// Largest fraction of the spool (`spool.max_disk_bytes`, or `queue.max_bytes` without a
    /// data directory) its undelivered spans may hold.
    #[serde(default = "default_spool_share")]
    pub max_spool_share: f64,
    /// Its MLflow credentials, read from the `mlflow_*_env` variables when the configuration
    /// is loaded.
    #[serde(skip)]
    pub mlflow: TenantMlflowIdentity,
}

/// A tenant's own MLflow credentials, if it has them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TenantMlflowIdentity {
    /// The gateway's own identity.
    #[default]
    Gateway,
    Token(Secret),
    Basic {
        username: String,
        password: Secret,
    },
    /// A named variable is not set: reported by validation.
    Missing(Vec<String>),
}

fn default_true() -> bool {
    true
}

fn default_spool_share() -> f64 {
    DEFAULT_TENANT_SPOOL_SHARE
}

impl TenantConfig {
    /// Reads the tenant's MLflow credentials from the environment (`lookup`).
    pub fn resolve_mlflow_identity(&mut self, lookup: &dyn Fn(&str) -> Option<String>) {
        let get = |name: &Option<String>| {
            name.as_ref()
                .map(|n| (n.clone(), lookup(n).filter(|v| !v.trim().is_empty())))
        };
        let token = get(&self.mlflow_token_env);
        let user = get(&self.mlflow_username_env);
        let password = get(&self.mlflow_password_env);
        let missing: Vec<String> = [&token, &user, &password]
            .into_iter()
            .flatten()
            .filter(|(_, v)| v.is_none())
            .map(|(n, _)| n.clone())
            .collect();
        self.mlflow = if !missing.is_empty() {
            TenantMlflowIdentity::Missing(missing)
        } else if let (Some((_, Some(username))), Some((_, Some(password)))) = (user, password) {
            TenantMlflowIdentity::Basic {
                username,
                password: Secret::new(password),
            }
        } else if let Some((_, Some(token))) = token {
            TenantMlflowIdentity::Token(Secret::new(token))
        } else {
            TenantMlflowIdentity::Gateway
        };
    }
}

mod validate;
