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

/// The built-in table (the seed document's metadata table plus the common SDK conventions).
const DEFAULT_RULES: &[(&str, &[&str], Option<&str>, bool)] = &[
    (
        "client_request_id",
        &[
            "mlflow.trace.client_request_id",
            "client_request_id",
            "request.id",
            "header:x-request-id",
        ],
        None,
        false,
    ),
    (
        "metadata:mlflow.trace.session",
        &[
            "mlflow.trace.session",
            "session.id",
            "gen_ai.conversation.id",
            "langfuse.session.id",
            "traceloop.association.properties.session_id",
            "header:x-session-id",
        ],
        None,
        true,
    ),
    (
        "metadata:mlflow.trace.user",
        &[
            "mlflow.trace.user",
            "user.id",
            "enduser.id",
            "langfuse.user.id",
            "traceloop.association.properties.user_id",
            "header:x-user-id",
        ],
        None,
        true,
    ),
    (
        "metadata:mlflow.source.type",
        &["mlflow.source.type", "deployment.environment.name"],
        Some(DEFAULT_SOURCE_TYPE),
        false,
    ),
    (
        "metadata:mlflow.source.name",
        &["service.name"],
        None,
        false,
    ),
    (
        "metadata:environment",
        &[
            "deployment.environment.name",
            "deployment.environment",
            "langfuse.environment",
        ],
        None,
        false,
    ),
    (
        "metadata:app_version",
        &["service.version", "langfuse.release"],
        None,
        false,
    ),
    (
        "metadata:deployment_id",
        &["k8s.deployment.name", "service.instance.id"],
        None,
        false,
    ),
    ("metadata:region", &["cloud.region"], None, false),
];

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
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

/// A set of attribute keys grouped by length: most keys a span carries are told apart by their
/// length alone, the rest by a comparison or two. It is asked once per attribute of every
/// span, where hashing each key (SipHash) was about 1 % of the gateway's CPU at 10k spans/s.
#[derive(Debug, Clone, Default)]
struct KeySet {
    by_len: Vec<Vec<String>>,
}

impl KeySet {
    fn new(keys: impl IntoIterator<Item = String>) -> Self {
        let mut set = Self::default();
        for key in keys {
            if set.contains(&key) {
                continue;
            }
            if set.by_len.len() <= key.len() {
                set.by_len.resize_with(key.len() + 1, Vec::new);
            }
            set.by_len[key.len()].push(key);
        }
        set
    }

    /// Takes bytes: span attribute keys are compared as they sit on the wire.
    fn contains(&self, key: impl AsRef<[u8]>) -> bool {
        let key = key.as_ref();
        self.by_len
            .get(key.len())
            .is_some_and(|same_len| same_len.iter().any(|k| k.as_bytes() == key))
    }
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
mod tests {
    use super::*;
    use crate::map::attrs::{kv_str, kv_value};
    use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, any_value::Value};

    fn table() -> MappingTable {
        MappingTable::new(&MappingConfig::default())
    }

    fn header(name: &str, value: &str) -> KeyValue {
        kv_value(
            &format!("{HEADER_ATTR_PREFIX}{name}"),
            Value::ArrayValue(ArrayValue {
                values: vec![AnyValue {
                    value: Some(Value::StringValue(value.into())),
                }],
            }),
        )
    }

    #[test]
    fn key_set_holds_exactly_its_keys() {
        let set =
            KeySet::new(["user.id", "session.id", "user.id", "enduser.id", ""].map(String::from));
        for key in ["user.id", "session.id", "enduser.id", ""] {
            assert!(set.contains(key), "{key}");
        }
        for key in [
            "user.ix",
            "session.i",
            "a-much-longer-key-than-any-in-the-set",
            "sessions.id",
        ] {
            assert!(!set.contains(key), "{key}");
        }
        assert!(!KeySet::default().contains("user.id"));
        let t = table();
        assert!(t.is_interesting("gen_ai.conversation.id"));
        assert!(t.is_interesting("http.request.header.x-request-id"));
        assert!(!t.is_interesting("gen_ai.operation.name"));
    }

    #[test]
    fn every_client_request_id_source_is_read() {
        let t = table();
        for (key, value) in [
            ("mlflow.trace.client_request_id", "a"),
            ("client_request_id", "b"),
            ("request.id", "c"),
        ] {
            let f = t.evaluate(&[kv_str(key, value)], &[], &CollectedAttrs::new());
            assert_eq!(f.client_request_id.as_deref(), Some(value), "{key}");
        }
        for name in ["x-request-id", "x_request_id"] {
            let f = t.evaluate(&[header(name, "h1")], &[], &CollectedAttrs::new());
            assert_eq!(f.client_request_id.as_deref(), Some("h1"), "{name}");
        }
    }

