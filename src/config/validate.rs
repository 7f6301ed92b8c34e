//! Validation: every problem with a configuration, collected before it fails, so that
//! `--check-config` reports them all at once. One check per concern, each adding to `errors`.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::defaults::MIN_NESTING_DEPTH;
use super::{Addrs, Config, ConfigError, Target, is_experiment_id};

impl Config {
    /// Checks every value and reports all problems at once.
    pub fn validate(&self) -> Result<Addrs, ConfigError> {
        let mut errors = Vec::new();
        let addrs = self.check_addrs(&mut errors);
        self.check_mlflow(&mut errors);
        self.check_sizes(&mut errors);
        self.check_durations(&mut errors);
        self.check_routing(&mut errors);
        self.check_mapping(&mut errors);
        self.redaction.check("redaction", &mut errors);
        for t in &self.tenants {
            if let Some(r) = &t.redaction {
                r.check(&format!("tenants[{}].redaction", t.name), &mut errors);
            }
        }
        self.sampling.check(self.data_dir.is_some(), &mut errors);
        self.check_feedback(&mut errors);
        self.check_tls(&mut errors);
        self.check_tenants(&mut errors);
        self.check_storage_and_log(&mut errors);
        match addrs {
            Some(addrs) if errors.is_empty() => Ok(addrs),
            _ => Err(ConfigError::Invalid(errors)),
        }
    }

