//! End-to-end: OTLP in through the gateway, checked through a real MLflow 3.17.2 server's own
//! REST API (SQLite, loopback), started by the shared fixtures (`fixtures/`).

mod support;

use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use serde_json::Value as Json;
use support::*;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// One conversation turn as an instrumented chat service would export it: a server root span
/// with captured X-Request-ID / X-Session-ID / X-User-ID headers and an LLM child span.
struct Turn {
    trace_id: [u8; 16],
    root: SpanSpec,
    child: SpanSpec,
    request_id: String,
    session: String,
    user: String,
    team: String,
    service: String,
}

impl Turn {
    fn new() -> Self {
        let u = unique();
        let trace_id = random_trace_id();
        let request_id = format!("req-{u}");
        let session = format!("session-{u}");
        let user = format!("user-{u}");
        let team = format!("team-{u}");
        let root =
            SpanSpec::root(trace_id, "POST /chat", now_nanos() - 2_000_000_000, 250).with(vec![
                header("x-request-id", &request_id),
                header("x-session-id", &session),
                header("x-user-id", &user),
                s("http.request.method", "POST"),
                s("mlflow.traceTag.team", &team),
            ]);
        let child = SpanSpec::child(&root, "chat gpt-4o", 20, 200).with(vec![
            s("gen_ai.operation.name", "chat"),
            s("gen_ai.request.model", "gpt-4o"),
        ]);
        Self {
            trace_id,
            root,
            child,
            request_id,
            session,
            user,
            team,
            service: format!("chat-{u}"),
        }
    }

    fn request(&self) -> ExportTraceServiceRequest {
        request(
            service_resource(&self.service),
            vec![self.child.build(), self.root.build()],
        )
    }

    fn tr(&self) -> String {
        tr_id(&self.trace_id)
    }
}

fn rfc3339_ms(nanos: u64) -> String {
    let t =
        OffsetDateTime::from_unix_timestamp_nanos((nanos / 1_000_000 * 1_000_000) as i128).unwrap();
    // MLflow renders milliseconds always.
    let s = t.format(&Rfc3339).unwrap();
    match s.find('.') {
        Some(_) => s,
        None => s.replace('Z', ".000Z"),
    }
}

/// Waits for the turn's TraceInfo, then checks everything issue #2 promises about it.
async fn assert_turn_complete(mlflow: &Mlflow, experiment: &str, turn: &Turn) {
    let tr = turn.tr();
    let info = mlflow
        .wait_trace(&tr, "its client request id", |i| {
            i["client_request_id"] == turn.request_id.as_str()
        })
        .await;
    assert_eq!(info["state"], "OK", "{info:#}");
    assert_eq!(
        info["trace_location"]["mlflow_experiment"]["experiment_id"],
        experiment
    );
    // Timing from the root span, not the child.
    let expected_time = rfc3339_ms(turn.root.start);
    let got_time = info["request_time"].as_str().unwrap();
    assert_eq!(
        OffsetDateTime::parse(got_time, &Rfc3339).unwrap(),
        OffsetDateTime::parse(&expected_time, &Rfc3339).unwrap(),
        "request_time"
    );
    assert_eq!(info["execution_duration"], "0.250s");
    assert_eq!(info["tags"]["mlflow.traceName"], "POST /chat");
    let md = &info["trace_metadata"];
    assert_eq!(md["mlflow.trace.session"], turn.session.as_str());
    assert_eq!(md["mlflow.trace.user"], turn.user.as_str());
    assert_eq!(md["mlflow.source.type"], "production");
    assert_eq!(md["mlflow.source.name"], turn.service.as_str());
    assert_eq!(md["environment"], "production");
    assert_eq!(md["app_version"], "1.4.2");
    assert_eq!(md["deployment_id"], "chat-deploy");
    assert_eq!(md["region"], "eu-west-1");
    assert_eq!(info["tags"]["team"], turn.team.as_str());

    let spans = mlflow.wait_spans(&tr, 2).await;
    assert_eq!(spans.len(), 2, "every span landed");

    // Found by every filter form MLflow users write.
    for filter in [
        format!("attributes.client_request_id = '{}'", turn.request_id),
        format!("tags.`mlflow.trace.user` = '{}'", turn.user),
        format!("tags.`mlflow.trace.session` = '{}'", turn.session),
        format!("metadata.`mlflow.trace.user` = '{}'", turn.user),
        format!("metadata.`mlflow.trace.session` = '{}'", turn.session),
        format!("tags.team = '{}'", turn.team),
    ] {
        let found = mlflow.search(experiment, &filter).await;
        let ids: Vec<&str> = found
            .iter()
            .filter_map(|t| t["trace_id"].as_str())
            .collect();
        assert_eq!(ids, vec![tr.as_str()], "search {filter}");
    }
}

