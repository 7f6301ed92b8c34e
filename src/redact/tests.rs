use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, KeyValue, KeyValueList};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::Event;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Status};
use prost::Message;

use super::detectors::{Compiled, Detector};
use super::*;
use crate::config::{RedactionAction, RedactionRule};

fn kv_value(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn kv_str(key: &str, value: &str) -> KeyValue {
    kv_value(key, Value::StringValue(value.into()))
}

fn found(detector: Detector, text: &str) -> Vec<String> {
    Compiled::new(detector)
        .expect("built-in pattern compiles")
        .find(text)
        .into_iter()
        .map(|r| text[r].to_string())
        .collect()
}

#[test]
fn every_built_in_pattern_compiles() {
    for d in Detector::ALL {
        assert!(Compiled::new(d).is_some(), "{}", d.name());
        assert_eq!(Detector::from_name(d.name()), Some(d));
    }
    assert_eq!(
        crate::config::DETECTOR_NAMES.to_vec(),
        Detector::ALL.map(Detector::name).to_vec()
    );
}

#[test]
fn emails() {
    assert_eq!(
        found(
            Detector::Email,
            "write to Jane.Doe+ai@mail.example.co.uk today"
        ),
        ["Jane.Doe+ai@mail.example.co.uk"]
    );
    assert!(found(Detector::Email, "user@localhost, @handle, a@b").is_empty());
}

#[test]
fn credit_cards_need_a_valid_luhn_digit() {
    // Visa and Mastercard test numbers, with and without separators.
    assert_eq!(
        found(Detector::CreditCard, "card 4111 1111 1111 1111 exp"),
        ["4111 1111 1111 1111"]
    );
    assert_eq!(
        found(Detector::CreditCard, "5500-0000-0000-0004"),
        ["5500-0000-0000-0004"]
    );
    assert_eq!(
        found(Detector::CreditCard, "4012888888881881"),
        ["4012888888881881"]
    );
    // One digit off: not a card; order numbers and timestamps neither.
    assert!(found(Detector::CreditCard, "4111 1111 1111 1112").is_empty());
    assert!(found(Detector::CreditCard, "order 1234567890123").is_empty());
    assert!(found(Detector::CreditCard, "ts 1764177728999").is_empty());
}

#[test]
fn phones_in_e164_and_national_forms() {
    assert_eq!(
        found(Detector::Phone, "call +14155552671 now"),
        ["+14155552671"]
    );
    assert_eq!(
        found(Detector::Phone, "or +44 20 7946 0958"),
        ["+44 20 7946 0958"]
    );
    assert_eq!(found(Detector::Phone, "(415) 555-2671"), ["(415) 555-2671"]);
    assert_eq!(
        found(Detector::Phone, "tel 030 1234 5678"),
        ["030 1234 5678"]
    );
    assert!(found(Detector::Phone, "version 1.2.3, 42 tokens, 2026-12-05").is_empty());
}

#[test]
fn ip_addresses_that_parse() {
    assert_eq!(
        found(Detector::Ip, "from 203.0.113.7 via 2001:db8::1"),
        ["203.0.113.7", "2001:db8::1"]
    );
    assert!(found(Detector::Ip, "999.1.1.1 and 12:30:45").is_empty());
}

#[test]
fn ibans_need_their_check_digits() {
    assert_eq!(
        found(Detector::Iban, "IBAN DE89 3704 0044 0532 0130 00."),
        ["DE89 3704 0044 0532 0130 00"]
    );
    assert_eq!(
        found(Detector::Iban, "GB82WEST12345698765432"),
        ["GB82WEST12345698765432"]
    );
    assert!(found(Detector::Iban, "DE88 3704 0044 0532 0130 00").is_empty());
}

#[test]
fn bearer_tokens_and_api_keys() {
    assert_eq!(
        found(
            Detector::BearerToken,
            "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.abc"
        ),
        ["Bearer eyJhbGciOiJIUzI1NiJ9.abc"]
    );
    for key in [
        "sk-proj-abcdefghijklmnopqrstuvwxyz012345",
        "AKIAIOSFODNN7EXAMPLE",
        "ghp_0123456789abcdefghijklmnopqrstuvwxyzAB",
        "xoxb-123456789012-abcdefABCDEF",
    ] {
        assert_eq!(
            found(Detector::ApiKey, &format!("key={key};")),
            [key],
            "{key}"
        );
    }
    assert!(found(Detector::ApiKey, "skip the sk- prefix, task-force").is_empty());
}

fn rule_set(rules: Vec<RedactionRule>, content_drop: bool) -> RuleSet {
    RuleSet::new(
        &rules,
        content_drop,
        &["authorization".into(), "cookie".into()],
        Some(b"test-key".to_vec()),
    )
}

fn rule(patterns: &[&str], action: RedactionAction) -> RedactionRule {
    RedactionRule {
        patterns: patterns.iter().map(|p| p.to_string()).collect(),
        keys: vec![],
        action,
    }
}

fn string(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            _ => None,
        }
    })
}

