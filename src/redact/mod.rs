//! Redaction at ingest (`[redaction]`): personal data and secrets are removed from a request's
//! spans before it is mapped, spooled or sent anywhere, so what is redacted is never written.
//!
//! Spans are forwarded as received unless a rule changes them, so each span is looked at first
//! without decoding: its attribute keys (noted when it was read) against the keys rules drop or
//! take whole, and its encoded bytes against one pass of every text rule's expression. Only spans
//! where one matches are decoded, redacted value by value (attributes, events' attributes, links'
//! attributes, the status message) and read again.
//! Resource attributes are redacted on the decoded resource each request carries.

mod detectors;
mod rules;

use std::collections::HashMap;
use std::sync::Arc;

use opentelemetry_proto::tonic::trace::v1::Span;
use regex::bytes::RegexSet;

use crate::config::{Config, ContentMode, RedactionConfig};
use crate::otlp::{AttributeAt, ResourceSpansView, SpanView};

pub use detectors::Detector;
pub use rules::{CONTENT_EVENTS, CONTENT_KEYS, Counted, RuleSet, is_content_key};

/// The redaction of one set of rules: the global ones, or a tenant's with the global ones.
#[derive(Debug)]
pub struct Redactor {
    rules: RuleSet,
    /// Expressions over a span's encoded bytes (`RuleSet::prefilter_patterns`); None when there
    /// are none.
    prefilter: Option<RegexSet>,
    max_depth: usize,
}

impl Redactor {
    fn new(rules: RuleSet, max_depth: usize) -> Self {
        let patterns = rules.prefilter_patterns();
        let prefilter = (!patterns.is_empty())
            .then(|| RegexSet::new(patterns).ok())
            .flatten();
        Self {
            rules,
            prefilter,
            max_depth,
        }
    }

    /// Whether a span may hold something a rule changes: a key it takes (found without
    /// decoding), or a match of the prefilter in its bytes.
    fn may_change(&self, view: &SpanView, attributes: &[AttributeAt]) -> bool {
        view.any_attribute_key(attributes, |key| self.rules.takes_key(key))
            || self
                .prefilter
                .as_ref()
                .is_some_and(|p| p.is_match(&view.forwarded()))
    }

    /// Redacts a request's resources and spans in place. Returns how many spans changed.
    pub fn apply(&self, resource_spans: &mut [ResourceSpansView]) -> usize {
        if self.rules.is_empty() {
            return 0;
        }
        let mut counted = Vec::new();
        let mut changed = 0;
        for rs in resource_spans.iter_mut() {
            let resource_changed = rs
                .resource
                .as_mut()
                .is_some_and(|r| self.rules.attributes(&mut r.attributes, &mut counted));
            if resource_changed && let Some(resource) = rs.resource.take() {
                rs.replace_resource(resource);
            }
            for ss in rs.scope_spans.iter_mut() {
                for index in 0..ss.spans.len() {
                    let view = &ss.spans[index];
                    if !self.may_change(view, &ss.attributes) {
                        continue;
                    }
                    let Ok(mut span) = view.decode() else {
                        continue;
                    };
                    if self.span(&mut span, &mut counted)
                        && ss.replace_span(index, &span, self.max_depth).is_ok()
                    {
                        changed += 1;
                    }
                }
            }
        }
        count(counted);
        changed
    }

    /// Redacts one decoded span; whether anything changed.
    pub fn span(&self, span: &mut Span, counted: &mut Vec<Counted>) -> bool {
        let mut changed = self.rules.attributes(&mut span.attributes, counted);
        if self.rules.content_drop() {
            let before = span.events.len();
            span.events
                .retain(|e| !CONTENT_EVENTS.contains(&e.name.as_str()));
            let removed = before - span.events.len();
            counted.extend(std::iter::repeat_n(("content", "drop"), removed));
            changed |= removed > 0;
        }
        for event in &mut span.events {
            changed |= self.rules.attributes(&mut event.attributes, counted);
        }
        for link in &mut span.links {
            changed |= self.rules.attributes(&mut link.attributes, counted);
        }
        if let Some(status) = span.status.as_mut() {
            changed |= self.rules.free_text(&mut status.message, counted);
        }
        changed
    }
}

impl Redactor {
    /// Applies the text rules to free text (feedback's rationale, metadata, source id).
    pub fn text(&self, text: &mut String) -> bool {
        let mut counted = Vec::new();
        let changed = self.rules.free_text(text, &mut counted);
        count(counted);
        changed
    }

    /// Applies the text rules to every string in a JSON value (feedback's value).
    pub fn json(&self, value: &mut serde_json::Value) -> bool {
        match value {
            serde_json::Value::String(s) => self.text(s),
            serde_json::Value::Array(items) => items
                .iter_mut()
                .fold(false, |changed, v| self.json(v) | changed),
            serde_json::Value::Object(map) => map
                .values_mut()
                .fold(false, |changed, v| self.json(v) | changed),
            _ => false,
        }
    }
}

fn count(counted: Vec<Counted>) {
    for (rule, action) in counted {
        metrics::counter!("gateway_redactions_total", "rule" => rule, "action" => action)
            .increment(1);
    }
}

/// The gateway's redactors: the global one, and one per tenant with rules of its own.
#[derive(Debug, Clone)]
pub struct Redactors {
    global: Arc<Redactor>,
    tenants: HashMap<String, Arc<Redactor>>,
}

impl Redactors {
    /// Compiles the validated configuration (`Config::validate` checked the rules and that a
    /// hash key is set where a rule hashes).
    pub fn new(cfg: &Config) -> Self {
        let max_depth = cfg.receiver.max_nesting_depth;
        let global = &cfg.redaction;
        let compile = |own: Option<&RedactionConfig>| {
            let mut rules = global.rules.clone();
            let mut content = global.content;
            let mut drop_headers = global.drop_headers.clone();
            if let Some(own) = own {
                rules.extend(own.rules.iter().cloned());
                if own.content == ContentMode::Drop {
                    content = ContentMode::Drop;
                }
                drop_headers.extend(own.drop_headers.iter().cloned());
            }
            let key_env = own.map_or(&global.hash_key_env, |o| &o.hash_key_env);
            let hash_key = std::env::var(key_env)
                .ok()
                .or_else(|| std::env::var(&global.hash_key_env).ok())
                .filter(|k| !k.is_empty())
                .map(String::into_bytes);
            Arc::new(Redactor::new(
                RuleSet::new(
                    &rules,
                    content == ContentMode::Drop,
                    &drop_headers,
                    hash_key,
                ),
                max_depth,
            ))
        };
        Self {
            global: compile(None),
            tenants: cfg
                .tenants
                .iter()
                .filter_map(|t| Some((t.name.clone(), compile(Some(t.redaction.as_ref()?)))))
                .collect(),
        }
    }

    /// The redactor for a request of `tenant` (None: an open gateway's).
    pub fn of(&self, tenant: Option<&str>) -> &Redactor {
        tenant
            .and_then(|t| self.tenants.get(t))
            .unwrap_or(&self.global)
    }
}

#[cfg(test)]
mod tests;