async fn setup(prefix: &str) -> (Mlflow, String) {
    let mlflow = Mlflow::new(shared_mlflow());
    let exp = mlflow.create_experiment(prefix).await;
    (mlflow, exp)
}

fn decode_response(bytes: &[u8]) -> ExportTraceServiceResponse {
    ExportTraceServiceResponse::decode(bytes).expect("OTLP response")
}

#[tokio::test]
async fn http_protobuf_trace_lands_complete() {
    let (mlflow, exp) = setup("http-proto").await;
    let gw = gateway(&mlflow.url, &exp, |_| {}).await;
    let turn = Turn::new();
    let r = post_protobuf(gw.otlp_http_addr, &turn.request()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-protobuf");
    assert_eq!(
        decode_response(&r.bytes().await.unwrap()).partial_success,
        None
    );
    assert_turn_complete(&mlflow, &exp, &turn).await;
}

/// The MLflow SDK's order (spans, then StartTraceV3) gives the same trace as the default
/// TraceInfo-first order the other tests run with.
#[tokio::test]
async fn spans_first_order_lands_the_same_complete_trace() {
    let (mlflow, exp) = setup("spans-first").await;
    let gw = gateway(&mlflow.url, &exp, |c| c.mlflow.trace_info_first = false).await;
    let turn = Turn::new();
    let r = post_protobuf(gw.otlp_http_addr, &turn.request()).await;
    assert_eq!(r.status(), 200);
    assert_turn_complete(&mlflow, &exp, &turn).await;
}

#[tokio::test]
async fn http_json_with_charset_trace_lands_complete() {
    let (mlflow, exp) = setup("http-json").await;
    let gw = gateway(&mlflow.url, &exp, |_| {}).await;
    let turn = Turn::new();
    let body = serde_json::to_vec(&turn.request()).unwrap();
    // OTLP/JSON rules: hex ids, lowerCamelCase, int64 as strings.
    let text = String::from_utf8(body.clone()).unwrap();
    assert!(text.contains("\"traceId\"") && text.contains(&hex(&turn.trace_id)));
    let r = post_http(
        gw.otlp_http_addr,
        body,
        "application/json; charset=utf-8",
        None,
        &[],
    )
    .await;
    assert_eq!(r.status(), 200);
    let reply: Json = r.json().await.unwrap();
    assert!(reply.get("partialSuccess").is_none(), "{reply}");
    assert_turn_complete(&mlflow, &exp, &turn).await;
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test]
async fn http_gzip_protobuf_and_zstd_json_land_complete() {
    let (mlflow, exp) = setup("http-gzip").await;
    let gw = gateway(&mlflow.url, &exp, |_| {}).await;
    let turn = Turn::new();
    let r = post_http(
        gw.otlp_http_addr,
        gzip(&turn.request().encode_to_vec()),
        "application/x-protobuf",
        Some("gzip"),
        &[],
    )
    .await;
    assert_eq!(r.status(), 200);
    let turn2 = Turn::new();
    let body = zstd::encode_all(&serde_json::to_vec(&turn2.request()).unwrap()[..], 3).unwrap();
    let r = post_http(
        gw.otlp_http_addr,
        body,
        "application/json",
        Some("zstd"),
        &[],
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_turn_complete(&mlflow, &exp, &turn).await;
    assert_turn_complete(&mlflow, &exp, &turn2).await;
}

async fn grpc_client(
    gw: &mlflow_otlp_gateway::Gateway,
) -> TraceServiceClient<tonic::transport::Channel> {
    TraceServiceClient::connect(format!("http://{}", gw.otlp_grpc_addr))
        .await
        .expect("gRPC connect")
}

#[tokio::test]
async fn grpc_plain_and_gzip_traces_land_complete() {
    let (mlflow, exp) = setup("grpc").await;
    let gw = gateway(&mlflow.url, &exp, |_| {}).await;
    let turn = Turn::new();
    let reply = grpc_client(&gw)
        .await
        .export(turn.request())
        .await
        .expect("export");
    assert_eq!(reply.into_inner().partial_success, None);
    let turn2 = Turn::new();
    grpc_client(&gw)
        .await
        .send_compressed(tonic::codec::CompressionEncoding::Gzip)
        .export(turn2.request())
        .await
        .expect("gzip export");
    assert_turn_complete(&mlflow, &exp, &turn).await;
    assert_turn_complete(&mlflow, &exp, &turn2).await;
}

#[tokio::test]
async fn children_before_root_still_end_complete_and_ok() {
    let (mlflow, exp) = setup("child-first").await;
    let gw = gateway(&mlflow.url, &exp, |_| {}).await;
    let trace_id = random_trace_id();
    let u = unique();
    let root = SpanSpec::root(trace_id, "agent run", now_nanos() - 5_000_000_000, 1200)
        .with(vec![s("client_request_id", &format!("crid-{u}"))]);
    // The child carries the user and session; the root, sent later, carries neither.
    let child = SpanSpec::child(&root, "tool call", 100, 300).with(vec![
        s("user.id", &format!("child-user-{u}")),
        s("langfuse.session.id", &format!("child-session-{u}")),
    ]);
    let resource = service_resource("agent");
    let r = post_protobuf(
        gw.otlp_http_addr,
        &request(resource.clone(), vec![child.build()]),
    )
    .await;
    assert_eq!(r.status(), 200);
    let tr = tr_id(&trace_id);
    let early = mlflow
        .wait_trace(&tr, "a row from the child", |_| true)
        .await;
    assert_eq!(early["state"], "IN_PROGRESS");
    let r = post_protobuf(gw.otlp_http_addr, &request(resource, vec![root.build()])).await;
    assert_eq!(r.status(), 200);
    let info = mlflow
        .wait_trace(&tr, "its client request id", |i| {
            i["client_request_id"] == format!("crid-{u}").as_str()
        })
        .await;
    assert_eq!(info["state"], "OK");
    assert_eq!(info["execution_duration"], "1.200s");
    assert_eq!(
        info["trace_metadata"]["mlflow.trace.user"],
        format!("child-user-{u}").as_str()
    );
    assert_eq!(
        info["trace_metadata"]["mlflow.trace.session"],
        format!("child-session-{u}").as_str()
    );
    assert_eq!(info["tags"]["mlflow.traceName"], "agent run");
    assert_eq!(mlflow.wait_spans(&tr, 2).await.len(), 2);
}

#[tokio::test]
async fn an_over_long_session_id_does_not_lose_the_batch() {
    let (mlflow, exp) = setup("long-session").await;
    let gw = gateway(&mlflow.url, &exp, |_| {}).await;
    let long = "s".repeat(400);
    let a = SpanSpec::root(random_trace_id(), "a", now_nanos() - 1_000_000_000, 10)
        .with(vec![s("session.id", &long)]);
    let a_child =
        SpanSpec::child(&a, "a-child", 1, 2).with(vec![s("gen_ai.conversation.id", &long)]);
    let b = SpanSpec::root(random_trace_id(), "b", now_nanos() - 1_000_000_000, 10);
    let r = post_protobuf(
        gw.otlp_http_addr,
        &request(
            service_resource("svc"),
            vec![a.build(), a_child.build(), b.build()],
        ),
    )
    .await;
    assert_eq!(r.status(), 200);
    let info = mlflow
        .wait_trace(&tr_id(&a.trace_id), "its TraceInfo", |i| {
            i["trace_metadata"]["mlflow.trace_schema.version"] == "3"
        })
        .await;
    assert_eq!(
        info["trace_metadata"]["mlflow.trace.session"]
            .as_str()
            .unwrap()
            .len(),
        250
    );
    assert_eq!(mlflow.wait_spans(&tr_id(&a.trace_id), 2).await.len(), 2);
    assert_eq!(mlflow.wait_spans(&tr_id(&b.trace_id), 1).await.len(), 1);
}

#[tokio::test]
async fn a_bad_span_is_reported_in_partial_success_while_its_siblings_land() {
    let (mlflow, exp) = setup("partial").await;
    let gw = gateway(&mlflow.url, &exp, |_| {}).await;

    // HTTP: an empty span id.
    let turn = Turn::new();
    let mut bad = turn.child.build();
    bad.span_id.clear();
    bad.name = "broken".into();
    let mut req = turn.request();
    req.resource_spans[0].scope_spans[0].spans.push(bad);
    let r = post_protobuf(gw.otlp_http_addr, &req).await;
    assert_eq!(r.status(), 200);
    let p = decode_response(&r.bytes().await.unwrap())
        .partial_success
        .expect("partial success");
    assert_eq!(p.rejected_spans, 1);
    assert!(p.error_message.contains("span_id"), "{}", p.error_message);
    assert_turn_complete(&mlflow, &exp, &turn).await;

    // gRPC: an unfinished span.
    let turn = Turn::new();
    let mut bad = turn.child.build();
    bad.span_id = random_span_id().to_vec();
    bad.end_time_unix_nano = 0;
    let mut req = turn.request();
    req.resource_spans[0].scope_spans[0].spans.push(bad);
    let reply = grpc_client(&gw)
        .await
        .export(req)
        .await
        .expect("export")
        .into_inner();
    let p = reply.partial_success.expect("partial success");
    assert_eq!(p.rejected_spans, 1);
    assert!(
        p.error_message.contains("unfinished"),
        "{}",
        p.error_message
    );
    assert_turn_complete(&mlflow, &exp, &turn).await;

    // JSON: partialSuccess in OTLP/JSON form.
    let turn = Turn::new();
    let mut bad = turn.child.build();
    bad.trace_id = vec![1; 15];
    let mut req = turn.request();
    req.resource_spans[0].scope_spans[0].spans.push(bad);
    let r = post_http(
        gw.otlp_http_addr,
        serde_json::to_vec(&req).unwrap(),
        "application/json",
        None,
        &[],
    )
    .await;
    let reply: Json = r.json().await.unwrap();
    assert_eq!(reply["partialSuccess"]["rejectedSpans"], "1", "{reply}");
    assert_turn_complete(&mlflow, &exp, &turn).await;
}

#[tokio::test]
async fn routing_by_header_metadata_resource_and_rules() {
    let (mlflow, default_exp) = setup("route-default").await;
    let other = mlflow.create_experiment("route-header").await;
    let ruled = format!("route-rule-{}", unique());
    let gw = gateway(&mlflow.url, &default_exp, |c| {
        c.routing
            .rules
            .push(mlflow_otlp_gateway::config::RouteRule {
                service_name: "billing".into(),
                experiment_id: None,
                experiment_name: Some(ruled.clone()),
            });
    })
    .await;

    // HTTP header, as MLflow's own endpoint takes it.
    let turn = Turn::new();
    let r = post_http(
        gw.otlp_http_addr,
        turn.request().encode_to_vec(),
        "application/x-protobuf",
        None,
        &[("x-mlflow-experiment-id", &other)],
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_turn_complete(&mlflow, &other, &turn).await;

    // gRPC metadata.
    let turn = Turn::new();
    let mut req = tonic::Request::new(turn.request());
    req.metadata_mut()
        .insert("x-mlflow-experiment-id", other.parse().unwrap());
    grpc_client(&gw).await.export(req).await.expect("export");
    assert_turn_complete(&mlflow, &other, &turn).await;

    // Resource attribute naming a new experiment: created.
    let created = format!("route-created-{}", unique());
    let root = SpanSpec::root(random_trace_id(), "r", now_nanos() - 1_000_000_000, 5);
    let mut resource = service_resource("anything");
    resource.push(s("mlflow.experiment.name", &created));
    let r = post_protobuf(gw.otlp_http_addr, &request(resource, vec![root.build()])).await;
    assert_eq!(r.status(), 200);
    let info = mlflow
        .wait_trace(&tr_id(&root.trace_id), "its TraceInfo", |i| {
            i["state"] == "OK"
        })
        .await;
    let exp = mlflow
        .experiment_by_name(&created)
        .await
        .expect("experiment created");
    assert_eq!(
        info["trace_location"]["mlflow_experiment"]["experiment_id"],
        exp["experiment_id"]
    );

    // Rule by service.name.
    let root = SpanSpec::root(random_trace_id(), "bill", now_nanos() - 1_000_000_000, 5);
    let r = post_protobuf(
        gw.otlp_http_addr,
        &request(service_resource("billing"), vec![root.build()]),
    )
    .await;
    assert_eq!(r.status(), 200);
    let info = mlflow
        .wait_trace(&tr_id(&root.trace_id), "its TraceInfo", |i| {
            i["state"] == "OK"
        })
        .await;
    let exp = mlflow
        .experiment_by_name(&ruled)
        .await
        .expect("rule experiment created");
    assert_eq!(
        info["trace_location"]["mlflow_experiment"]["experiment_id"],
        exp["experiment_id"]
    );
}

#[tokio::test]
async fn deleted_missing_and_malformed_experiments_are_clear_errors() {
    let (mlflow, exp) = setup("deleted").await;
    let gone = mlflow.create_experiment("to-delete").await;
    mlflow.delete_experiment(&gone).await;
    let gw = gateway(&mlflow.url, &exp, |_| {}).await;
    let body = Turn::new().request().encode_to_vec();
    for (header, status, text) in [
        (gone.as_str(), 400, "deleted"),
        ("99999999", 400, "does not exist"),
        ("abc", 400, "not a numeric experiment id"),
    ] {
        let r = post_http(
            gw.otlp_http_addr,
            body.clone(),
            "application/x-protobuf",
            None,
            &[("x-mlflow-experiment-id", header)],
        )
        .await;
        assert_eq!(r.status().as_u16(), status, "header {header}");
        let bytes = r.bytes().await.unwrap();
        let msg = mlflow_otlp_gateway::receive::errors::RpcStatus::decode(&bytes[..])
            .unwrap()
            .message;
        assert!(msg.contains(text), "header {header}: {msg}");
    }
}

#[tokio::test]
async fn http_errors_use_the_codes_otlp_clients_understand() {
    let (mlflow, exp) = setup("errors").await;
    let gw = gateway(&mlflow.url, &exp, |c| {
        c.receiver.max_message_bytes = 256 * 1024;
        c.receiver.max_decompressed_bytes = 1024 * 1024;
    })
    .await;
    let addr = gw.otlp_http_addr;
    let good = Turn::new().request().encode_to_vec();
    assert_eq!(
        post_http(addr, good.clone(), "text/plain", None, &[])
            .await
            .status(),
        415
    );
    assert_eq!(
        post_http(
            addr,
            good.clone(),
            "application/x-protobuf",
            Some("br"),
            &[]
        )
        .await
        .status(),
        415
    );
    assert_eq!(
        post_http(
            addr,
            b"\xff\xff\xff".to_vec(),
            "application/x-protobuf",
            None,
            &[]
        )
        .await
        .status(),
        400
    );
    assert_eq!(
        post_http(addr, b"{not json".to_vec(), "application/json", None, &[])
            .await
            .status(),
        400
    );
    assert_eq!(
        post_http(
            addr,
            b"x".to_vec(),
            "application/x-protobuf",
            Some("gzip"),
            &[]
        )
        .await
        .status(),
        400
    );
    // Too large on the wire, and a zip bomb: 413, and the gateway keeps serving.
    assert_eq!(
        post_http(
            addr,
            vec![0u8; 300 * 1024],
            "application/x-protobuf",
            None,
            &[]
        )
        .await
        .status(),
        413
    );
    let bomb = gzip(&vec![0u8; 64 * 1024 * 1024]);
    assert!(bomb.len() < 256 * 1024);
    assert_eq!(
        post_http(addr, bomb, "application/x-protobuf", Some("gzip"), &[])
            .await
            .status(),
        413
    );
    // Every span unusable: 400, never retried by clients.
    let mut all_bad = Turn::new().request();
    for sp in all_bad.resource_spans[0].scope_spans[0].spans.iter_mut() {
        sp.trace_id.clear();
    }
    assert_eq!(post_protobuf(addr, &all_bad).await.status(), 400);
    // Empty request: success, nothing stored.
    assert_eq!(
        post_http(addr, vec![], "application/x-protobuf", None, &[])
            .await
            .status(),
        200
    );
    let turn = Turn::new();
    assert_eq!(post_protobuf(addr, &turn.request()).await.status(), 200);
    assert_turn_complete(&mlflow, &exp, &turn).await;
}

#[tokio::test]
async fn a_full_queue_gets_retryable_refusals_on_both_transports() {
    // MLflow down (nothing listens on this port): accepted spans stay queued.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let gw = gateway(&dead, "1", |c| {
        c.receiver.max_message_bytes = 4096;
        c.receiver.max_decompressed_bytes = 4096;
        c.queue.max_bytes = 4096;
        c.receiver.retry_after = Duration::from_secs(3);
    })
    .await;
    let body = Turn::new().request().encode_to_vec();
    let mut statuses = vec![];
    let mut refusal = None;
    for _ in 0..20 {
        let r = post_http(
            gw.otlp_http_addr,
            body.clone(),
            "application/x-protobuf",
            None,
            &[],
        )
        .await;
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            refusal = Some(r);
            break;
        }
    }
    let r = refusal.unwrap_or_else(|| panic!("never refused: {statuses:?}"));
    assert_eq!(r.headers()["retry-after"], "3");
    assert!(statuses[0] == 200, "first request accepted: {statuses:?}");

    let err = grpc_client(&gw)
        .await
        .export(Turn::new().request())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    let details = mlflow_otlp_gateway::receive::errors::RpcStatus::decode(err.details()).unwrap();
    assert!(
        details.details[0]
            .type_url
            .ends_with("google.rpc.RetryInfo")
    );

    // Not ready: MLflow does not answer.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ready = reqwest::get(format!("http://{}/readyz", gw.api_addr))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let body: Json = ready.json().await.unwrap();
    assert!(
        body["reasons"].to_string().contains("does not answer"),
        "{body}"
    );
}