#[test]
fn mask_hash_and_drop() {
    let mut counted = Vec::new();
    let set = rule_set(vec![rule(&["email"], RedactionAction::Mask)], false);
    let mut attrs = vec![kv_str("note", "mail a@example.com or b@example.org")];
    assert!(set.attributes(&mut attrs, &mut counted));
    assert_eq!(
        string(&attrs, "note").as_deref(),
        Some("mail [REDACTED:email] or [REDACTED:email]")
    );
    assert_eq!(counted, [("email", "mask"), ("email", "mask")]);

    let set = rule_set(vec![rule(&["email"], RedactionAction::Hash)], false);
    let mut a = vec![kv_str("user", "a@example.com")];
    let mut b = vec![kv_str("user", "a@example.com")];
    let mut c = vec![kv_str("user", "c@example.com")];
    for attrs in [&mut a, &mut b, &mut c] {
        set.attributes(attrs, &mut counted);
    }
    let hashed = string(&a, "user").unwrap_or_default();
    assert!(
        hashed.starts_with("[HASH:") && hashed.len() == 23,
        "{hashed}"
    );
    assert_eq!(string(&b, "user"), Some(hashed.clone()), "stable");
    assert_ne!(string(&c, "user"), Some(hashed), "keyed by the text");

    let set = rule_set(vec![rule(&["credit_card"], RedactionAction::Drop)], false);
    let mut attrs = vec![kv_str("card", "4111111111111111"), kv_str("other", "x")];
    set.attributes(&mut attrs, &mut counted);
    assert_eq!(attrs.len(), 1);
    assert_eq!(attrs[0].key, "other");
}

#[test]
fn strings_inside_arrays_kvlists_and_json_content() {
    let set = rule_set(
        vec![rule(&["email", "re:secret-\\d+"], RedactionAction::Mask)],
        false,
    );
    let nested = AnyValue {
        value: Some(Value::KvlistValue(KeyValueList {
            values: vec![kv_value(
                "list",
                Value::ArrayValue(ArrayValue {
                    values: vec![AnyValue {
                        value: Some(Value::StringValue("x@example.com".into())),
                    }],
                }),
            )],
        })),
    };
    let mut attrs = vec![
        KeyValue {
            key: "deep".into(),
            value: Some(nested),
            ..Default::default()
        },
        kv_str(
            "gen_ai.input.messages",
            r#"[{"role":"user","content":"I am x@example.com, code secret-42"}]"#,
        ),
    ];
    let mut counted = Vec::new();
    assert!(set.attributes(&mut attrs, &mut counted));
    let json = string(&attrs, "gen_ai.input.messages").unwrap_or_default();
    assert_eq!(
        json,
        r#"[{"role":"user","content":"I am [REDACTED:email], code [REDACTED:regex]"}]"#
    );
    assert!(
        serde_json::from_str::<serde_json::Value>(&json).is_ok(),
        "still JSON"
    );
    let text = format!("{:?}", attrs[0]);
    assert!(!text.contains("x@example.com"), "{text}");
}

#[test]
fn key_rules_take_whole_values() {
    let set = rule_set(
        vec![RedactionRule {
            patterns: vec![],
            keys: vec!["app.secret*".into()],
            action: RedactionAction::Mask,
        }],
        false,
    );
    let mut attrs = vec![kv_str("app.secret_token", "abc"), kv_str("app.name", "abc")];
    let mut counted = Vec::new();
    set.attributes(&mut attrs, &mut counted);
    assert_eq!(
        string(&attrs, "app.secret_token").as_deref(),
        Some("[REDACTED]")
    );
    assert_eq!(string(&attrs, "app.name").as_deref(), Some("abc"));
    assert_eq!(counted, [("keys", "mask")]);
}

#[test]
fn captured_credentials_are_dropped_whatever_the_rules() {
    let set = rule_set(vec![], false);
    let header = |name: &str| {
        kv_value(
            &format!("http.request.header.{name}"),
            Value::ArrayValue(ArrayValue {
                values: vec![AnyValue {
                    value: Some(Value::StringValue("v".into())),
                }],
            }),
        )
    };
    let mut attrs = vec![
        header("authorization"),
        header("Cookie"),
        header("x-request-id"),
    ];
    let mut counted = Vec::new();
    set.attributes(&mut attrs, &mut counted);
    let keys: Vec<_> = attrs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["http.request.header.x-request-id"]);
}

#[test]
fn content_drop_keeps_model_usage_and_ids() {
    let set = rule_set(vec![], true);
    let mut attrs = vec![
        kv_str("gen_ai.input.messages", "[]"),
        kv_str("gen_ai.prompt.0.content", "hi"),
        kv_str("llm.input_messages.0.message.content", "hi"),
        kv_str("input.value", "hi"),
        kv_str("mlflow.spanOutputs", "\"bye\""),
        kv_str("gen_ai.request.model", "gpt-4o"),
        kv_value("gen_ai.usage.input_tokens", Value::IntValue(3)),
        kv_str("session.id", "s"),
    ];
    let mut counted = Vec::new();
    set.attributes(&mut attrs, &mut counted);
    let keys: Vec<_> = attrs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "gen_ai.request.model",
            "gen_ai.usage.input_tokens",
            "session.id"
        ]
    );
}

