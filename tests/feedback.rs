//! Feedback and expectations through the gateway, checked in a real MLflow 3.17.2 with
//! `GET /api/3.0/mlflow/traces/<id>` (the assessments MLflow's UI and SDK show).

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mlflow_otlp_gateway::Gateway;
use mlflow_otlp_gateway::config::{Config, Secret};
use mlflow_otlp_gateway::feedback::grpc::proto::feedback_service_client::FeedbackServiceClient;
use mlflow_otlp_gateway::feedback::grpc::proto::{
    GetFeedbackRequest, LogAssessmentRequest, Source, log_assessment_request::Target,
};
use serde_json::{Value as Json, json};
use support::*;

async fn post_feedback(
    api: SocketAddr,
    path: &str,
    body: &Json,
    headers: &[(&str, &str)],
) -> (u16, Json) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut req = reqwest::Client::new()
        .post(format!("http://{api}{path}"))
        .json(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.expect("POST feedback");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Json::Null))
}

async fn get_status(api: SocketAddr, id: &str, headers: &[(&str, &str)]) -> (u16, Json) {
    let mut req = reqwest::Client::new().get(format!("http://{api}/v1/feedback/{id}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Json::Null))
}

async fn wait_status(api: SocketAddr, id: &str, want: &str, limit: Duration) -> Json {
    let started = Instant::now();
    loop {
        let (code, body) = get_status(api, id, &[]).await;
        assert_eq!(code, 200, "{body}");
        if body["status"] == want {
            return body;
        }
        assert!(
            started.elapsed() < limit,
            "feedback {id} never became {want}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn find<'a>(assessments: &'a [Json], name: &str) -> Vec<&'a Json> {
    assessments
        .iter()
        .filter(|a| a["assessment_name"] == name)
        .collect()
}

async fn setup(tweak: impl FnOnce(&mut Config)) -> (Mlflow, String, Gateway) {
    let mlflow = Mlflow::new(shared_mlflow());
    let exp = mlflow.create_experiment("feedback").await;
    let gw = gateway(&mlflow.url, &exp, tweak).await;
    (mlflow, exp, gw)
}

/// Waits until MLflow has the trace's TraceInfo (its client request id).
async fn trace_ready(mlflow: &Mlflow, tr: &str, crid: &str) {
    mlflow
        .wait_trace(tr, "its client request id", |i| {
            i["client_request_id"] == crid
        })
        .await;
}

#[tokio::test]
async fn every_value_type_by_request_id_and_trace_id_over_http() {
    let (mlflow, _exp, gw) = setup(|_| {}).await;
    let crid = format!("req-{}", unique());
    let tr = send_trace(gw.otlp_http_addr, &crid).await;
    trace_ready(&mlflow, &tr, &crid).await;

    let values = [
        ("thumbs_up", json!(true)),
        ("score", json!(0.85)),
        ("stars", json!(4)),
        ("label", json!("off_topic")),
        ("detail", json!({"score": 3, "tags": ["a", "b"]})),
        ("picks", json!(["x", "y"])),
    ];
    for (name, value) in &values {
        let (code, body) = post_feedback(
            gw.api_addr,
            "/v1/feedback",
            &json!({"client_request_id": crid, "name": name, "value": value,
                    "rationale": format!("why {name}"), "metadata": {"channel": "web"}}),
            &[("X-User-ID", "user-jane")],
        )
        .await;
        assert_eq!(code, 201, "{name}: {body}");
        assert_eq!(body["status"], "logged");
        assert_eq!(body["trace_id"], tr.as_str());
        assert!(body["assessment_id"].as_str().unwrap().len() <= 50);
    }
    // Expectations by trace id, scalar and structured.
    for (name, value) in [
        ("expected_answer", json!("Paris")),
        ("expected_facts", json!({"facts": ["a", "b"]})),
    ] {
        let (code, body) = post_feedback(
            gw.api_addr,
            "/v1/expectations",
            &json!({"trace_id": tr, "name": name, "value": value,
                    "source": {"type": "code", "id": "labeler-1"}}),
            &[],
        )
        .await;
        assert_eq!(code, 201, "{name}: {body}");
    }

    let a = mlflow.assessments(&tr).await;
    for (name, value) in &values {
        let got = find(&a, name);
        assert_eq!(got.len(), 1, "{name}: {a:#?}");
        let got = got[0];
        let stored = &got["feedback"]["value"];
        match value {
            // MLflow returns integers as floats.
            Json::Number(n) => assert_eq!(stored.as_f64(), n.as_f64(), "{name}"),
            Json::Object(_) => assert_eq!(stored["tags"], json!(["a", "b"]), "{name}"),
            v => assert_eq!(stored, v, "{name}"),
        }
        assert_eq!(got["source"]["source_type"], "HUMAN");
        assert_eq!(got["source"]["source_id"], "user-jane");
        assert_eq!(got["rationale"], format!("why {name}").as_str());
        assert_eq!(got["metadata"]["channel"], "web");
    }
    let exp = find(&a, "expected_answer")[0];
    assert_eq!(exp["expectation"]["value"], "Paris");
    assert_eq!(exp["source"]["source_type"], "CODE");
    let facts = find(&a, "expected_facts")[0];
    let serialized = facts["expectation"]["serialized_value"]["value"]
        .as_str()
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Json>(serialized).unwrap(),
        json!({"facts": ["a", "b"]})
    );
}

#[tokio::test]
async fn the_seed_documents_feedback_exchange_in_one_call() {
    // The app from the seed guide: its trace carries X-Request-ID req-abc-123-xyz-789; its
    // /chat_feedback endpoint becomes one call to the gateway.
    let (mlflow, _exp, gw) = setup(|_| {}).await;
    let crid = "req-abc-123-xyz-789";
    let tr = send_trace(gw.otlp_http_addr, crid).await;
    trace_ready(&mlflow, &tr, crid).await;
    let (code, body) = post_feedback(
        gw.api_addr,
        "/v1/feedback?client_request_id=req-abc-123-xyz-789",
        &json!({"name": "response_is_correct", "value": true,
                "rationale": "The response was accurate and helpful"}),
        &[("X-User-ID", "user-jane-doe-12345")],
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let a = mlflow.assessments(&tr).await;
    let got = find(&a, "response_is_correct");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["feedback"]["value"], true);
    assert_eq!(got[0]["rationale"], "The response was accurate and helpful");
    assert_eq!(
        got[0]["source"],
        json!({"source_type": "HUMAN", "source_id": "user-jane-doe-12345"})
    );
}

#[tokio::test]
async fn grpc_feedback_service_logs_and_reports() {
    let (mlflow, _exp, gw) = setup(|_| {}).await;
    let crid = format!("req-{}", unique());
    let tr = send_trace(gw.otlp_http_addr, &crid).await;
    trace_ready(&mlflow, &tr, &crid).await;
    let mut client = FeedbackServiceClient::connect(format!("http://{}", gw.otlp_grpc_addr))
        .await
        .unwrap();
    let value = |k| prost_types::Value { kind: Some(k) };
    use prost_types::value::Kind as K;
    let mut req = tonic::Request::new(LogAssessmentRequest {
        target: Some(Target::ClientRequestId(crid.clone())),
        name: "grpc_thumbs".into(),
        value: Some(value(K::BoolValue(false))),
        rationale: "wrong answer".into(),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("x-user-id", "grpc-user".parse().unwrap());
    let status = client.log_feedback(req).await.unwrap().into_inner();
    assert_eq!(status.status, "logged");
    assert_eq!(status.trace_id, tr);
    let exp = client
        .log_expectation(LogAssessmentRequest {
            target: Some(Target::TraceId(tr.clone())),
            name: "grpc_expected".into(),
            value: Some(value(K::StructValue(prost_types::Struct {
                fields: [("answer".to_string(), value(K::NumberValue(42.0)))]
                    .into_iter()
                    .collect(),
            }))),
            source: Some(Source {
                r#type: "llm_judge".into(),
                id: "judge".into(),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(exp.status, "logged");
    let got = client
        .get_feedback(GetFeedbackRequest {
            feedback_id: status.feedback_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.status, "logged");
    let missing = client
        .log_feedback(LogAssessmentRequest {
            name: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::InvalidArgument);

    let a = mlflow.assessments(&tr).await;
    let fb = find(&a, "grpc_thumbs");
    assert_eq!(fb.len(), 1);
    assert_eq!(fb[0]["feedback"]["value"], false);
    assert_eq!(fb[0]["source"]["source_id"], "grpc-user");
    assert_eq!(fb[0]["rationale"], "wrong answer");
    let ex = find(&a, "grpc_expected");
    assert_eq!(ex[0]["source"]["source_type"], "LLM_JUDGE");
}

#[tokio::test]
async fn feedback_before_the_trace_ends_logged() {
    let (mlflow, _exp, gw) = setup(|c| {
        c.feedback.retry_interval = Duration::from_millis(200);
    })
    .await;
    let crid = format!("early-{}", unique());
    let (code, body) = post_feedback(
        gw.api_addr,
        "/v1/feedback",
        &json!({"client_request_id": crid, "name": "early_vote", "value": 1}),
        &[],
    )
    .await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["status"], "pending");
    let id = body["feedback_id"].as_str().unwrap().to_string();
    assert_eq!(
        get_status(gw.api_addr, &id, &[]).await.1["status"],
        "pending"
    );

    let tr = send_trace(gw.otlp_http_addr, &crid).await;
    let done = wait_status(gw.api_addr, &id, "logged", Duration::from_secs(30)).await;
    assert_eq!(done["trace_id"], tr.as_str());
    assert_eq!(find(&mlflow.assessments(&tr).await, "early_vote").len(), 1);
}

#[tokio::test]
async fn the_same_idempotency_key_leaves_exactly_one_assessment() {
    let (mlflow, _exp, gw) = setup(|_| {}).await;
    let crid = format!("idem-{}", unique());
    let tr = send_trace(gw.otlp_http_addr, &crid).await;
    trace_ready(&mlflow, &tr, &crid).await;
    let mut ids = vec![];
    for value in [true, false, true] {
        let (code, body) = post_feedback(
            gw.api_addr,
            "/v1/feedback",
            &json!({"client_request_id": crid, "name": "idem_vote", "value": value}),
            &[("Idempotency-Key", "click-123")],
        )
        .await;
        assert_eq!(code, 201, "{body}");
        ids.push(body["assessment_id"].clone());
    }
    assert!(ids.iter().all(|i| *i == ids[0]));
    // Without a key, an identical retry is the same vote too.
    for _ in 0..2 {
        let (code, _) = post_feedback(
            gw.api_addr,
            "/v1/feedback",
            &json!({"client_request_id": crid, "name": "keyless_vote", "value": "ok"}),
            &[],
        )
        .await;
        assert_eq!(code, 201);
    }
    let a = mlflow.assessments(&tr).await;
    assert_eq!(find(&a, "idem_vote").len(), 1, "{a:#?}");
    assert_eq!(find(&a, "keyless_vote").len(), 1);
}

#[tokio::test]
async fn the_same_key_across_a_gateway_restart_still_logs_once() {
    // A restart forgets the record in memory: MLflow's duplicate-id error proves the first
    // attempt landed and counts as success.
    let mlflow = Mlflow::new(shared_mlflow());
    let exp = mlflow.create_experiment("idem-restart").await;
    let crid = format!("idem-r-{}", unique());
    let gw = gateway(&mlflow.url, &exp, |_| {}).await;
    let tr = send_trace(gw.otlp_http_addr, &crid).await;
    trace_ready(&mlflow, &tr, &crid).await;
    let body = json!({"client_request_id": crid, "name": "restart_vote", "value": true});
    let (code, _) = post_feedback(
        gw.api_addr,
        "/v1/feedback",
        &body,
        &[("Idempotency-Key", "k1")],
    )
    .await;
    assert_eq!(code, 201);
    gw.shutdown().await;
    let gw = gateway(&mlflow.url, &exp, |_| {}).await;
    let (code, reply) = post_feedback(
        gw.api_addr,
        "/v1/feedback",
        &body,
        &[("Idempotency-Key", "k1")],
    )
    .await;
    assert_eq!(code, 201, "{reply}");
    assert_eq!(
        find(&mlflow.assessments(&tr).await, "restart_vote").len(),
        1
    );
}

#[tokio::test]
async fn an_unknown_request_id_expires_cleanly() {
    let (_mlflow, _exp, gw) = setup(|c| {
        c.feedback.pending_ttl = Duration::from_secs(2);
        c.feedback.retry_interval = Duration::from_millis(200);
    })
    .await;
    let (code, body) = post_feedback(
        gw.api_addr,
        "/v1/feedback",
        &json!({"client_request_id": format!("never-{}", unique()), "name": "lost", "value": 1}),
        &[],
    )
    .await;
    assert_eq!(code, 202);
    let id = body["feedback_id"].as_str().unwrap();
    let expired = wait_status(gw.api_addr, id, "expired", Duration::from_secs(20)).await;
    assert!(
        expired["detail"].as_str().unwrap().contains("expired"),
        "{expired}"
    );
    let text = metrics_text(gw.api_addr).await;
    assert!(text.contains("gateway_feedback_expired_total"), "{text}");
}

#[tokio::test]
async fn a_restarted_gateway_resolves_the_request_id_through_mlflow() {
    let mlflow = Mlflow::new(shared_mlflow());
    let exp = mlflow.create_experiment("restart").await;
    let crid = format!("restart-{}", unique());
    let gw = gateway(&mlflow.url, &exp, |_| {}).await;
    let tr = send_trace(gw.otlp_http_addr, &crid).await;
    trace_ready(&mlflow, &tr, &crid).await;
    gw.shutdown().await;
    // A fresh gateway (empty index) routing elsewhere by default: only MLflow's search knows.
    let other = mlflow.create_experiment("restart-other").await;
    let gw = gateway(&mlflow.url, &other, |_| {}).await;
    let (code, body) = post_feedback(
        gw.api_addr,
        "/v1/feedback",
        &json!({"client_request_id": crid, "name": "after_restart", "value": true}),
        &[],
    )
    .await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["trace_id"], tr.as_str());
    assert_eq!(
        find(&mlflow.assessments(&tr).await, "after_restart").len(),
        1
    );
}

#[tokio::test]
async fn pending_feedback_survives_a_restart_on_the_same_data_dir() {
    let mlflow = Mlflow::new(shared_mlflow());
    let exp = mlflow.create_experiment("pending-restart").await;
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_owned();
    let crid = format!("durable-{}", unique());
    let gw = gateway(&mlflow.url, &exp, |c| c.data_dir = Some(dir.clone())).await;
    let (code, body) = post_feedback(
        gw.api_addr,
        "/v1/feedback",
        &json!({"client_request_id": crid, "name": "durable_vote", "value": true}),
        &[],
    )
    .await;
    assert_eq!(code, 202);
    let id = body["feedback_id"].as_str().unwrap().to_string();
    drop(gw); // an abrupt stop: no drain
    let gw = gateway(&mlflow.url, &exp, |c| {
        c.data_dir = Some(dir.clone());
        c.feedback.retry_interval = Duration::from_millis(200);
    })
    .await;
    assert_eq!(
        get_status(gw.api_addr, &id, &[]).await.1["status"],
        "pending"
    );
    let tr = send_trace(gw.otlp_http_addr, &crid).await;
    wait_status(gw.api_addr, &id, "logged", Duration::from_secs(30)).await;
    assert_eq!(
        find(&mlflow.assessments(&tr).await, "durable_vote").len(),
        1
    );
}

#[tokio::test]
async fn tokens_are_required_when_configured_and_bad_ones_log_nothing() {
    let (mlflow, _exp, gw) = setup(|c| {
        c.feedback.tokens = vec![Secret::new("s3cret-token")];
    })
    .await;
    let crid = format!("auth-{}", unique());
    let tr = send_trace(gw.otlp_http_addr, &crid).await;
    trace_ready(&mlflow, &tr, &crid).await;
    let body = json!({"client_request_id": crid, "name": "guarded", "value": true});
    let (code, _) = post_feedback(gw.api_addr, "/v1/feedback", &body, &[]).await;
    assert_eq!(code, 401);
    let (code, _) = post_feedback(
        gw.api_addr,
        "/v1/feedback",
        &body,
        &[("Authorization", "Bearer wrong")],
    )
    .await;
    assert_eq!(code, 403);
    let (code, _) = post_feedback(
        gw.api_addr,
        "/v1/expectations",
        &body,
        &[("Authorization", "Bearer wrong")],
    )
    .await;
    assert_eq!(code, 403);
    assert_eq!(get_status(gw.api_addr, "gw-x", &[]).await.0, 401);

    let mut client = FeedbackServiceClient::connect(format!("http://{}", gw.otlp_grpc_addr))
        .await
        .unwrap();
    let req = LogAssessmentRequest {
        target: Some(Target::ClientRequestId(crid.clone())),
        name: "guarded".into(),
        value: Some(prost_types::Value {
            kind: Some(prost_types::value::Kind::BoolValue(true)),
        }),
        ..Default::default()
    };
    assert_eq!(
        client.log_feedback(req.clone()).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
    let mut bad = tonic::Request::new(req.clone());
    bad.metadata_mut()
        .insert("authorization", "Bearer nope".parse().unwrap());
    assert_eq!(
        client.log_feedback(bad).await.unwrap_err().code(),
        tonic::Code::PermissionDenied
    );
    assert!(
        find(&mlflow.assessments(&tr).await, "guarded").is_empty(),
        "nothing logged"
    );

    let (code, reply) = post_feedback(
        gw.api_addr,
        "/v1/feedback",
        &body,
        &[("Authorization", "Bearer s3cret-token")],
    )
    .await;
    assert_eq!(code, 201, "{reply}");
    assert_eq!(find(&mlflow.assessments(&tr).await, "guarded").len(), 1);
}

#[tokio::test]
async fn invalid_and_oversize_requests_are_refused_clearly() {
    let (_mlflow, _exp, gw) = setup(|c| c.feedback.max_body_bytes = 2048).await;
    for (body, field) in [
        (json!({"name": "n", "value": 1}), "client_request_id"),
        (json!({"client_request_id": "r", "value": 1}), "name"),
        (json!({"client_request_id": "r", "name": "n"}), "value"),
        (
            json!({"client_request_id": "r", "name": "n", "value": 1, "source": {"type": "robot"}}),
            "source.type",
        ),
        (
            json!({"trace_id": "tr-nope", "name": "n", "value": 1}),
            "trace_id",
        ),
    ] {
        let (code, reply) = post_feedback(gw.api_addr, "/v1/feedback", &body, &[]).await;
        assert_eq!(code, 400, "{body}");
        assert_eq!(reply["field"], field, "{reply}");
        assert!(
            reply["error"].as_str().unwrap().starts_with(field),
            "{reply}"
        );
    }
    let huge = json!({"client_request_id": "r", "name": "n", "value": "x".repeat(4096)});
    let (code, _) = post_feedback(gw.api_addr, "/v1/feedback", &huge, &[]).await;
    assert_eq!(code, 413);
    let text = metrics_text(gw.api_addr).await;
    assert!(
        text.contains("gateway_feedback_rejected_total{reason=\"invalid\"}"),
        "{text}"
    );
}
