//! The attribute mapping table: which OTel attributes become MLflow's client request id, trace
//! metadata and trace tags.
//!
//! Lookup order for every rule: the root span's attributes, then the root's resource, then what
//! was collected from the trace's other spans (their attributes, then their resources). Within
//! each of those scopes the rule's sources are tried in order; the first non-empty value wins.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::common::v1::KeyValue;

use super::attrs::{find_str, value_to_string};
use crate::config::{MappingConfig, RuleConfig, Target};
use crate::vocab::limits::{self, Field};

/// Prefix OTel SDKs use for captured HTTP request headers.
pub const HEADER_ATTR_PREFIX: &str = "http.request.header.";

mod defaults;
mod keyset;

use defaults::DEFAULT_RULES;
use keyset::KeySet;

/// MLflow's own SourceType for an origin it cannot name; used when nothing says otherwise.
pub const DEFAULT_SOURCE_TYPE: &str = "UNKNOWN";
/// A compiled rule.
#[derive(Debug, Clone)]
struct Rule {
    target: Target,
    /// Attribute keys to look up, in order (header sources expanded to both spellings).
    keys: Vec<String>,
    default: Option<String>,
    also_tag: bool,
}

/// What the table derived for one trace.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
pub struct TraceFacts {
    pub client_request_id: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub tags: BTreeMap<String, String>,
}

impl TraceFacts {
    pub fn session(&self) -> Option<&str> {
        self.metadata.get(SESSION_KEY).map(String::as_str)
    }
    pub fn user(&self) -> Option<&str> {
        self.metadata.get(USER_KEY).map(String::as_str)
    }
}

pub const SESSION_KEY: &str = "mlflow.trace.session";
pub const USER_KEY: &str = "mlflow.trace.user";

/// Attribute values collected from a trace's non-root spans: key -> first value seen.
pub type CollectedAttrs = BTreeMap<String, String>;

/// The compiled mapping table.
#[derive(Debug, Clone)]
pub struct MappingTable {
    rules: Vec<Rule>,
    /// Every attribute key a rule reads: checked once per attribute of every span.
    rule_keys: KeySet,
    tag_prefixes: Vec<String>,
    static_metadata: BTreeMap<String, String>,
    static_tags: BTreeMap<String, String>,
}

fn expand_source(source: &str) -> Vec<String> {
    match source.strip_prefix("header:") {
        Some(name) => {
            let name = name.to_ascii_lowercase();
            let dashed = name.replace('_', "-");
            let underscored = name.replace('-', "_");
            let mut keys = vec![format!("{HEADER_ATTR_PREFIX}{dashed}")];
            if underscored != dashed {
                keys.push(format!("{HEADER_ATTR_PREFIX}{underscored}"));
            }
            keys
        }
        None => vec![source.to_string()],
    }
}

impl MappingTable {
    /// Compiles a validated config (`Config::validate` has checked the targets).
    pub fn new(cfg: &MappingConfig) -> Self {
        let mut configs: Vec<RuleConfig> = if cfg.use_defaults {
            DEFAULT_RULES
                .iter()
                .map(|(target, sources, default, also_tag)| RuleConfig {
                    target: target.to_string(),
                    sources: sources.iter().map(|s| s.to_string()).collect(),
                    default: default.map(str::to_string),
                    also_tag: *also_tag,
                })
                .collect()
        } else {
            Vec::new()
        };
        for rule in &cfg.rules {
            match configs.iter_mut().find(|r| r.target == rule.target) {
                Some(existing) => *existing = rule.clone(),
                None => configs.push(rule.clone()),
            }
        }
        let rules = configs
            .into_iter()
            .filter_map(|r| {
                let target = r.target.parse().ok()?;
                Some(Rule {
                    target,
                    keys: r.sources.iter().flat_map(|s| expand_source(s)).collect(),
                    default: r.default.filter(|d| !d.is_empty()),
                    also_tag: r.also_tag,
                })
            })
            .filter(|r| !r.keys.is_empty() || r.default.is_some())
            .collect::<Vec<Rule>>();
        Self {
            rule_keys: KeySet::new(rules.iter().flat_map(|r| r.keys.iter().cloned())),
            rules,
            tag_prefixes: cfg.tag_prefixes.clone(),
            static_metadata: cfg.static_metadata.clone(),
            static_tags: cfg.static_tags.clone(),
        }
    }

    /// Whether an attribute key feeds any rule or tag prefix.
    pub fn is_interesting(&self, key: impl AsRef<[u8]>) -> bool {
        let key = key.as_ref();
        self.rule_keys.contains(key)
            || self
                .tag_prefixes
                .iter()
                .any(|p| key.starts_with(p.as_bytes()))
    }

    /// Records the values of a non-root span's attributes that the table cares about, first
    /// writer wins. Call with the span's attributes, then its resource's.
    pub fn collect(&self, attrs: &[KeyValue], into: &mut CollectedAttrs) {
        for kv in attrs {
            if into.contains_key(&kv.key) || !self.is_interesting(&kv.key) {
                continue;
            }
            if let Some(v) = kv.value.as_ref().and_then(value_to_string) {
                into.insert(kv.key.clone(), v);
            }
        }
    }

    /// Derives a trace's facts from its root span, the root's resource and what was collected
    /// from other spans. Values are fitted to MLflow's limits.
    pub fn evaluate(
        &self,
        root: &[KeyValue],
        resource: &[KeyValue],
        others: &CollectedAttrs,
    ) -> TraceFacts {
        let mut facts = TraceFacts {
            metadata: self.static_metadata.clone(),
            tags: self.static_tags.clone(),
            ..TraceFacts::default()
        };

        // Tags from prefixed attributes: root, then resource, then others; first wins per key.
        // The value is made only for a key that becomes a new tag: making it for every
        // attribute of every root was most of this function's cost.
        let mut prefixed: BTreeMap<String, String> = BTreeMap::new();
        let mut take = |key: &str, value: &dyn Fn() -> Option<String>| {
            for prefix in &self.tag_prefixes {
                if let Some(tag) = key.strip_prefix(prefix.as_str())
                    && limits::is_valid_key(tag)
                    && !prefixed.contains_key(tag)
                    && let Some(value) = value()
                {
                    prefixed.insert(tag.to_string(), value);
                }
            }
        };
        for kv in root.iter().chain(resource) {
            take(&kv.key, &|| kv.value.as_ref().and_then(value_to_string));
        }
        for (key, value) in others {
            take(key, &|| Some(value.clone()));
        }
        facts.tags.extend(prefixed);

        for rule in &self.rules {
            let found = [root, resource]
                .iter()
                .find_map(|attrs| rule.keys.iter().find_map(|k| find_str(attrs, k)))
                .or_else(|| rule.keys.iter().find_map(|k| others.get(k).cloned()))
                .or_else(|| rule.default.clone());
            let Some(value) = found else { continue };
            match &rule.target {
                Target::ClientRequestId => facts.client_request_id = Some(value),
                Target::Metadata(key) => {
                    if rule.also_tag {
                        facts.tags.insert(key.clone(), value.clone());
                    }
                    facts.metadata.insert(key.clone(), value);
                }
                Target::Tag(key) => {
                    facts.tags.insert(key.clone(), value);
                }
            }
        }

        if let Some(id) = facts.client_request_id.as_mut() {
            limits::fit(id, Field::ClientRequestId);
        }
        for value in facts.metadata.values_mut() {
            limits::fit(value, Field::MetadataValue);
        }
        for value in facts.tags.values_mut() {
            limits::fit(value, Field::TagValue);
        }
        facts
    }
}

#[cfg(test)]
mod tests;