fn redactor(rules: Vec<RedactionRule>, content_drop: bool) -> Redactor {
    Redactor::new(rule_set(rules, content_drop), 100)
}

#[test]
fn spans_events_and_status_messages_are_redacted_and_message_events_dropped() {
    let r = redactor(vec![rule(&["email"], RedactionAction::Mask)], true);
    let mut span = Span {
        attributes: vec![kv_str("user.email", "z@example.com")],
        events: vec![
            Event {
                name: "gen_ai.user.message".into(),
                ..Default::default()
            },
            Event {
                name: "exception".into(),
                attributes: vec![kv_str("exception.message", "no user z@example.com")],
                ..Default::default()
            },
        ],
        status: Some(Status {
            message: "failed for z@example.com".into(),
            code: 2,
        }),
        ..Default::default()
    };
    let mut counted = Vec::new();
    assert!(r.span(&mut span, &mut counted));
    let text = format!("{span:?}");
    assert!(!text.contains("z@example.com"), "{text}");
    assert_eq!(span.events.len(), 1);
    assert_eq!(
        span.status.map(|s| s.message).as_deref(),
        Some("failed for [REDACTED:email]")
    );
}

/// Through a whole request: only spans with a finding are rewritten, and what follows (the
/// mapping, the spool) reads the redacted values.
#[test]
fn a_request_is_redacted_before_anything_reads_it() {
    let r = redactor(vec![rule(&["email"], RedactionAction::Mask)], false);
    let span = |id: u8, attributes| opentelemetry_proto::tonic::trace::v1::Span {
        trace_id: vec![1; 16],
        span_id: vec![id; 8],
        name: format!("s{id}"),
        start_time_unix_nano: 1,
        end_time_unix_nano: 2,
        attributes,
        ..Default::default()
    };
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv_str("owner", "ops@example.com")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![
                    span(1, vec![kv_str("user.id", "u@example.com")]),
                    span(2, vec![kv_str("plain", "nothing here")]),
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let body = Bytes::from(request.encode_to_vec());
    let mut views = crate::otlp::parse_request(&body, 100)
        .expect("valid")
        .resource_spans;
    let untouched = views[0].scope_spans[0].spans[1].forwarded().into_owned();
    assert_eq!(r.apply(&mut views), 1);
    let ss = &views[0].scope_spans[0];
    assert_eq!(
        ss.spans[1].forwarded().into_owned(),
        untouched,
        "copied as received"
    );
    let user = ss.spans[0].attributes_where(&ss.attributes, |k| k == b"user.id");
    assert_eq!(
        string(&user, "user.id").as_deref(),
        Some("[REDACTED:email]")
    );
    let forwarded = crate::otlp::encode_request(&views);
    let text = String::from_utf8_lossy(&forwarded);
    assert!(!text.contains("@example.com"), "{text}");
    assert!(text.contains("[REDACTED:email]"));
}

#[test]
fn nothing_configured_costs_nothing() {
    let r = Redactor::new(RuleSet::new(&[], false, &[], None), 100);
    assert!(r.prefilter.is_none());
    let headers_only = Redactor::new(rule_set(vec![], false), 100);
    assert!(headers_only.prefilter.is_none(), "header drops go by key");
}

#[test]
fn the_longer_of_overlapping_findings_wins() {
    let set = rule_set(vec![rule(&["phone", "iban"], RedactionAction::Mask)], false);
    let mut attrs = vec![kv_str("pay", "to DE89 3704 0044 0532 0130 00 today")];
    set.attributes(&mut attrs, &mut Vec::new());
    assert_eq!(
        string(&attrs, "pay").as_deref(),
        Some("to [REDACTED:iban] today")
    );
}

#[test]
fn a_tenant_s_rules_add_to_the_global_ones() {
    let toml = r#"
[[redaction.rules]]
patterns = ["email"]
[[tenants]]
name = "a"
tokens = ["token-a-0123456789"]
experiments = ["a-*"]
[tenants.redaction]
content = "drop"
[[tenants.redaction.rules]]
patterns = ["re:ticket-\\d+"]
[[tenants]]
name = "b"
tokens = ["token-b-0123456789"]
experiments = ["b-*"]
"#;
    let cfg =
        crate::config::Config::from_toml(toml, std::path::Path::new("x.toml")).expect("parses");
    cfg.validate().expect("valid");
    let redactors = Redactors::new(&cfg);
    let redact = |tenant: Option<&str>| {
        let mut attrs = vec![
            kv_str("note", "x@example.com ticket-7"),
            kv_str("input.value", "question"),
        ];
        redactors
            .of(tenant)
            .rules
            .attributes(&mut attrs, &mut Vec::new());
        attrs
            .iter()
            .map(|kv| format!("{}={}", kv.key, string(&attrs, &kv.key).unwrap_or_default()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        redact(Some("a")),
        ["note=[REDACTED:email] [REDACTED:regex]"]
    );
    assert_eq!(
        redact(Some("b")),
        ["note=[REDACTED:email] ticket-7", "input.value=question"]
    );
    assert_eq!(redact(None), redact(Some("b")));
}
