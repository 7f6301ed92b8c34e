//! Compiled redaction rules and what they do to one value: text searched for detectors and
//! regular expressions, attributes taken whole by key, GenAI content and captured headers
//! dropped.

use std::ops::Range;

use hmac::{Hmac, Mac};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use regex::Regex;
use sha2::Sha256;

use super::detectors::{Compiled, Detector};
use crate::config::{REGEX_PREFIX, RedactionAction, RedactionRule};
use crate::vocab::glob_matches;

/// Attributes holding prompt and completion content (`content = "drop"`); a trailing `*` takes
/// every key with that prefix.
pub const CONTENT_KEYS: [&str; 13] = [
    "gen_ai.input.messages",
    "gen_ai.output.messages",
    "gen_ai.system_instructions",
    "gen_ai.prompt*",
    "gen_ai.completion*",
    "input.value",
    "output.value",
    "llm.input_messages.*",
    "llm.output_messages.*",
    "traceloop.entity.input",
    "traceloop.entity.output",
    "mlflow.spanInputs",
    "mlflow.spanOutputs",
];
/// Span events that carry GenAI messages (the semantic conventions' event forms, and Spring
/// AI's).
pub const CONTENT_EVENTS: [&str; 8] = [
    "gen_ai.system.message",
    "gen_ai.user.message",
    "gen_ai.assistant.message",
    "gen_ai.tool.message",
    "gen_ai.choice",
    "gen_ai.content.prompt",
    "gen_ai.content.completion",
    "gen_ai.client.inference.operation.details",
];
const HEADER_PREFIXES: [&str; 2] = ["http.request.header.", "http.response.header."];

/// One thing a rule looks for in text.
#[derive(Debug, Clone)]
enum Finder {
    Detector(Compiled),
    Regex(Regex),
}

impl Finder {
    fn find(&self, text: &str) -> Vec<Range<usize>> {
        match self {
            Finder::Detector(d) => d.find(text),
            Finder::Regex(r) => r.find_iter(text).map(|m| m.range()).collect(),
        }
    }

    /// The `rule` label of its redactions.
    fn label(&self) -> &'static str {
        match self {
            Finder::Detector(d) => d.detector.name(),
            Finder::Regex(_) => "regex",
        }
    }

    /// The expression the prefilter looks for.
    fn pattern(&self) -> String {
        match self {
            Finder::Detector(d) => d.pattern().to_string(),
            Finder::Regex(r) => r.as_str().to_string(),
        }
    }
}

#[derive(Debug, Clone)]
enum Matcher {
    Text(Vec<Finder>),
    Keys(Vec<String>),
}

#[derive(Debug, Clone)]
struct Rule {
    matcher: Matcher,
    action: RedactionAction,
}

/// What became of a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Kept,
    Changed,
    Dropped,
}

/// One redaction, for `gateway_redactions_total{rule, action}`.
pub type Counted = (&'static str, &'static str);

/// Rules compiled for use: the global ones, with a tenant's added.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    rules: Vec<Rule>,
    content_drop: bool,
    drop_headers: Vec<String>,
    hash_key: Option<Vec<u8>>,
}

impl RuleSet {
    /// Compiles validated rules (`RedactionConfig::check` has seen them).
    pub fn new(
        rules: &[RedactionRule],
        content_drop: bool,
        drop_headers: &[String],
        hash_key: Option<Vec<u8>>,
    ) -> Self {
        let rules = rules
            .iter()
            .map(|r| Rule {
                matcher: if r.keys.is_empty() {
                    Matcher::Text(r.patterns.iter().filter_map(|p| finder(p)).collect())
                } else {
                    Matcher::Keys(r.keys.clone())
                },
                action: r.action,
            })
            .collect();
        Self {
            rules,
            content_drop,
            drop_headers: drop_headers
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            hash_key,
        }
    }