#[tokio::test]
async fn shutdown_flushes_what_is_in_memory() {
    let (mlflow, exp) = setup("drain").await;
    let gw = gateway(&mlflow.url, &exp, |c| {
        c.batch.timeout = Duration::from_secs(60);
        c.batch.max_spans = 10_000;
    })
    .await;
    let turns: Vec<Turn> = (0..3).map(|_| Turn::new()).collect();
    for t in &turns {
        let r = post_protobuf(gw.otlp_http_addr, &t.request()).await;
        assert_eq!(r.status(), 200);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        mlflow.trace_info(&turns[0].tr()).await.is_none(),
        "still batched in memory"
    );
    let report = gw.shutdown().await;
    assert!(report.drained, "{report:?}");
    for t in &turns {
        assert_turn_complete(&mlflow, &exp, t).await;
    }
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let (mlflow, exp) = setup("ops").await;
    let gw = gateway(&mlflow.url, &exp, |_| {}).await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let api = format!("http://{}", gw.api_addr);
    assert_eq!(
        reqwest::get(format!("{api}/healthz"))
            .await
            .unwrap()
            .status(),
        200
    );
    let mut ready = false;
    for _ in 0..50 {
        if reqwest::get(format!("{api}/readyz"))
            .await
            .unwrap()
            .status()
            == 200
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ready, "ready once MLflow answers");
    let turn = Turn::new();
    post_protobuf(gw.otlp_http_addr, &turn.request()).await;
    assert_turn_complete(&mlflow, &exp, &turn).await;
    let text = reqwest::get(format!("{api}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "gateway_receiver_spans_received_total{transport=\"http_protobuf\"}",
        "gateway_receiver_spans_accepted_total{transport=\"http_protobuf\"}",
        "gateway_export_spans_total",
        "gateway_export_traces_total",
        "gateway_export_batch_spans_bucket",
        "gateway_queue_bytes",
        "gateway_spool_records",
    ] {
        assert!(text.contains(name), "metrics lack {name}:\n{text}");
    }
}

/// TraceInfo writers keep their MLflow connection open between traces; MLflow (uvicorn) closes
/// a connection idle for 5 s. The next trace must still get its TraceInfo, on a new connection,
/// without a failed call or a retry.
#[tokio::test]
async fn trace_infos_keep_flowing_after_mlflow_closes_an_idle_connection() {
    let (mlflow, exp) = setup("idle-close").await;
    let gw = gateway(&mlflow.url, &exp, |c| c.mlflow.trace_info_concurrency = 1).await;
    let first = Turn::new();
    post_protobuf(gw.otlp_http_addr, &first.request()).await;
    assert_turn_complete(&mlflow, &exp, &first).await;
    // Past uvicorn's keep-alive timeout (5 s), so MLflow has closed the writer's connection.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let second = Turn::new();
    post_protobuf(gw.otlp_http_addr, &second.request()).await;
    assert_turn_complete(&mlflow, &exp, &second).await;
    let text = metrics_text(gw.api_addr).await;
    assert!(
        !text.contains("gateway_export_retries_total{kind=\"trace_info\""),
        "a TraceInfo call was retried:\n{text}"
    );
    assert!(!text.contains("gateway_export_failures_total"), "{text}");
}

/// A burst of traces for one TraceInfo writer: it pipelines their StartTraceV3 calls (up to
/// `mlflow.trace_info_pipeline_depth` written before the replies are read), and each trace
/// still gets its own complete TraceInfo in a real MLflow, with no call failed or retried.
#[tokio::test]
async fn pipelined_trace_infos_each_land_complete() {
    let (mlflow, exp) = setup("pipelined").await;
    let gw = gateway(&mlflow.url, &exp, |c| c.mlflow.trace_info_concurrency = 1).await;
    let turns: Vec<Turn> = (0..40).map(|_| Turn::new()).collect();
    let mut request = turns[0].request();
    for turn in &turns[1..] {
        request.resource_spans.extend(turn.request().resource_spans);
    }
    post_protobuf(gw.otlp_http_addr, &request).await;
    for turn in &turns {
        let info = mlflow
            .wait_trace(&turn.tr(), "its client request id", |i| {
                i["client_request_id"] == turn.request_id.as_str()
            })
            .await;
        let md = &info["trace_metadata"];
        assert_eq!(
            md["mlflow.trace.session"],
            turn.session.as_str(),
            "{info:#}"
        );
        assert_eq!(md["mlflow.trace.user"], turn.user.as_str(), "{info:#}");
        assert_eq!(md["mlflow.source.name"], turn.service.as_str(), "{info:#}");
        assert_eq!(info["tags"]["team"], turn.team.as_str(), "{info:#}");
    }
    assert_turn_complete(&mlflow, &exp, &turns[0]).await;
    assert_turn_complete(&mlflow, &exp, &turns[39]).await;
    // The metrics are the test process's (gateways of tests running beside this one count
    // there too), so only what none of them should see is checked.
    let text = metrics_text(gw.api_addr).await;
    assert!(
        !text.contains("gateway_export_retries_total{kind=\"trace_info\""),
        "a TraceInfo call was retried:\n{text}"
    );
    assert!(!text.contains("gateway_export_failures_total"), "{text}");
}
