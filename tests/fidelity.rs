//! Fidelity: a trace through the gateway reads in MLflow as one MLflow's SDK writes (span types
//! in `spans.type`, final span statuses, trace inputs and outputs, JSON-encoded values from the
//! SDK, a TraceInfo the SDK wrote left alone, traces without root finalized). Checked through a
//! real MLflow 3.17.2's REST API.

mod support;

use std::time::Duration;

use opentelemetry_proto::tonic::trace::v1::Status;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use serde_json::{Value as Json, json};
use support::*;

async fn setup(prefix: &str) -> (Mlflow, String) {
    let mlflow = Mlflow::new(shared_mlflow());
    let exp = mlflow.create_experiment(prefix).await;
    (mlflow, exp)
}

fn metadata<'a>(info: &'a Json, key: &str) -> &'a str {
    info["trace_metadata"][key].as_str().unwrap_or_default()
}

/// A span attribute as MLflow's GetTrace returns it (OTLP/JSON attribute list).
fn attribute<'a>(span: &'a Json, key: &str) -> Option<&'a str> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|kv| kv["key"] == key)?["value"]["string_value"]
        .as_str()
}

fn span_named<'a>(spans: &'a [Json], name: &str) -> &'a Json {
    spans
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no span {name} in {spans:#?}"))
}

/// Searches the experiment for traces with a span of this type (MLflow's `spans.type` column).
async fn traces_with_span_type(mlflow: &Mlflow, exp: &str, kind: &str) -> Vec<String> {
    mlflow
        .search(exp, &format!("span.type = '{kind}'"))
        .await
        .iter()
        .filter_map(|t| t["trace_id"].as_str().map(str::to_string))
        .collect()
}

/// An agent turn instrumented with GenAI semantic conventions and OpenInference, statuses left
/// unset as OTel SDKs leave them: every span gets the type MLflow derives (the root UNKNOWN, as
/// the SDK gives it), in the column span filters read; every span ends OK; the trace has its
/// inputs, outputs and token usage.
#[tokio::test]
async fn every_span_is_typed_finished_and_the_trace_has_inputs_and_outputs() {
    let (mlflow, exp) = setup("fidelity-types").await;
    let gw = gateway(&mlflow.url, &exp, |_| {}).await;
    let trace_id = random_trace_id();
    let root =
        SpanSpec::root(trace_id, "handle_chat", now_nanos() - 2_000_000_000, 300).with(vec![
            s("input.value", "What is MLflow?"),
            s("output.value", "An open source platform."),
        ]);
    let chat = SpanSpec::child(&root, "chat gpt-4o", 10, 200).with(vec![
        s("gen_ai.operation.name", "chat"),
        s("gen_ai.request.model", "gpt-4o"),
        s(
            "gen_ai.input.messages",
            r#"[{"role":"user","parts":[{"type":"text","content":"What is MLflow?"}]}]"#,
        ),
        kv_int("gen_ai.usage.input_tokens", 12),
        kv_int("gen_ai.usage.output_tokens", 30),
    ]);
    let retrieve = SpanSpec::child(&root, "retrieve docs", 5, 4).with(vec![
        s("openinference.span.kind", "RETRIEVER"),
        s("input.value", "MLflow"),
    ]);
    let r = post_protobuf(
        gw.otlp_http_addr,
        &request(
            service_resource("fidelity"),
            vec![chat.build(), retrieve.build(), root.build()],
        ),
    )
    .await;
    assert_eq!(r.status(), 200);
    let tr = tr_id(&trace_id);
    let info = mlflow
        .wait_trace(&tr, "its TraceInfo", |i| i["state"] == "OK")
        .await;
    assert_eq!(
        metadata(&info, "mlflow.traceInputs"),
        r#""What is MLflow?""#
    );
    assert_eq!(
        metadata(&info, "mlflow.traceOutputs"),
        r#""An open source platform.""#
    );
    let usage: Json = serde_json::from_str(metadata(&info, "mlflow.trace.tokenUsage"))
        .expect("token usage metadata");
    assert_eq!(usage["input_tokens"], 12);
    assert_eq!(usage["output_tokens"], 30);

    let spans = mlflow.wait_spans(&tr, 3).await;
    for (name, kind) in [
        ("handle_chat", "UNKNOWN"),
        ("chat gpt-4o", "CHAT_MODEL"),
        ("retrieve docs", "RETRIEVER"),
    ] {
        let span = span_named(&spans, name);
        assert_eq!(
            attribute(span, "mlflow.spanType"),
            Some(kind),
            "{name}: {span:#}"
        );
        assert_eq!(span["status"]["code"], "STATUS_CODE_OK", "{name}: {span:#}");
        // The column span filters read.
        assert!(
            traces_with_span_type(&mlflow, &exp, kind)
                .await
                .contains(&tr),
            "span.type = '{kind}' finds the trace"
        );
    }
    assert!(
        traces_with_span_type(&mlflow, &exp, "LLM").await.is_empty(),
        "no span is an LLM span"
    );
    gw.shutdown().await;
}

