//! Checks of `[server.tls]`, `[auth]` and `[[tenants]]`, reported with every other problem.

use std::collections::HashMap;
use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::TenantMlflowIdentity;
use crate::config::{Config, is_experiment_id};

impl Config {
    /// The listeners' certificate, key and client CA: readable, and PEM of the right kind.
    pub(in crate::config) fn check_tls(&self, errors: &mut Vec<String>) {
        let Some(tls) = &self.server.tls else {
            return;
        };
        check_certs("server.tls.cert_file", &tls.cert_file, errors);
        if let Err(e) = PrivateKeyDer::from_pem_file(&tls.key_file) {
            errors.push(format!(
                "server.tls.key_file: no PEM private key in {}: {e}",
                tls.key_file.display()
            ));
        }
        if let Some(ca) = &tls.client_ca_file {
            check_certs("server.tls.client_ca_file", ca, errors);
        }
    }

    /// Tenants: names, credentials (none shared), experiments, identities, shares; and what
    /// `auth.required` needs.
    pub(in crate::config) fn check_tenants(&self, errors: &mut Vec<String>) {
        if self.auth.required && self.tenants.is_empty() {
            errors.push(
                "auth.required = true: no [[tenants]] are configured, so no request could \
                 authenticate; add tenants or set auth.required = false"
                    .into(),
            );
        }
        if self.auth.required
            && (!self.feedback.tokens.is_empty() || self.feedback.tokens_file.is_some())
        {
            errors.push(
                "feedback.tokens / feedback.tokens_file: with auth.required = true the feedback \
                 API takes tenant credentials only; give tenants `feedback = true` instead"
                    .into(),
            );
        }
        let mut names = HashMap::new();
        let mut tokens: HashMap<&str, &str> = HashMap::new();
        let mut subjects: HashMap<&str, &str> = HashMap::new();
        for (i, t) in self.tenants.iter().enumerate() {
            let key = format!("tenants[{i}] ({})", t.name);
            if t.name.is_empty()
                || t.name.len() > 64
                || !t
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                errors.push(format!(
                    "{key}.name: 1 to 64 characters of letters, digits, '.', '_' or '-'"
                ));
            }
            if names.insert(t.name.as_str(), i).is_some() {
                errors.push(format!("{key}.name: another tenant has this name"));
            }
            for token in &t.tokens {
                if token.expose().trim().is_empty() {
                    errors.push(format!("{key}.tokens: tokens must not be empty"));
                } else if let Some(other) = tokens.insert(token.expose(), &t.name)
                    && other != t.name
                {
                    errors.push(format!(
                        "{key}.tokens: a token is also tenant '{other}'s; a token must name one \
                         tenant"
                    ));
                }
            }
            if let Some(path) = &t.tokens_file
                && let Err(e) = std::fs::metadata(path)
            {
                errors.push(format!(
                    "{key}.tokens_file: cannot read {}: {e}",
                    path.display()
                ));
            }
            for subject in &t.client_cert_subjects {
                if subject.trim().is_empty() {
                    errors.push(format!("{key}.client_cert_subjects: must not be empty"));
                } else if let Some(other) = subjects.insert(subject, &t.name)
                    && other != t.name
                {
                    errors.push(format!(
                        "{key}.client_cert_subjects: '{subject}' is also tenant '{other}'s"
                    ));
                }
            }
            let has_certs = !t.client_cert_subjects.is_empty();
            let mtls = self
                .server
                .tls
                .as_ref()
                .is_some_and(|tls| tls.client_ca_file.is_some());
            if has_certs && !mtls {
                errors.push(format!(
                    "{key}.client_cert_subjects: needs server.tls.client_ca_file (client \
                     certificates are only asked for with mTLS)"
                ));
            }
            if t.tokens.is_empty() && t.tokens_file.is_none() && !has_certs {
                errors.push(format!(
                    "{key}: no credentials; set tokens, tokens_file or client_cert_subjects"
                ));
            }
            self.check_tenant_experiments(&key, t, errors);
            match &t.mlflow {
                TenantMlflowIdentity::Missing(vars) => errors.push(format!(
                    "{key}: environment variable(s) {} not set",
                    vars.join(", ")
                )),
                _ if t.mlflow_username_env.is_some() != t.mlflow_password_env.is_some() => errors
                    .push(format!(
                        "{key}: set both mlflow_username_env and mlflow_password_env, or neither"
                    )),
                _ if t.mlflow_token_env.is_some() && t.mlflow_username_env.is_some() => errors
                    .push(format!(
                        "{key}: set mlflow_token_env or the username/password pair, not both"
                    )),
                _ => {}
            }
            if !(t.max_spans_per_second.is_finite() && t.max_spans_per_second >= 0.0) {
                errors.push(format!(
                    "{key}.max_spans_per_second: must be 0 (no quota) or more"
                ));
            }
            if !(t.max_spool_share > 0.0 && t.max_spool_share <= 1.0) {
                errors.push(format!(
                    "{key}.max_spool_share: must be more than 0 and at most 1"
                ));
            }
        }
    }

    /// A tenant's experiment list and its default.
    fn check_tenant_experiments(
        &self,
        key: &str,
        t: &super::TenantConfig,
        errors: &mut Vec<String>,
    ) {
        if t.experiments.is_empty() {
            errors.push(format!(
                "{key}.experiments: list the experiment names (globs) or ids it may write to"
            ));
        }
        for e in &t.experiments {
            if e.trim().is_empty() || e.chars().count() > 500 {
                errors.push(format!(
                    "{key}.experiments: entries must be 1 to 500 characters"
                ));
            }
        }
        if let Some(default) = &t.default_experiment {
            let listed = t.experiments.iter().any(|e| {
                if is_experiment_id(default) {
                    e == default
                } else {
                    !is_experiment_id(e) && crate::vocab::glob_matches(e, default)
                }
            });
            if !listed {
                errors.push(format!(
                    "{key}.default_experiment: '{default}' is not among its experiments"
                ));
            }
        }
    }
}

fn check_certs(key: &str, path: &Path, errors: &mut Vec<String>) {
    match CertificateDer::pem_file_iter(path) {
        Ok(certs) => {
            let certs: Result<Vec<_>, _> = certs.collect();
            match certs {
                Ok(c) if !c.is_empty() => {}
                Ok(_) => errors.push(format!("{key}: no PEM certificate in {}", path.display())),
                Err(e) => errors.push(format!("{key}: {}: {e}", path.display())),
            }
        }
        Err(e) => errors.push(format!("{key}: cannot read {}: {e}", path.display())),
    }
}
