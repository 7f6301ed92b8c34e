//! Redaction end to end: a trace full of personal data and secrets lands in a real MLflow
//! without them, and none of it is ever on disk (the spool, uncompressed, is searched byte by
//! byte while it holds the trace).

mod support;

use std::path::Path;
use std::time::Duration;

use mlflow_otlp_gateway::config::{
    ContentMode, DETECTOR_NAMES, RedactionAction, RedactionRule, SpoolCompression,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::Event;
use support::*;

/// What the trace carries; none of it, nor a piece of it (the last), may be written anywhere.
const PERSONAL: [&str; 9] = [
    "jane.roe@example.com",
    "4111 1111 1111 1111",
    "+14155552671",
    "203.0.113.77",
    "DE89 3704 0044 0532 0130 00",
    "sk-proj-abcdefghijklmnopqrstuvwxyz012345",
    "Bearer abcdefghijklmnopqrstuvwxyz",
    "session-cookie-value-42",
    "0532 0130",
];

fn every_byte_under(dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).expect("data dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            all.extend(every_byte_under(&path));
        } else {
            all.extend(std::fs::read(&path).unwrap_or_default());
        }
    }
    all
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

fn redaction(cfg: &mut mlflow_otlp_gateway::config::Config) {
    cfg.spool.compression = SpoolCompression::None;
    cfg.redaction.rules = vec![RedactionRule {
        patterns: DETECTOR_NAMES.map(String::from).to_vec(),
        keys: vec![],
        action: RedactionAction::Mask,
    }];
}

#[tokio::test]
async fn personal_data_never_reaches_the_disk_or_mlflow() {
    let mlflow = Mlflow::new(shared_mlflow());
    let exp = mlflow.create_experiment("redaction").await;
    let data = tempfile::tempdir().expect("tempdir");
    let data_dir = data.path().to_owned();

    // MLflow unreachable first: the trace stays in the spool, where it is searched.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let gw = gateway(&closed, &exp, |cfg| {
        cfg.data_dir = Some(data_dir.clone());
        redaction(cfg);
    })
    .await;
    let trace_id = random_trace_id();
    let root = SpanSpec::root(trace_id, "POST /chat", now_nanos() - 2_000_000_000, 300).with(vec![
        header("authorization", PERSONAL[6]),
        header("cookie", PERSONAL[7]),
        header("x-request-id", "redaction-req-1"),
        s("user.id", PERSONAL[0]),
        s("client.address", PERSONAL[3]),
        s(
            "input.value",
            &format!("My card is {} and my phone {}", PERSONAL[1], PERSONAL[2]),
        ),
    ]);
    let mut llm = SpanSpec::child(&root, "chat gpt-4o", 10, 200)
        .with(vec![
            s("gen_ai.operation.name", "chat"),
            s(
                "gen_ai.input.messages",
                &serde_json::json!([{"role": "user", "content":
                    format!("pay to {} with key {}", PERSONAL[4], PERSONAL[5])}])
                .to_string(),
            ),
            KeyValue {
                key: "gen_ai.usage.input_tokens".into(),
                value: Some(AnyValue {
                    value: Some(Value::IntValue(17)),
                }),
                ..Default::default()
            },
        ])
        .build();
    llm.events.push(Event {
        name: "exception".into(),
        time_unix_nano: llm.start_time_unix_nano,
        attributes: vec![s(
            "exception.message",
            &format!("no account for {}", PERSONAL[0]),
        )],
        ..Default::default()
    });
    let mut resource = service_resource("redaction-app");
    resource.push(s("owner", PERSONAL[0]));
    let r = post_protobuf(
        gw.otlp_http_addr,
        &request(resource, vec![root.build(), llm]),
    )
    .await;
    assert_eq!(r.status(), 200);

    let on_disk = every_byte_under(&data_dir);
    assert!(
        contains(&on_disk, "[REDACTED:email]") && contains(&on_disk, "POST /chat"),
        "the spool holds the trace, uncompressed"
    );
    for secret in PERSONAL {
        assert!(!contains(&on_disk, secret), "{secret} is on disk");
    }
    gw.shutdown().await;

    // MLflow back: the spooled trace is delivered.
    let gw = gateway(&mlflow.url, &exp, |cfg| {
        cfg.data_dir = Some(data_dir.clone());
        redaction(cfg);
    })
    .await;
    let tr = tr_id(&trace_id);
    let info = mlflow
        .wait_trace(&tr, "its TraceInfo", |i| i["state"] == "OK")
        .await;
    mlflow.wait_spans(&tr, 2).await;
    let full = mlflow.trace(&tr).await.expect("trace");
    let text = format!("{info}{full}");
    for secret in PERSONAL {
        assert!(!text.contains(secret), "{secret} reached MLflow: {text}");
    }
    assert!(text.contains("[REDACTED:email]"), "{text}");
    for marker in ["credit_card", "phone", "ip", "iban", "api_key"] {
        assert!(
            text.contains(&format!("[REDACTED:{marker}]")),
            "{marker}: {text}"
        );
    }
    assert_eq!(
        info["client_request_id"], "redaction-req-1",
        "other headers stay"
    );
    let usage: serde_json::Value = serde_json::from_str(
        info["trace_metadata"]["mlflow.trace.tokenUsage"]
            .as_str()
            .unwrap_or("{}"),
    )
    .expect("usage");
    assert_eq!(usage["input_tokens"], 17);
    gw.shutdown().await;
    for secret in PERSONAL {
        assert!(!contains(&every_byte_under(&data_dir), secret));
    }
}

