//! The tenants of a shared gateway and how a request is matched to one.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use super::quota::SpanQuota;
use super::scope::ExperimentScope;
use super::tokens::{self, TokenDigest};
use crate::config::{Config, TenantConfig, is_experiment_id};
use crate::vocab::ExperimentRef;

/// Why a request is not let in. All of them answer 401 / UNAUTHENTICATED.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "authentication required: send 'Authorization: Bearer <token>' or a client certificate"
    )]
    Missing,
    #[error("unknown credentials")]
    Invalid,
    #[error("the bearer token and the client certificate name different tenants")]
    Conflict,
}

impl AuthError {
    /// Short metric label.
    pub fn reason(self) -> &'static str {
        match self {
            AuthError::Missing => "unauthenticated",
            AuthError::Invalid => "invalid_credentials",
            AuthError::Conflict => "conflicting_credentials",
        }
    }
}

/// A tenant as the gateway enforces it.
pub struct Tenant {
    pub name: Arc<str>,
    pub scope: ExperimentScope,
    /// Replaces the global default experiment for this tenant's requests.
    pub default_experiment: Option<ExperimentRef>,
    pub create_experiments: bool,
    pub feedback: bool,
    pub quota: Option<SpanQuota>,
    /// Largest fraction of the spool its undelivered records may hold.
    pub spool_share: f64,
}

impl std::fmt::Debug for Tenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenant")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Tenant {
    fn new(cfg: &TenantConfig) -> Self {
        Self {
            name: Arc::from(cfg.name.as_str()),
            scope: ExperimentScope::new(&cfg.experiments),
            default_experiment: cfg.default_experiment.as_ref().map(|e| {
                if is_experiment_id(e) {
                    ExperimentRef::Id(e.clone())
                } else {
                    ExperimentRef::Name(e.clone())
                }
            }),
            create_experiments: cfg.create_experiments,
            feedback: cfg.feedback,
            quota: (cfg.max_spans_per_second > 0.0)
                .then(|| SpanQuota::new(cfg.max_spans_per_second)),
            spool_share: cfg.max_spool_share,
        }
    }
}

/// A tenant's tokens file and what it held when last read.
struct TokensFile {
    tenant: usize,
    path: PathBuf,
    /// Digest of the file's contents, to notice a change.
    seen: Mutex<(TokenDigest, Vec<TokenDigest>)>,
}

/// Every tenant, and the tables that find one from a request's credentials.
pub struct Tenants {
    required: bool,
    list: Vec<Arc<Tenant>>,
    by_subject: HashMap<String, usize>,
    config_tokens: Vec<(TokenDigest, usize)>,
    files: Vec<TokensFile>,
    /// Every token (configured and from files), rebuilt when a file changes.
    table: RwLock<Arc<Vec<(TokenDigest, usize)>>>,
}

/// Why the tenants could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TenantsError {
    #[error("tenant '{tenant}': cannot read tokens_file {path}: {source}")]
    TokensFile {
        tenant: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tenants '{0}' and '{1}' share a token; a token must name one tenant")]
    SharedToken(String, String),
}

impl Tenants {
    pub fn from_config(cfg: &Config) -> Result<Self, TenantsError> {
        let list: Vec<Arc<Tenant>> = cfg
            .tenants
            .iter()
            .map(|t| Arc::new(Tenant::new(t)))
            .collect();
        let mut by_subject = HashMap::new();
        let mut config_tokens = Vec::new();
        let mut files = Vec::new();
        for (i, t) in cfg.tenants.iter().enumerate() {
            for s in &t.client_cert_subjects {
                by_subject.insert(s.clone(), i);
            }
            for token in &t.tokens {
                config_tokens.push((tokens::digest(token.expose()), i));
            }
            if let Some(path) = &t.tokens_file {
                let text =
                    std::fs::read_to_string(path).map_err(|source| TenantsError::TokensFile {
                        tenant: t.name.clone(),
                        path: path.clone(),
                        source,
                    })?;
                files.push(TokensFile {
                    tenant: i,
                    path: path.clone(),
                    seen: Mutex::new((tokens::digest(&text), parse_tokens(&text))),
                });
            }
        }
        let tenants = Self {
            required: cfg.auth.required,
            list,
            by_subject,
            config_tokens,
            files,
            table: RwLock::new(Arc::new(Vec::new())),
        };
        let table = tenants.build_table();
        if let Some((a, b)) = shared_token(&table) {
            return Err(TenantsError::SharedToken(
                tenants.list[a].name.to_string(),
                tenants.list[b].name.to_string(),
            ));
        }
        *tenants.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
        Ok(tenants)
    }