fn kv_int(key: &str, value: i64) -> opentelemetry_proto::tonic::common::v1::KeyValue {
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

/// Spans as MLflow's SDK exports them over OTLP: every attribute value JSON-encoded. The ids
/// land without their quotes, so the seed's filters find the trace.
#[tokio::test]
async fn mlflow_sdk_values_are_read_without_their_quotes() {
    let (mlflow, exp) = setup("fidelity-sdk").await;
    let gw = gateway(&mlflow.url, &exp, |_| {}).await;
    let trace_id = random_trace_id();
    let tr = tr_id(&trace_id);
    let u = unique();
    let (crid, session, user) = (format!("req-{u}"), format!("conv-{u}"), format!("user-{u}"));
    let quoted = |v: &str| format!("\"{v}\"");
    let root = SpanSpec::root(trace_id, "chat", now_nanos() - 1_000_000_000, 100).with(vec![
        s("mlflow.traceRequestId", &quoted(&tr)),
        s("mlflow.spanType", "\"CHAIN\""),
        s("mlflow.spanInputs", r#"{"question": "hi"}"#),
        s("mlflow.spanOutputs", r#""hello""#),
        s("client_request_id", &quoted(&crid)),
        s("session.id", &quoted(&session)),
        s("user.id", &quoted(&user)),
    ]);
    let r = post_protobuf(
        gw.otlp_http_addr,
        &request(service_resource("sdk-app"), vec![root.build()]),
    )
    .await;
    assert_eq!(r.status(), 200);
    let info = mlflow
        .wait_trace(&tr, "its client request id", |i| {
            i["client_request_id"].as_str().is_some()
        })
        .await;
    assert_eq!(info["client_request_id"], crid.as_str());
    assert_eq!(metadata(&info, "mlflow.trace.session"), session);
    assert_eq!(metadata(&info, "mlflow.trace.user"), user);
    assert_eq!(
        metadata(&info, "mlflow.traceInputs"),
        r#"{"question": "hi"}"#
    );
    let found = mlflow
        .search(
            &exp,
            &format!("metadata.`mlflow.trace.session` = '{session}'"),
        )
        .await;
    assert_eq!(found.len(), 1, "the seed's session filter finds it");
    assert!(
        traces_with_span_type(&mlflow, &exp, "CHAIN")
            .await
            .contains(&tr),
        "the SDK's type lands in spans.type without quotes"
    );
    gw.shutdown().await;
}

/// Dual export: MLflow's SDK writes the TraceInfo itself (here by StartTraceV3, as the SDK
/// does) and sends the same spans to the gateway. The gateway leaves that TraceInfo as it is:
/// its experiment, client request id and metadata.
#[tokio::test]
async fn a_trace_info_written_by_mlflow_sdk_is_left_as_it_is() {
    let mlflow = Mlflow::new(shared_mlflow());
    let sdk_exp = mlflow.create_experiment("fidelity-dual-sdk").await;
    let gateway_exp = mlflow.create_experiment("fidelity-dual-gateway").await;
    let gw = gateway(&mlflow.url, &gateway_exp, |_| {}).await;
    let trace_id = random_trace_id();
    let tr = tr_id(&trace_id);
    let start = now_nanos() - 1_000_000_000;
    let crid = format!("sdk-req-{}", unique());
    let (status, body) = mlflow
        .post(
            "/api/3.0/mlflow/traces",
            &json!({"trace": {"trace_info": {
                "trace_id": tr,
                "trace_location": {"type": "MLFLOW_EXPERIMENT",
                                   "mlflow_experiment": {"experiment_id": sdk_exp}},
                "request_time": "2026-01-01T00:00:00.000Z",
                "execution_duration": "0.100s",
                "state": "OK",
                "client_request_id": crid,
                "trace_metadata": {"mlflow.source.type": "NOTEBOOK",
                                   "mlflow.trace_schema.version": "3"},
                "tags": {"mlflow.traceName": "chat"},
            }}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let root = SpanSpec::root(trace_id, "chat", start, 100).with(vec![
        s("mlflow.traceRequestId", &format!("\"{tr}\"")),
        s("mlflow.spanType", "\"CHAIN\""),
        s("client_request_id", "\"a-different-id\""),
    ]);
    let r = post_protobuf(
        gw.otlp_http_addr,
        &request(service_resource("dual"), vec![root.build()]),
    )
    .await;
    assert_eq!(r.status(), 200);
    mlflow.wait_spans(&tr, 1).await;
    // The gateway's TraceInfo write, had it happened, follows the spans within the batch.
    let skipped = wait_for_metric(gw.api_addr, "gateway_trace_infos_skipped_total").await;
    assert!(skipped >= 1.0, "the write was skipped");
    let info = mlflow.trace_info(&tr).await.expect("trace info");
    assert_eq!(
        info["trace_location"]["mlflow_experiment"]["experiment_id"],
        sdk_exp.as_str()
    );
    assert_eq!(info["client_request_id"], crid.as_str());
    assert_eq!(metadata(&info, "mlflow.source.type"), "NOTEBOOK");
    gw.shutdown().await;
}

async fn wait_for_metric(api: std::net::SocketAddr, name: &str) -> f64 {
    let started = std::time::Instant::now();
    loop {
        let text = metrics_text(api).await;
        let value: f64 = text
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if value > 0.0 || started.elapsed() > Duration::from_secs(30) {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A trace whose root never comes is finalized after `traces.root_wait` from the spans that
/// came: earliest start, latest end, ERROR because one failed, the earliest span's name, and a
/// tag saying the root is missing. With `finalize_without_root = false` it stays in progress.
#[tokio::test]
async fn a_trace_whose_root_never_comes_is_finalized() {
    let (mlflow, exp) = setup("fidelity-rootless").await;
    let gw = gateway(&mlflow.url, &exp, |cfg| {
        cfg.traces.root_wait = Duration::from_secs(1);
    })
    .await;
    let trace_id = random_trace_id();
    let tr = tr_id(&trace_id);
    let start = now_nanos() - 5_000_000_000;
    // The root is never sent.
    let root = SpanSpec::root(trace_id, "lost root", start, 1_000);
    let first = SpanSpec::child(&root, "first step", 100, 200).with(vec![
        s("session.id", "rootless-session"),
        s("client_request_id", "rootless-req"),
    ]);
    let mut failed = SpanSpec::child(&root, "second step", 400, 300).build();
    failed.status = Some(Status {
        code: StatusCode::Error as i32,
        message: "tool failed".into(),
    });
    let r = post_protobuf(
        gw.otlp_http_addr,
        &request(service_resource("rootless"), vec![first.build(), failed]),
    )
    .await;
    assert_eq!(r.status(), 200);
    let info = mlflow
        .wait_trace(&tr, "a final state", |i| i["state"] != "IN_PROGRESS")
        .await;
    assert_eq!(info["state"], "ERROR");
    assert_eq!(info["tags"]["gateway.root_missing"], "true");
    assert_eq!(info["tags"]["mlflow.traceName"], "first step");
    assert_eq!(info["client_request_id"], "rootless-req");
    assert_eq!(metadata(&info, "mlflow.trace.session"), "rootless-session");
    assert_eq!(info["execution_duration"], "0.600s");
    assert_eq!(mlflow.wait_spans(&tr, 2).await.len(), 2);
    gw.shutdown().await;

    let kept_open = gateway(&mlflow.url, &exp, |cfg| {
        cfg.traces.root_wait = Duration::from_secs(1);
        cfg.traces.finalize_without_root = false;
    })
    .await;
    let open_id = random_trace_id();
    let open_root = SpanSpec::root(open_id, "lost root", start, 1_000);
    let child = SpanSpec::child(&open_root, "only step", 100, 200);
    let r = post_protobuf(
        kept_open.otlp_http_addr,
        &request(service_resource("rootless"), vec![child.build()]),
    )
    .await;
    assert_eq!(r.status(), 200);
    mlflow.wait_spans(&tr_id(&open_id), 1).await;
    // Past root_wait and several sweeps.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let info = mlflow.trace_info(&tr_id(&open_id)).await.expect("trace");
    assert_eq!(info["state"], "IN_PROGRESS");
    kept_open.shutdown().await;
}
