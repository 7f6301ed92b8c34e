//! `[mapping]`: how attributes become TraceInfo fields (compiled by `map::rules`).

use std::collections::BTreeMap;
use std::str::FromStr;

use serde::Deserialize;

use crate::vocab::limits;

/// Attribute prefixes whose remainder becomes a trace tag key.
pub const DEFAULT_TAG_PREFIXES: &[&str] = &["mlflow.trace.tag.", "mlflow.traceTag."];

/// `[mapping]`: how attributes become TraceInfo fields.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MappingConfig {
    /// Start from the built-in table; `rules` then replace the built-in rule with the same
    /// target, or add new ones. With `false` only `rules` apply.
    pub use_defaults: bool,
    /// Rules: `target` is `client_request_id`, `metadata:<key>` or `tag:<key>`; `sources` are
    /// attribute keys, or `header:<name>` for a captured request header (both the `x-user-id`
    /// and `x_user_id` spellings); `default` is a static value used when no source matches;
    /// `also_tag` writes a metadata target as a tag too. `sources = []` without a default
    /// removes a built-in rule.
    pub rules: Vec<RuleConfig>,
    /// Attribute prefixes whose remainder is a trace tag key (`mlflow.traceTag.team` -> `team`).
    pub tag_prefixes: Vec<String>,
    /// Metadata written on every trace (rules win over these).
    pub static_metadata: BTreeMap<String, String>,
    /// Tags written on every trace (prefix attributes and rules win over these).
    pub static_tags: BTreeMap<String, String>,
}

impl Default for MappingConfig {
    fn default() -> Self {
        Self {
            use_defaults: true,
            rules: Vec::new(),
            tag_prefixes: DEFAULT_TAG_PREFIXES.iter().map(|s| s.to_string()).collect(),
            static_metadata: BTreeMap::new(),
            static_tags: BTreeMap::new(),
        }
    }
}

/// One configured rule, before compilation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub target: String,
    #[serde(default)]
    pub sources: Vec<String>,
    #[serde(default)]
    pub default: Option<String>,
    #[serde(default)]
    pub also_tag: bool,
}

/// Where a rule's value goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    ClientRequestId,
    Metadata(String),
    Tag(String),
}

impl FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "client_request_id" {
            return Ok(Target::ClientRequestId);
        }
        let (kind, key) = s.split_once(':').ok_or_else(|| {
            format!("'{s}' is not client_request_id, metadata:<key> or tag:<key>")
        })?;
        if !limits::is_valid_key(key) {
            return Err(format!("'{key}' is not a valid MLflow key"));
        }
        match kind {
            "metadata" => Ok(Target::Metadata(key.to_string())),
            "tag" => Ok(Target::Tag(key.to_string())),
            _ => Err(format!(
                "'{s}' is not client_request_id, metadata:<key> or tag:<key>"
            )),
        }
    }
}
