//! Odd and hostile input against a real MLflow 3.17.2: a 200 (gRPC OK) means every span either
//! lands in MLflow or is counted in `partial_success`, a bad span costs no neighbour anything,
//! and a refused body costs bounded memory. Each test is one of the repros of the issue that
//! asked for this, checked through MLflow's own API.

mod support;

use std::path::Path;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, KeyValueList};
use prost::Message;
use serde_json::{Value as Json, json};
use support::*;

async fn setup(prefix: &str) -> (Mlflow, String) {
    let mlflow = Mlflow::new(shared_mlflow());
    let exp = mlflow.create_experiment(prefix).await;
    (mlflow, exp)
}

/// An attribute whose value is a kvlist nested `levels` deep.
fn deep_attribute(levels: usize) -> KeyValue {
    let mut value = AnyValue {
        value: Some(Value::StringValue("leaf".into())),
    };
    for _ in 0..levels {
        value = AnyValue {
            value: Some(Value::KvlistValue(KeyValueList {
                values: vec![KeyValue {
                    key: "k".into(),
                    value: Some(value),
                    ..Default::default()
                }],
            })),
        };
    }
    KeyValue {
        key: "deep".into(),
        value: Some(value),
        ..Default::default()
    }
}

/// A root with one child, as one request of `service`; returns the request and the trace.
fn trace(service: &str, child_attrs: Vec<KeyValue>) -> (ExportTraceServiceRequest, String) {
    let root = SpanSpec::root(random_trace_id(), "turn", now_nanos() - 1_000_000_000, 30)
        .with(vec![s("client_request_id", &format!("req-{}", unique()))]);
    let child = SpanSpec::child(&root, "step", 1, 5).with(child_attrs);
    (
        request(service_resource(service), vec![child.build(), root.build()]),
        tr_id(&root.trace_id),
    )
}

fn partial(bytes: &[u8]) -> (i64, String) {
    let reply = ExportTraceServiceResponse::decode(bytes).expect("OTLP response");
    reply
        .partial_success
        .map(|p| (p.rejected_spans, p.error_message))
        .unwrap_or_default()
}