    /// Whether it does anything at all.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && !self.content_drop && self.drop_headers.is_empty()
    }

    pub fn content_drop(&self) -> bool {
        self.content_drop
    }

    /// Expressions of which one occurs in the encoded bytes of any span a rule would change,
    /// beside what `takes_key` finds among its attribute keys: the text finders, key rules' globs
    /// (for event and link attributes), GenAI event names with `content = "drop"`.
    pub fn prefilter_patterns(&self) -> Vec<String> {
        let mut out = Vec::new();
        for rule in &self.rules {
            match &rule.matcher {
                Matcher::Text(finders) => out.extend(finders.iter().map(Finder::pattern)),
                Matcher::Keys(keys) => out.extend(keys.iter().map(|k| glob_regex(k))),
            }
        }
        if self.content_drop {
            out.push(r"gen_ai\.".into());
        }
        out
    }

    /// Whether a span attribute with this key is dropped or taken whole whatever its value.
    pub fn takes_key(&self, key: &[u8]) -> bool {
        let Ok(key) = std::str::from_utf8(key) else {
            return false;
        };
        self.is_dropped_header(key)
            || (self.content_drop && is_content_key(key))
            || self.rules.iter().any(|r| {
                matches!(&r.matcher, Matcher::Keys(keys) if keys.iter().any(|g| glob_matches(g, key)))
            })
    }

    /// Applies every rule to one attribute list; dropped attributes are removed.
    pub fn attributes(&self, attrs: &mut Vec<KeyValue>, counted: &mut Vec<Counted>) -> bool {
        let mut changed = false;
        attrs.retain_mut(|kv| match self.attribute(kv, counted) {
            Outcome::Kept => true,
            Outcome::Changed => {
                changed = true;
                true
            }
            Outcome::Dropped => {
                changed = true;
                false
            }
        });
        changed
    }

    fn attribute(&self, kv: &mut KeyValue, counted: &mut Vec<Counted>) -> Outcome {
        let key = kv.key.as_str();
        if self.is_dropped_header(key) {
            counted.push(("header", "drop"));
            return Outcome::Dropped;
        }
        if self.content_drop && is_content_key(key) {
            counted.push(("content", "drop"));
            return Outcome::Dropped;
        }
        let Some(value) = kv.value.as_mut() else {
            return Outcome::Kept;
        };
        let mut outcome = Outcome::Kept;
        for rule in &self.rules {
            let step = match &rule.matcher {
                Matcher::Keys(keys) if keys.iter().any(|g| glob_matches(g, key)) => {
                    counted.push(("keys", rule.action.as_str()));
                    self.whole(value, rule.action)
                }
                Matcher::Keys(_) => Outcome::Kept,
                Matcher::Text(finders) => self.value(value, finders, rule.action, counted),
            };
            match step {
                Outcome::Dropped => return Outcome::Dropped,
                Outcome::Changed => outcome = Outcome::Changed,
                Outcome::Kept => {}
            }
        }
        outcome
    }

    fn is_dropped_header(&self, key: &str) -> bool {
        if self.drop_headers.is_empty() {
            return false;
        }
        // Header names in any case, and with `_` for `-` (both spellings are captured); compared
        // without a copy, since this is asked for every attribute of every span.
        let same = |wanted: &str, name: &str| {
            wanted.len() == name.len()
                && wanted
                    .bytes()
                    .zip(name.bytes())
                    .all(|(w, n)| w == n.to_ascii_lowercase() || (w == b'-' && n == b'_'))
        };
        HEADER_PREFIXES.iter().any(|p| {
            key.strip_prefix(p)
                .is_some_and(|name| self.drop_headers.iter().any(|h| same(h, name)))
        })
    }

    /// A value taken whole by a key rule.
    fn whole(&self, value: &mut AnyValue, action: RedactionAction) -> Outcome {
        let text = match value.value.as_ref() {
            Some(Value::StringValue(s)) => s.clone(),
            Some(other) => serde_json::to_string(&AnyValue {
                value: Some(other.clone()),
            })
            .unwrap_or_default(),
            None => return Outcome::Kept,
        };
        match action {
            RedactionAction::Drop => Outcome::Dropped,
            RedactionAction::Mask => {
                value.value = Some(Value::StringValue("[REDACTED]".into()));
                Outcome::Changed
            }
            RedactionAction::Hash => {
                value.value = Some(Value::StringValue(self.hash(&text)));
                Outcome::Changed
            }
        }
    }

    /// Text inside a value (strings, and strings in arrays and kvlists) searched by `finders`.
    fn value(
        &self,
        value: &mut AnyValue,
        finders: &[Finder],
        action: RedactionAction,
        counted: &mut Vec<Counted>,
    ) -> Outcome {
        match value.value.as_mut() {
            Some(Value::StringValue(s)) => match self.text(s, finders, action, counted) {
                Some(None) => Outcome::Dropped,
                Some(Some(redacted)) => {
                    *s = redacted;
                    Outcome::Changed
                }
                None => Outcome::Kept,
            },
            Some(Value::ArrayValue(array)) => retain_redacted(
                &mut array.values,
                |v| Some(v),
                |v| self.value(v, finders, action, counted),
            ),
            Some(Value::KvlistValue(list)) => retain_redacted(
                &mut list.values,
                |kv| kv.value.as_mut(),
                |v| self.value(v, finders, action, counted),
            ),
            _ => Outcome::Kept,
        }
    }

    /// The text with what `finders` find replaced: None when nothing is found, Some(None) when
    /// the action drops it.
    fn text(
        &self,
        text: &str,
        finders: &[Finder],
        action: RedactionAction,
        counted: &mut Vec<Counted>,
    ) -> Option<Option<String>> {
        let mut candidates: Vec<(Range<usize>, &'static str)> = finders
            .iter()
            .flat_map(|f| f.find(text).into_iter().map(|r| (r, f.label())))
            .collect();
        // Where two overlap the longer wins (an IBAN holds what looks like a phone number), so
        // no part of the longer one is left in clear.
        candidates.sort_by_key(|(r, _)| std::cmp::Reverse(r.len()));
        let mut found: Vec<(Range<usize>, &'static str)> = Vec::new();
        for (range, label) in candidates {
            if !found
                .iter()
                .any(|(r, _)| r.start < range.end && range.start < r.end)
            {
                found.push((range, label));
            }
        }
        if found.is_empty() {
            return None;
        }
        counted.extend(found.iter().map(|(_, label)| (*label, action.as_str())));
        if action == RedactionAction::Drop {
            return Some(None);
        }
        found.sort_by_key(|(r, _)| r.start);
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for (range, label) in found {
            out.push_str(&text[at..range.start]);
            match action {
                RedactionAction::Hash => out.push_str(&self.hash(&text[range.clone()])),
                _ => {
                    out.push_str("[REDACTED:");
                    out.push_str(label);
                    out.push(']');
                }
            }
            at = range.end;
        }
        out.push_str(&text[at..]);
        Some(Some(out))
    }

    /// Applies the text rules to a free text (a status message).
    pub fn free_text(&self, text: &mut String, counted: &mut Vec<Counted>) -> bool {
        let mut changed = false;
        for rule in &self.rules {
            if let Matcher::Text(finders) = &rule.matcher {
                match self.text(text, finders, rule.action, counted) {
                    Some(Some(redacted)) => *text = redacted,
                    Some(None) => *text = "[REDACTED]".into(),
                    None => continue,
                }
                changed = true;
            }
        }
        changed
    }

    /// `[HASH:<16 hex digits>]`: HMAC-SHA-256 under the configured key, its first 8 bytes.
    fn hash(&self, text: &str) -> String {
        let key = self.hash_key.as_deref().unwrap_or_default();
        let digest = match <Hmac<Sha256> as Mac>::new_from_slice(key) {
            Ok(mut mac) => {
                mac.update(text.as_bytes());
                mac.finalize().into_bytes()
            }
            // HMAC takes keys of any length.
            Err(_) => return "[REDACTED]".into(),
        };
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("[HASH:{hex}]")
    }
}

/// Redacts the values of `items` (reached by `value_of`), removing those dropped; whether
/// anything changed.
fn retain_redacted<T>(
    items: &mut Vec<T>,
    mut value_of: impl FnMut(&mut T) -> Option<&mut AnyValue>,
    mut redact: impl FnMut(&mut AnyValue) -> Outcome,
) -> Outcome {
    let mut outcome = Outcome::Kept;
    items.retain_mut(|item| {
        let step = value_of(item).map_or(Outcome::Kept, &mut redact);
        if step != Outcome::Kept {
            outcome = Outcome::Changed;
        }
        step != Outcome::Dropped
    });
    outcome
}

fn finder(pattern: &str) -> Option<Finder> {
    match pattern.strip_prefix(REGEX_PREFIX) {
        Some(re) => Regex::new(re).ok().map(Finder::Regex),
        None => Detector::from_name(pattern)
            .and_then(Compiled::new)
            .map(Finder::Detector),
    }
}

/// Whether `key` holds prompt or completion content.
pub fn is_content_key(key: &str) -> bool {
    CONTENT_KEYS.iter().any(|k| match k.strip_suffix('*') {
        Some(prefix) => key.starts_with(prefix),
        None => key == *k,
    })
}

/// A key glob (`*`, `?`) as a regular expression.
fn glob_regex(glob: &str) -> String {
    let mut out = String::new();
    for c in glob.chars() {
        match c {
            '*' => out.push_str(".*"),
            '?' => out.push('.'),
            c => out.push_str(&regex::escape(&c.to_string())),
        }
    }
    out
}