    /// No tenants: the gateway is open and requests carry no tenant.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn required(&self) -> bool {
        self.required
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Tenant>> {
        self.list.iter().find(|t| &*t.name == name)
    }

    pub fn all(&self) -> &[Arc<Tenant>] {
        &self.list
    }

    /// The tenant a request's credentials name: its bearer token, else its client
    /// certificate's subjects. `Ok(None)`: no tenant, which only an open gateway accepts.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        cert_subjects: &[String],
    ) -> Result<Option<Arc<Tenant>>, AuthError> {
        if self.list.is_empty() {
            return Ok(None);
        }
        let by_token = match tokens::bearer(authorization) {
            Some(token) => {
                let table = self.table.read().unwrap_or_else(|p| p.into_inner()).clone();
                Some(tokens::find(&table, &tokens::digest(token)).ok_or(AuthError::Invalid)?)
            }
            None => None,
        };
        let by_cert = cert_subjects
            .iter()
            .find_map(|s| self.by_subject.get(s).copied());
        let found = match (by_token, by_cert) {
            (Some(a), Some(b)) if a != b => return Err(AuthError::Conflict),
            (Some(i), _) | (None, Some(i)) => Some(i),
            (None, None) if self.required => return Err(AuthError::Missing),
            (None, None) => None,
        };
        Ok(found.map(|i| self.list[i].clone()))
    }

    /// Re-reads the tokens files that changed; a token that two tenants now share is left
    /// out (it names neither) and logged by tenant, never by value. Returns whether any
    /// tenant's tokens changed.
    pub fn reload(&self) -> bool {
        let mut changed = false;
        for file in &self.files {
            let text = match std::fs::read_to_string(&file.path) {
                Ok(t) => t,
                Err(e) => {
                    // A rotation may replace the file in steps; the last tokens stay.
                    tracing::warn!(tenant = %self.list[file.tenant].name, path = %file.path.display(), error = %e, "cannot re-read tokens_file; keeping its last tokens");
                    continue;
                }
            };
            let d = tokens::digest(&text);
            let mut seen = file.seen.lock().unwrap_or_else(|p| p.into_inner());
            if seen.0 != d {
                *seen = (d, parse_tokens(&text));
                changed = true;
                tracing::info!(tenant = %self.list[file.tenant].name, tokens = seen.1.len(), "tokens_file changed; tokens reloaded");
            }
        }
        if changed {
            let mut table = self.build_table();
            while let Some((a, b)) = shared_token(&table) {
                tracing::error!(
                    tenant_a = %self.list[a].name,
                    tenant_b = %self.list[b].name,
                    "two tenants share a token; it is refused for both"
                );
                let shared: Vec<TokenDigest> = table
                    .iter()
                    .filter(|(_, t)| *t == a)
                    .map(|(d, _)| *d)
                    .filter(|d| table.iter().any(|(e, t)| e == d && *t == b))
                    .collect();
                table.retain(|(d, _)| !shared.contains(d));
            }
            *self.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
        }
        changed
    }

    fn build_table(&self) -> Vec<(TokenDigest, usize)> {
        let mut table = self.config_tokens.clone();
        for file in &self.files {
            let seen = file.seen.lock().unwrap_or_else(|p| p.into_inner());
            table.extend(seen.1.iter().map(|d| (*d, file.tenant)));
        }
        table
    }
}

fn parse_tokens(text: &str) -> Vec<TokenDigest> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(tokens::digest)
        .collect()
}

/// Two tenants holding the same token, if any.
fn shared_token(table: &[(TokenDigest, usize)]) -> Option<(usize, usize)> {
    let mut owner: HashMap<TokenDigest, usize> = HashMap::new();
    for (d, t) in table {
        match owner.insert(*d, *t) {
            Some(other) if other != *t => return Some((other, *t)),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests;