    #[test]
    fn source_order_decides_within_a_scope() {
        let f = table().evaluate(
            &[
                kv_str("request.id", "low"),
                kv_str("client_request_id", "high"),
            ],
            &[],
            &CollectedAttrs::new(),
        );
        assert_eq!(f.client_request_id.as_deref(), Some("high"));
    }

    #[test]
    fn root_beats_resource_beats_other_spans() {
        let t = table();
        let mut others = CollectedAttrs::new();
        others.insert("session.id".into(), "from-child".into());
        let resource = [kv_str("session.id", "from-resource")];
        let root = [kv_str("gen_ai.conversation.id", "from-root")];
        assert_eq!(
            t.evaluate(&root, &resource, &others).session(),
            Some("from-root")
        );
        assert_eq!(
            t.evaluate(&[], &resource, &others).session(),
            Some("from-resource")
        );
        assert_eq!(t.evaluate(&[], &[], &others).session(), Some("from-child"));
    }

    #[test]
    fn every_session_and_user_source_is_read_and_tagged() {
        let t = table();
        for key in [
            "mlflow.trace.session",
            "session.id",
            "gen_ai.conversation.id",
            "langfuse.session.id",
            "traceloop.association.properties.session_id",
        ] {
            let f = t.evaluate(&[kv_str(key, "s1")], &[], &CollectedAttrs::new());
            assert_eq!(f.session(), Some("s1"), "{key}");
            assert_eq!(f.tags.get(SESSION_KEY).map(String::as_str), Some("s1"));
        }
        for key in [
            "mlflow.trace.user",
            "user.id",
            "enduser.id",
            "langfuse.user.id",
            "traceloop.association.properties.user_id",
        ] {
            let f = t.evaluate(&[kv_str(key, "u1")], &[], &CollectedAttrs::new());
            assert_eq!(f.user(), Some("u1"), "{key}");
            assert_eq!(f.tags.get(USER_KEY).map(String::as_str), Some("u1"));
        }
        for name in ["x-session-id", "x_session_id"] {
            let f = t.evaluate(&[header(name, "hs")], &[], &CollectedAttrs::new());
            assert_eq!(f.session(), Some("hs"));
        }
        for name in ["x-user-id", "x_user_id"] {
            let f = t.evaluate(&[header(name, "hu")], &[], &CollectedAttrs::new());
            assert_eq!(f.user(), Some("hu"));
        }
    }

    #[test]
    fn environment_metadata_comes_from_resource_conventions() {
        let resource = [
            kv_str("service.name", "chat"),
            kv_str("service.version", "1.2.3"),
            kv_str("deployment.environment.name", "production"),
            kv_str("k8s.deployment.name", "chat-deploy"),
            kv_str("service.instance.id", "pod-1"),
            kv_str("cloud.region", "eu-west-1"),
        ];
        let f = table().evaluate(&[], &resource, &CollectedAttrs::new());
        let m = |k: &str| f.metadata.get(k).map(String::as_str);
        assert_eq!(m("mlflow.source.name"), Some("chat"));
        assert_eq!(m("mlflow.source.type"), Some("production"));
        assert_eq!(m("environment"), Some("production"));
        assert_eq!(m("app_version"), Some("1.2.3"));
        assert_eq!(m("deployment_id"), Some("chat-deploy"));
        assert_eq!(m("region"), Some("eu-west-1"));
    }

    #[test]
    fn fallbacks_and_defaults() {
        let t = table();
        let f = t.evaluate(
            &[],
            &[
                kv_str("deployment.environment", "staging"),
                kv_str("langfuse.release", "r7"),
                kv_str("service.instance.id", "pod-9"),
            ],
            &CollectedAttrs::new(),
        );
        assert_eq!(f.metadata["environment"], "staging");
        assert_eq!(f.metadata["app_version"], "r7");
        assert_eq!(f.metadata["deployment_id"], "pod-9");
        assert_eq!(f.metadata["mlflow.source.type"], DEFAULT_SOURCE_TYPE);
        let f = t.evaluate(
            &[kv_str("mlflow.source.type", "JOB")],
            &[kv_str("deployment.environment.name", "prod")],
            &CollectedAttrs::new(),
        );
        assert_eq!(f.metadata["mlflow.source.type"], "JOB");
        let f = t.evaluate(
            &[],
            &[kv_str("langfuse.environment", "dev")],
            &CollectedAttrs::new(),
        );
        assert_eq!(f.metadata["environment"], "dev");
    }

