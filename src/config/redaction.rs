//! `[redaction]`: what is removed from spans at ingest, before anything is written. Global, and
//! per tenant in `[[tenants]] redaction` (added to the global rules).

use serde::Deserialize;

/// Captured headers dropped whatever the rules say: credentials and session cookies have no
/// place in a trace, and OTel's header capture takes whatever names it is given.
pub const DEFAULT_DROP_HEADERS: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];
/// Where the key for `action = "hash"` is read from: a secret belongs in the environment, not
/// the file.
pub const DEFAULT_HASH_KEY_ENV: &str = "GATEWAY_REDACTION_HASH_KEY";
/// The built-in detectors' names (`redact::detectors`).
pub const DETECTOR_NAMES: [&str; 7] = [
    "email",
    "credit_card",
    "phone",
    "ip",
    "iban",
    "bearer_token",
    "api_key",
];
/// A pattern that is a regular expression, not a detector's name.
pub const REGEX_PREFIX: &str = "re:";

/// What happens to GenAI prompt and completion content.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentMode {
    #[default]
    Keep,
    /// Removed; model, token usage, cost, timing, ids, session and user stay.
    Drop,
}

/// What a rule does to what it finds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedactionAction {
    /// Replaced with `[REDACTED:<what>]`.
    #[default]
    Mask,
    /// Replaced with a keyed hash (`[HASH:<16 hex digits>]`), the same for the same text, so
    /// traces can still be grouped by it.
    Hash,
    /// The attribute is removed.
    Drop,
}

impl RedactionAction {
    pub fn as_str(self) -> &'static str {
        match self {
            RedactionAction::Mask => "mask",
            RedactionAction::Hash => "hash",
            RedactionAction::Drop => "drop",
        }
    }
}

/// One rule: detectors or regular expressions found in text values, or attribute keys.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedactionRule {
    /// Built-in detectors (`email`, `credit_card`, `phone`, `ip`, `iban`, `bearer_token`,
    /// `api_key`) or `re:<regex>`.
    pub patterns: Vec<String>,
    /// Attribute keys (`*` and `?` globs) whose whole values the rule takes, instead of patterns.
    pub keys: Vec<String>,
    pub action: RedactionAction,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedactionConfig {
    /// `keep`, or `drop`: remove prompt and completion content.
    pub content: ContentMode,
    pub rules: Vec<RedactionRule>,
    /// Captured request and response headers (`http.request.header.<name>`,
    /// `http.response.header.<name>`) always dropped.
    pub drop_headers: Vec<String>,
    /// Environment variable holding the key of `action = "hash"`.
    pub hash_key_env: String,
}

impl Default for RedactionConfig {
    fn default() -> Self {
        Self {
            content: ContentMode::Keep,
            rules: Vec::new(),
            drop_headers: DEFAULT_DROP_HEADERS.iter().map(|h| h.to_string()).collect(),
            hash_key_env: DEFAULT_HASH_KEY_ENV.to_string(),
        }
    }
}

impl RedactionConfig {
    /// Every problem with the section, prefixed with `at` (`redaction`, or a tenant's).
    pub fn check(&self, at: &str, errors: &mut Vec<String>) {
        for (i, rule) in self.rules.iter().enumerate() {
            let here = format!("{at}.rules[{i}]");
            match (rule.patterns.is_empty(), rule.keys.is_empty()) {
                (true, true) => errors.push(format!("{here}: give patterns or keys")),
                (false, false) => {
                    errors.push(format!("{here}: patterns and keys are separate rules"))
                }
                _ => {}
            }
            for pattern in &rule.patterns {
                match pattern.strip_prefix(REGEX_PREFIX) {
                    Some(re) => {
                        if let Err(e) = regex::Regex::new(re) {
                            errors.push(format!("{here}: pattern '{pattern}': {e}"));
                        }
                    }
                    None if !DETECTOR_NAMES.contains(&pattern.as_str()) => errors.push(format!(
                        "{here}: unknown detector '{pattern}' (one of {}, or re:<regex>)",
                        DETECTOR_NAMES.join(", ")
                    )),
                    None => {}
                }
            }
            if rule.keys.iter().any(|k| k.is_empty()) {
                errors.push(format!("{here}: an empty key"));
            }
            if rule.action == RedactionAction::Hash
                && std::env::var(&self.hash_key_env).map_or(true, |k| k.is_empty())
            {
                errors.push(format!(
                    "{here}: action \"hash\" needs a key in ${} (stable across restarts, so \
                     hashes can still be grouped)",
                    self.hash_key_env
                ));
            }
        }
    }
}