/// `content = "drop"`: prompts and completions are gone, model, usage and ids stay.
#[tokio::test]
async fn content_drop_keeps_usage_model_and_ids() {
    let mlflow = Mlflow::new(shared_mlflow());
    let exp = mlflow.create_experiment("redaction-content").await;
    let gw = gateway(&mlflow.url, &exp, |cfg| {
        cfg.redaction.content = ContentMode::Drop;
    })
    .await;
    let trace_id = random_trace_id();
    let root = SpanSpec::root(trace_id, "agent", now_nanos() - 2_000_000_000, 300).with(vec![
        s("input.value", "a private question"),
        s("output.value", "a private answer"),
        s("session.id", "content-session"),
    ]);
    let llm = SpanSpec::child(&root, "chat", 10, 200).with(vec![
        s("gen_ai.operation.name", "chat"),
        s("gen_ai.request.model", "gpt-4o-mini"),
        s(
            "gen_ai.input.messages",
            r#"[{"role":"user","content":"a private question"}]"#,
        ),
        s(
            "gen_ai.output.messages",
            r#"[{"role":"assistant","content":"a private answer"}]"#,
        ),
        KeyValue {
            key: "gen_ai.usage.output_tokens".into(),
            value: Some(AnyValue {
                value: Some(Value::IntValue(9)),
            }),
            ..Default::default()
        },
    ]);
    let r = post_protobuf(
        gw.otlp_http_addr,
        &request(
            service_resource("content-app"),
            vec![llm.build(), root.build()],
        ),
    )
    .await;
    assert_eq!(r.status(), 200);
    let tr = tr_id(&trace_id);
    let info = mlflow
        .wait_trace(&tr, "its token usage", |i| {
            i["trace_metadata"]["mlflow.trace.tokenUsage"].is_string()
        })
        .await;
    mlflow.wait_spans(&tr, 2).await;
    let full = mlflow.trace(&tr).await.expect("trace");
    let text = format!("{info}{full}");
    assert!(!text.contains("private"), "{text}");
    assert!(text.contains("gpt-4o-mini"));
    assert_eq!(
        info["trace_metadata"]["mlflow.trace.session"],
        "content-session"
    );
    assert_eq!(info["trace_metadata"]["mlflow.traceInputs"], "");
    tokio::time::sleep(Duration::from_millis(10)).await;
    gw.shutdown().await;
}