/// Waits until MLflow holds `n` spans of the trace. MLflow's reply nests as deep as the spans'
/// attributes, past what serde_json parses, so its spans are counted in the text.
async fn wait_spans_deep(mlflow: &Mlflow, trace_id: &str, n: usize) {
    let url = format!("{}/api/3.0/mlflow/traces/get", mlflow.url);
    let started = std::time::Instant::now();
    loop {
        let text = reqwest::Client::new()
            .get(&url)
            .query(&[("trace_id", trace_id), ("allow_partial", "true")])
            .send()
            .await
            .expect("GetTrace")
            .text()
            .await
            .unwrap_or_default();
        let spans = text.matches(r#""span_id":"#).count();
        if spans >= n {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "trace {trace_id} has {spans} spans, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A counter's value in the gateway's metrics (0 when absent). Metrics are per process: tests
/// running beside each other add to the same counters, so compare before and after.
async fn counter(api: std::net::SocketAddr, series: &str) -> f64 {
    metrics_text(api)
        .await
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// A span's attribute as MLflow returns it (OTLP JSON: a list of keys and typed values).
fn attribute<'a>(span: &'a Json, key: &str) -> &'a Json {
    span["attributes"]
        .as_array()
        .and_then(|a| a.iter().find(|kv| kv["key"] == key))
        .map(|kv| &kv["value"])
        .unwrap_or(&Json::Null)
}

fn dead_letter_spans(data_dir: &Path) -> Vec<Json> {
    std::fs::read_to_string(data_dir.join("deadletter/dead-letters.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("dead letter"))
        .collect()
}

/// Repro 1 and 5: a span nested deeper than MLflow reads is rejected at ingest, alone, on both
/// encodings and both transports, at the same depth; its sibling and another service's request
/// land, and nothing reaches the dead-letter file.
#[tokio::test]
async fn a_deeply_nested_attribute_is_rejected_alone_at_ingest() {
    let (mlflow, exp) = setup("deep").await;
    let data = tempfile::tempdir().unwrap();
    let gw = gateway(&mlflow.url, &exp, |c| c.data_dir = Some(data.path().into())).await;
    let too_deep =
        r#"gateway_receiver_spans_rejected_total{transport="http_protobuf",reason="too_deep"}"#;
    let too_deep_before = counter(gw.api_addr, too_deep).await;

    for levels in [31, 32] {
        // Protobuf over HTTP.
        let (req, deep_trace) = trace("app", vec![deep_attribute(levels)]);
        let r = post_protobuf(gw.otlp_http_addr, &req).await;
        assert_eq!(r.status(), 200);
        let (rejected, message) = partial(&r.bytes().await.unwrap());
        // The same, as OTLP/JSON.
        let (json_req, json_trace) = trace("app-json", vec![deep_attribute(levels)]);
        let r = post_http(
            gw.otlp_http_addr,
            serde_json::to_vec(&json_req).unwrap(),
            "application/json",
            None,
            &[],
        )
        .await;
        assert_eq!(r.status(), 200);
        let reply: Json = r.json().await.unwrap();
        // And over gRPC.
        let (grpc_req, grpc_trace) = trace("app-grpc", vec![deep_attribute(levels)]);
        let reply_grpc = TraceServiceClient::connect(format!("http://{}", gw.otlp_grpc_addr))
            .await
            .unwrap()
            .export(grpc_req)
            .await
            .expect("gRPC OK")
            .into_inner();
        let (other, other_trace) = trace("other-app", vec![]);
        assert_eq!(post_protobuf(gw.otlp_http_addr, &other).await.status(), 200);

        if levels == 31 {
            assert_eq!(rejected, 0, "{message}");
            assert_eq!(reply, json!({}));
            assert_eq!(reply_grpc.partial_success, None);
            for t in [&deep_trace, &json_trace, &grpc_trace] {
                wait_spans_deep(&mlflow, t, 2).await;
            }
        } else {
            assert_eq!(rejected, 1);
            assert!(message.contains("span 'step'"), "{message}");
            assert!(message.contains("nested more than 100"), "{message}");
            assert_eq!(reply["partialSuccess"]["rejectedSpans"], "1", "{reply}");
            assert_eq!(
                reply_grpc.partial_success.map(|p| p.rejected_spans),
                Some(1)
            );
            for t in [&deep_trace, &json_trace, &grpc_trace] {
                mlflow
                    .wait_trace(t, "its root", |i| i["state"] == "OK")
                    .await;
            }
        }
        mlflow.wait_spans(&other_trace, 2).await;
    }
    assert_eq!(counter(gw.api_addr, too_deep).await - too_deep_before, 1.0);
    assert!(dead_letter_spans(data.path()).is_empty());
    gw.shutdown().await;
}

/// Isolation: a span that passes ingest (the gateway told MLflow reads deeper than it does)
/// shares a batch with two innocent requests. MLflow refuses the batch; the gateway halves it
/// without decoding whole spans, the innocents land, and only the bad span is dead-lettered.
#[tokio::test]
async fn only_the_span_mlflow_refuses_is_dead_lettered_with_the_spool_and_in_memory() {
    for spooled in [true, false] {
        let (mlflow, exp) = setup("isolate").await;
        let data = tempfile::tempdir().unwrap();
        let gw = gateway(&mlflow.url, &exp, |c| {
            c.receiver.max_nesting_depth = 200;
            // One batch for the three requests.
            c.batch.timeout = Duration::from_secs(2);
            if spooled {
                c.data_dir = Some(data.path().into());
            }
        })
        .await;
        let dead_before = counter(gw.api_addr, "gateway_dead_letter_spans_total").await;
        let (bad, bad_trace) = trace("app", vec![deep_attribute(32)]);
        let (sibling, sibling_trace) = trace("app", vec![]);
        let (other, other_trace) = trace("other-app", vec![]);
        for req in [&bad, &sibling, &other] {
            let r = post_protobuf(gw.otlp_http_addr, req).await;
            assert_eq!(r.status(), 200);
            assert_eq!(partial(&r.bytes().await.unwrap()).0, 0, "passed ingest");
        }
        mlflow.wait_spans(&sibling_trace, 2).await;
        mlflow.wait_spans(&other_trace, 2).await;
        // The bad request's root lands; its deep child does not.
        mlflow
            .wait_trace(&bad_trace, "its root", |i| i["state"] == "OK")
            .await;
        let spans = mlflow.wait_spans(&bad_trace, 1).await;
        assert_eq!(spans.len(), 1, "{spans:?}");
        // Only this test writes dead letters in this test binary.
        let started = std::time::Instant::now();
        let dead = loop {
            let dead = counter(gw.api_addr, "gateway_dead_letter_spans_total").await - dead_before;
            if dead > 0.0 || started.elapsed() > Duration::from_secs(30) {
                break dead;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let mode = if spooled { "spool" } else { "memory" };
        assert_eq!(dead, 1.0, "only the bad span ({mode})");
        if spooled {
            let letters = dead_letter_spans(data.path());
            assert_eq!(letters.len(), 1, "{letters:?}");
            assert_eq!(letters[0]["spans"], 1);
            assert!(
                letters[0]["reason"]
                    .as_str()
                    .unwrap()
                    .contains("Invalid OpenTelemetry format"),
                "{letters:?}"
            );
        }
        gw.shutdown().await;
    }
}

/// Repro 2: snake_case OTLP/JSON (the proto3 JSON mapping's original field names) lands; JSON
/// whose field names are all unknown is refused, not answered 200 and dropped.
#[tokio::test]
async fn snake_case_json_lands_and_unknown_json_is_refused() {
    let (mlflow, exp) = setup("snake").await;
    let gw = gateway(&mlflow.url, &exp, |_| {}).await;
    let trace_id = random_trace_id();
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let start = now_nanos() - 1_000_000_000;
    let body = json!({"resource_spans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"string_value": "snake"}}]},
        "scope_spans": [{"spans": [{
            "trace_id": hex(&trace_id), "span_id": hex(&random_span_id()), "name": "snake root",
            "kind": "SPAN_KIND_SERVER",
            "start_time_unix_nano": start.to_string(), "end_time_unix_nano": start + 5_000_000,
            "attributes": [{"key": "client_request_id", "value": {"string_value": "req-snake"}},
                           {"key": "n", "value": {"int_value": 7}}],
            "status": {"code": "STATUS_CODE_OK"}
        }]}]
    }]});
    let r = post_http(
        gw.otlp_http_addr,
        serde_json::to_vec(&body).unwrap(),
        "application/json",
        None,
        &[],
    )
    .await;
    assert_eq!(r.status(), 200);
    let info = mlflow
        .wait_trace(&tr_id(&trace_id), "its client request id", |i| {
            i["client_request_id"] == "req-snake"
        })
        .await;
    assert_eq!(info["state"], "OK");
    let spans = mlflow.wait_spans(&tr_id(&trace_id), 1).await;
    assert_eq!(attribute(&spans[0], "n")["int_value"], 7, "{spans:?}");

    let r = post_http(
        gw.otlp_http_addr,
        br#"{"resourceSpanz": [{"scopeSpans": []}]}"#.to_vec(),
        "application/json",
        None,
        &[],
    )
    .await;
    assert_eq!(r.status(), 400);
    let reply: Json = r.json().await.unwrap();
    assert!(
        reply["message"].as_str().unwrap().contains("resourceSpanz"),
        "{reply}"
    );
    gw.shutdown().await;
}

/// Repro 4: a string that is not UTF-8 no longer sinks its request. The span is repaired
/// (U+FFFD in place of the broken bytes) and lands with its sibling; the client hears a warning.
#[tokio::test]
async fn text_that_is_not_utf8_is_repaired_and_its_siblings_land() {
    let (mlflow, exp) = setup("utf8").await;
    let gw = gateway(&mlflow.url, &exp, |_| {}).await;
    let (req, trace) = trace("app", vec![s("prompt", "caf\u{e9} MARK")]);
    let mut body = req.encode_to_vec();
    let at = body.windows(4).position(|w| w == b"MARK").unwrap();
    body[at] = 0xff;
    let r = post_http(gw.otlp_http_addr, body, "application/x-protobuf", None, &[]).await;
    assert_eq!(r.status(), 200);
    let (rejected, message) = partial(&r.bytes().await.unwrap());
    assert_eq!(rejected, 0);
    assert!(message.contains("not UTF-8"), "{message}");
    let spans = mlflow.wait_spans(&trace, 2).await;
    let step = spans.iter().find(|s| s["name"] == "step").expect("child");
    assert_eq!(
        attribute(step, "prompt")["string_value"],
        "café \u{fffd}ARK",
        "{step}"
    );
    gw.shutdown().await;
}

/// What MLflow refuses a whole batch for, found at ingest: the span (or the resource's spans)
/// is rejected with its reason; the others land.
#[tokio::test]
async fn spans_mlflow_would_refuse_are_rejected_alone_with_their_reason() {
    let (mlflow, exp) = setup("refusals").await;
    let gw = gateway(&mlflow.url, &exp, |_| {}).await;
    let cases: Vec<(&str, Vec<KeyValue>)> = vec![
        ("bad_cost", vec![s("mlflow.llm.cost", "{oops")]),
        (
            "bad_token_usage",
            vec![s("mlflow.chat.tokenUsage", r#"{"input_tokens": "many"}"#)],
        ),
        (
            "bad_span_type",
            vec![s("mlflow.spanType", &"X".repeat(501))],
        ),
        ("bad_user_id", vec![s("user.id", &"u".repeat(8001))]),
    ];
    for (reason, attrs) in cases {
        let (req, t) = trace("app", attrs);
        let r = post_protobuf(gw.otlp_http_addr, &req).await;
        assert_eq!(r.status(), 200, "{reason}");
        let (rejected, message) = partial(&r.bytes().await.unwrap());
        assert_eq!(rejected, 1, "{reason}: {message}");
        mlflow
            .wait_trace(&t, "its root", |i| i["state"] == "OK")
            .await;
    }
    // Times past 2^63 ns: MLflow answers 500 for them, which clients and the gateway retry.
    let (mut req, t) = trace("app", vec![]);
    req.resource_spans[0].scope_spans[0].spans[0].end_time_unix_nano = u64::MAX;
    let r = post_protobuf(gw.otlp_http_addr, &req).await;
    assert_eq!(partial(&r.bytes().await.unwrap()).0, 1);
    mlflow
        .wait_trace(&t, "its root", |i| i["state"] == "OK")
        .await;
    // A resource attribute holding bytes: MLflow cannot make it a trace tag (500).
    let (mut req, _) = trace("app", vec![]);
    req.resource_spans[0]
        .resource
        .as_mut()
        .unwrap()
        .attributes
        .push(KeyValue {
            key: "blob".into(),
            value: Some(AnyValue {
                value: Some(Value::BytesValue(vec![0xff])),
            }),
            ..Default::default()
        });
    let (good, good_trace) = trace("good", vec![]);
    req.resource_spans.extend(good.resource_spans);
    let r = post_protobuf(gw.otlp_http_addr, &req).await;
    let (rejected, message) = partial(&r.bytes().await.unwrap());
    assert_eq!(rejected, 2, "{message}");
    assert!(message.contains("resource attribute 'blob'"), "{message}");
    mlflow.wait_spans(&good_trace, 2).await;

    let metrics = metrics_text(gw.api_addr).await;
    // Present, whatever other tests added: this test is the only one that sends these.
    for reason in [
        "bad_cost",
        "bad_token_usage",
        "bad_span_type",
        "bad_user_id",
        "time_out_of_range",
        "bad_resource",
    ] {
        assert!(
            metrics.contains(&format!(r#"reason="{reason}"}}"#)),
            "{reason}: {metrics}"
        );
    }
    gw.shutdown().await;
}

/// A gRPC call whose one message is `message`, sent as is (the test controls the prefix).
async fn grpc_raw(
    addr: std::net::SocketAddr,
    compressed: bool,
    encoding: &str,
    message: Vec<u8>,
) -> (String, String) {
    let mut body = vec![u8::from(compressed)];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(&message);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = client
        .post(format!(
            "http://{addr}/opentelemetry.proto.collector.trace.v1.TraceService/Export"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-encoding", encoding)
        .body(body)
        .send()
        .await
        .expect("gRPC call");
    let header = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    (header("grpc-status"), header("grpc-message"))
}

/// Repro 3: bombs on both transports, every encoding, honest and lying about their size, get
/// the codes clients do not retry, and the gateway keeps serving. (What they cost in memory
/// is measured by the benchmark, `--only bombs`.)
#[tokio::test]
async fn decompression_bombs_get_clear_refusals_on_both_transports() {
    let (mlflow, exp) = setup("bombs").await;
    let gw = gateway(&mlflow.url, &exp, |c| {
        c.receiver.max_decompressed_bytes = 8 << 20;
        c.receiver.max_inflight_decompressed_bytes = 8 << 20;
    })
    .await;
    let zeros = vec![0u8; 64 << 20];
    let honest_gzip = gzip(&zeros);
    let mut lying_gzip = honest_gzip.clone();
    let n = lying_gzip.len();
    lying_gzip[n - 4..].copy_from_slice(&100u32.to_le_bytes());
    let zstd_bomb = zstd::bulk::compress(&zeros, 3).unwrap();
    let deflate_bomb = {
        use std::io::Write;
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        z.write_all(&zeros).unwrap();
        z.finish().unwrap()
    };
    for (encoding, bomb) in [
        ("gzip", &honest_gzip),
        ("gzip", &lying_gzip),
        ("zstd", &zstd_bomb),
        ("deflate", &deflate_bomb),
    ] {
        let r = post_http(
            gw.otlp_http_addr,
            bomb.clone(),
            "application/x-protobuf",
            Some(encoding),
            &[],
        )
        .await;
        let status = r.status();
        assert_eq!(status, 413, "HTTP {encoding}: {:?}", r.text().await);
        let (status, message) = grpc_raw(gw.otlp_grpc_addr, true, encoding, bomb.clone()).await;
        // RESOURCE_EXHAUSTED without RetryInfo: OTLP clients do not retry it.
        assert_eq!(status, "8", "gRPC {encoding}: {message}");
    }
    // A plain gRPC message above the limit is refused by its declared length.
    let (status, _) = grpc_raw(gw.otlp_grpc_addr, false, "identity", vec![0; (8 << 20) + 1]).await;
    assert_eq!(status, "8");
    // A compressed flag without an encoding is a protocol error.
    let (status, _) = grpc_raw(gw.otlp_grpc_addr, true, "identity", vec![1, 2, 3]).await;
    assert_eq!(status, "13");

    for encoding in [
        tonic::codec::CompressionEncoding::Gzip,
        tonic::codec::CompressionEncoding::Zstd,
    ] {
        let (req, t) = trace("after-bombs", vec![]);
        TraceServiceClient::connect(format!("http://{}", gw.otlp_grpc_addr))
            .await
            .unwrap()
            .send_compressed(encoding)
            .export(req)
            .await
            .expect("a good compressed call");
        mlflow.wait_spans(&t, 2).await;
    }
    let (req, t) = trace("after-bombs", vec![]);
    let r = post_http(
        gw.otlp_http_addr,
        zstd::encode_all(&req.encode_to_vec()[..], 1).unwrap(),
        "application/x-protobuf",
        Some("zstd"),
        &[],
    )
    .await;
    assert_eq!(r.status(), 200);
    mlflow.wait_spans(&t, 2).await;
    gw.shutdown().await;
}
