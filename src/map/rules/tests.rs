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
    let set = KeySet::new(["user.id", "session.id", "user.id", "enduser.id", ""].map(String::from));
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