    /// The listener addresses, each a `host:port` socket address.
    fn check_addrs(&self, errors: &mut Vec<String>) -> Option<Addrs> {
        let mut addr = |key: &str, value: &str| match value.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                errors.push(format!(
                    "{key}: '{value}' is not a host:port socket address"
                ));
                None
            }
        };
        let grpc = addr("server.otlp_grpc_addr", &self.server.otlp_grpc_addr);
        let http = addr("server.otlp_http_addr", &self.server.otlp_http_addr);
        let api = addr("server.api_addr", &self.server.api_addr);
        let probe = match &self.server.probe_addr {
            Some(value) => Some(addr("server.probe_addr", value)?),
            None => None,
        };
        Some(Addrs {
            otlp_grpc: grpc?,
            otlp_http: http?,
            api: api?,
            probe,
        })
    }

    /// The tracking server, the default experiment and the credentials.
    fn check_mlflow(&self, errors: &mut Vec<String>) {
        match reqwest::Url::parse(&self.mlflow.tracking_uri) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            Ok(u) => errors.push(format!(
                "mlflow.tracking_uri: scheme '{}' is not supported (use http or https; \
                 databricks and file stores do not accept OTLP spans)",
                u.scheme()
            )),
            Err(e) => errors.push(format!(
                "mlflow.tracking_uri: '{}' is not a URL: {e}",
                self.mlflow.tracking_uri
            )),
        }
        if let Some(id) = &self.mlflow.experiment_id
            && !is_experiment_id(id)
        {
            errors.push(format!(
                "mlflow.experiment_id: '{id}' is not a numeric experiment id"
            ));
        }
        if let Some(name) = &self.mlflow.experiment_name
            && (name.trim().is_empty() || name.chars().count() > 500)
        {
            errors.push("mlflow.experiment_name: must be 1 to 500 characters".into());
        }
        if let Some(path) = &self.mlflow.ca_cert
            && let Err(e) = std::fs::read(path)
        {
            errors.push(format!(
                "mlflow.ca_cert: cannot read {}: {e}",
                path.display()
            ));
        }
        if self.mlflow.username.is_some() != self.mlflow.password.is_some() {
            errors.push(
                "mlflow.username and mlflow.password: set both or neither \
                 (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)"
                    .into(),
            );
        }
    }

    /// Sizes, counts and limits, and how they bound each other.
    fn check_sizes(&self, errors: &mut Vec<String>) {
        let positive: [(&str, usize); 13] = [
            ("feedback.max_pending", self.feedback.max_pending),
            ("feedback.max_body_bytes", self.feedback.max_body_bytes),
            ("feedback.index_capacity", self.feedback.index_capacity),
            (
                "receiver.max_message_bytes",
                self.receiver.max_message_bytes,
            ),
            (
                "receiver.max_decompressed_bytes",
                self.receiver.max_decompressed_bytes,
            ),
            (
                "receiver.max_inflight_requests",
                self.receiver.max_inflight_requests,
            ),
            ("batch.max_spans", self.batch.max_spans),
            ("batch.max_bytes", self.batch.max_bytes),
            ("queue.max_trace_infos", self.queue.max_trace_infos),
            ("mlflow.export_concurrency", self.mlflow.export_concurrency),
            (
                "mlflow.trace_info_concurrency",
                self.mlflow.trace_info_concurrency,
            ),
            (
                "mlflow.trace_info_pipeline_depth",
                self.mlflow.trace_info_pipeline_depth,
            ),
            ("traces.max_pending", self.traces.max_pending),
        ];
        for (key, value) in positive {
            if value == 0 {
                errors.push(format!("{key}: must be greater than 0"));
            }
        }
        if self.receiver.ingest_concurrency == Some(0) {
            errors.push("receiver.ingest_concurrency: must be greater than 0 (or unset)".into());
        }
        if self.queue.max_bytes < self.receiver.max_decompressed_bytes {
            errors.push(format!(
                "queue.max_bytes ({}) must be at least receiver.max_decompressed_bytes ({}), \
                 or the largest accepted request could never be queued",
                self.queue.max_bytes, self.receiver.max_decompressed_bytes
            ));
        }
        if self.spool.max_disk_bytes < self.receiver.max_decompressed_bytes as u64 {
            errors.push(
                "spool.max_disk_bytes must be at least receiver.max_decompressed_bytes, or the \
                 largest accepted request could never be spooled"
                    .into(),
            );
        }
        if self.spool.segment_bytes == 0 {
            errors.push("spool.segment_bytes: must be greater than 0".into());
        }
        if self.spool.fsync_interval.is_zero() {
            errors.push("spool.fsync_interval: must be greater than 0s".into());
        }
        if self.queue.max_bytes > u32::MAX as usize {
            errors.push(format!("queue.max_bytes: at most {} bytes", u32::MAX));
        }
        if self.receiver.max_decompressed_bytes < self.receiver.max_message_bytes {
            errors.push(
                "receiver.max_decompressed_bytes must be at least receiver.max_message_bytes"
                    .into(),
            );
        }
        if self.receiver.max_inflight_decompressed_bytes < self.receiver.max_decompressed_bytes {
            errors.push(
                "receiver.max_inflight_decompressed_bytes must be at least \
                 receiver.max_decompressed_bytes, or the largest accepted request could never \
                 be decoded"
                    .into(),
            );
        }
        if self.receiver.max_decompressed_bytes > u32::MAX as usize {
            errors.push(format!(
                "receiver.max_decompressed_bytes: at most {} bytes",
                u32::MAX
            ));
        }
        let nesting = MIN_NESTING_DEPTH..=crate::otlp::schema::HARD_MAX_NESTING;
        if !nesting.contains(&self.receiver.max_nesting_depth) {
            errors.push(format!(
                "receiver.max_nesting_depth: must be from {} to {}",
                nesting.start(),
                nesting.end()
            ));
        }
    }

    /// Durations that must not be zero, and the backoff range.
    fn check_durations(&self, errors: &mut Vec<String>) {
        for (name, d) in [
            ("batch.timeout", self.batch.timeout),
            ("mlflow.request_timeout", self.mlflow.request_timeout),
            ("retry.initial_backoff", self.retry.initial_backoff),
            ("mlflow.health_interval", self.mlflow.health_interval),
            ("feedback.pending_ttl", self.feedback.pending_ttl),
            ("feedback.retry_interval", self.feedback.retry_interval),
        ] {
            if d.is_zero() {
                errors.push(format!("{name}: must be greater than 0s"));
            }
        }
        if self.retry.max_backoff < self.retry.initial_backoff {
            errors.push("retry.max_backoff must be at least retry.initial_backoff".into());
        }
    }

    /// Routing rules: a service name and exactly one experiment each.
    fn check_routing(&self, errors: &mut Vec<String>) {
        for (i, rule) in self.routing.rules.iter().enumerate() {
            let key = format!("routing.rules[{i}]");
            if rule.service_name.is_empty() {
                errors.push(format!("{key}.service_name: must not be empty"));
            }
            match (&rule.experiment_id, &rule.experiment_name) {
                (Some(id), None) if !is_experiment_id(id) => errors.push(format!(
                    "{key}.experiment_id: '{id}' is not a numeric experiment id"
                )),
                (Some(_), None) => {}
                (None, Some(name)) if name.trim().is_empty() => {
                    errors.push(format!("{key}.experiment_name: must not be empty"))
                }
                (None, Some(_)) => {}
                _ => errors.push(format!(
                    "{key}: set exactly one of experiment_id and experiment_name"
                )),
            }
        }
    }

    /// Mapping targets and static keys and values, as MLflow takes them.
    fn check_mapping(&self, errors: &mut Vec<String>) {
        for (i, rule) in self.mapping.rules.iter().enumerate() {
            if let Err(e) = rule.target.parse::<Target>() {
                errors.push(format!("mapping.rules[{i}].target: {e}"));
            }
        }
        for (key, _) in self
            .mapping
            .static_metadata
            .iter()
            .chain(self.mapping.static_tags.iter())
        {
            if !crate::vocab::limits::is_valid_key(key) {
                errors.push(format!(
                    "mapping static key '{key}': MLflow keys are 1-250 characters of letters, \
                     digits, '_', '-', '.', '/', ':' and spaces"
                ));
            }
        }
        check_static(&self.mapping.static_tags, errors);
    }

    /// The feedback API's rate limit and tokens.
    fn check_feedback(&self, errors: &mut Vec<String>) {
        if self.feedback.rate_limit_per_second.is_nan() || self.feedback.rate_limit_per_second < 0.0
        {
            errors.push("feedback.rate_limit_per_second: must be 0 (off) or more".into());
        }
        if let Some(path) = &self.feedback.tokens_file
            && let Err(e) = std::fs::metadata(path)
        {
            errors.push(format!(
                "feedback.tokens_file: cannot read {}: {e}",
                path.display()
            ));
        }
        if self
            .feedback
            .tokens
            .iter()
            .any(|t| t.expose().trim().is_empty())
        {
            errors.push("feedback.tokens: tokens must not be empty".into());
        }
    }

    /// The data directory and the log filter.
    fn check_storage_and_log(&self, errors: &mut Vec<String>) {
        if let Some(dir) = &self.data_dir
            && dir.as_os_str().is_empty()
        {
            errors.push("data_dir: must not be empty".into());
        }
        if !["trace", "debug", "info", "warn", "error", "off"]
            .iter()
            .any(|l| self.log.level.to_ascii_lowercase().starts_with(l))
            && !self.log.level.contains('=')
        {
            errors.push(format!(
                "log.level: '{}' is not a level or tracing filter",
                self.log.level
            ));
        }
    }
}

fn check_static(tags: &BTreeMap<String, String>, errors: &mut Vec<String>) {
    for (key, value) in tags {
        if value.chars().count() > crate::vocab::limits::MAX_TAG_VALUE_CHARS {
            errors.push(format!(
                "mapping.static_tags.{key}: longer than MLflow's {} character limit",
                crate::vocab::limits::MAX_TAG_VALUE_CHARS
            ));
        }
    }
}