    #[test]
    fn prefixed_attributes_become_tags() {
        let others: CollectedAttrs = [
            (
                "mlflow.traceTag.stage".to_string(),
                "from-a-child".to_string(),
            ),
            (
                "mlflow.traceTag.route".to_string(),
                "child-loses".to_string(),
            ),
        ]
        .into();
        let f = table().evaluate(
            &[
                kv_str("mlflow.traceTag.team", "alpha"),
                kv_str("mlflow.trace.tag.route", "chat"),
                kv_str("mlflow.traceTag.bad!", "skipped"),
                // A blank value makes no tag and leaves the key to the next source.
                kv_str("mlflow.traceTag.owner", "  "),
            ],
            &[
                kv_str("mlflow.traceTag.team", "resource-loses"),
                kv_str("mlflow.traceTag.owner", "resource"),
            ],
            &others,
        );
        assert_eq!(f.tags["team"], "alpha");
        assert_eq!(f.tags["route"], "chat");
        assert_eq!(f.tags["owner"], "resource");
        assert_eq!(f.tags["stage"], "from-a-child");
        assert!(!f.tags.contains_key("bad!"));
    }

    #[test]
    fn configured_rules_replace_add_remove_and_statics_apply() {
        let cfg: MappingConfig = toml::from_str(
            r#"
            static_tags = { owner = "platform", team = "static-loses" }
            static_metadata = { tier = "gold" }
            [[rules]]
            target = "metadata:environment"
            sources = ["env"]
            [[rules]]
            target = "metadata:region"
            sources = []
            [[rules]]
            target = "tag:team"
            sources = ["team.name"]
            default = "unknown-team"
            "#,
        )
        .unwrap();
        let t = MappingTable::new(&cfg);
        let f = t.evaluate(
            &[kv_str("env", "qa"), kv_str("team.name", "beta")],
            &[
                kv_str("deployment.environment.name", "ignored"),
                kv_str("cloud.region", "ignored"),
            ],
            &CollectedAttrs::new(),
        );
        assert_eq!(f.metadata["environment"], "qa");
        assert!(!f.metadata.contains_key("region"));
        assert_eq!(f.tags["team"], "beta");
        assert_eq!(f.tags["owner"], "platform");
        assert_eq!(f.metadata["tier"], "gold");
        let f = t.evaluate(&[], &[], &CollectedAttrs::new());
        assert_eq!(f.tags["team"], "unknown-team");
    }

    #[test]
    fn without_defaults_only_configured_rules_apply() {
        let cfg: MappingConfig = toml::from_str(
            "use_defaults = false\n[[rules]]\ntarget = \"client_request_id\"\nsources = [\"my.req\"]\n",
        )
        .unwrap();
        let f = MappingTable::new(&cfg).evaluate(
            &[kv_str("my.req", "r1"), kv_str("session.id", "s")],
            &[],
            &CollectedAttrs::new(),
        );
        assert_eq!(f.client_request_id.as_deref(), Some("r1"));
        assert_eq!(f.session(), None);
    }

    #[test]
    fn values_are_fitted_to_mlflow_limits() {
        let f = table().evaluate(
            &[
                kv_str("client_request_id", &"r".repeat(80)),
                kv_str("session.id", &"s".repeat(300)),
                kv_str("mlflow.traceTag.big", &"t".repeat(5000)),
            ],
            &[],
            &CollectedAttrs::new(),
        );
        assert_eq!(f.client_request_id.as_ref().unwrap().len(), 50);
        assert_eq!(f.session().unwrap().len(), 250);
        assert_eq!(f.tags["big"].len(), 4096);
    }

    #[test]
    fn collect_keeps_first_value_of_interesting_keys_only() {
        let t = table();
        let mut c = CollectedAttrs::new();
        t.collect(
            &[kv_str("user.id", "first"), kv_str("http.method", "GET")],
            &mut c,
        );
        t.collect(&[kv_str("user.id", "second")], &mut c);
        assert_eq!(c.get("user.id").map(String::as_str), Some("first"));
        assert!(!c.contains_key("http.method"));
    }

    #[test]
    fn non_string_values_are_stringified() {
        let f = table().evaluate(
            &[kv_value("user.id", Value::IntValue(12345))],
            &[],
            &CollectedAttrs::new(),
        );
        assert_eq!(f.user(), Some("12345"));
    }

    #[test]
    fn bad_targets_are_reported() {
        assert!("client_request_id".parse::<Target>().is_ok());
        assert!("metadata:env".parse::<Target>().is_ok());
        assert!("tag:x".parse::<Target>().is_ok());
        assert!("label:x".parse::<Target>().is_err());
        assert!("tag:bad!".parse::<Target>().is_err());
        assert!("nothing".parse::<Target>().is_err());
    }
}
