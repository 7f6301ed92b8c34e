//! Tenants of a shared gateway against a real MLflow 3.17.2: each row of README's "Tenants and
//! TLS" table, with tenant A and tenant B each holding their own experiments. What lands (or
//! does not) is read back through MLflow's own REST API.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mlflow_otlp_gateway::Gateway;
use mlflow_otlp_gateway::config::{Config, Secret, TenantConfig};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use serde_json::{Value as Json, json};
use support::*;

const TOKEN_A: &str = "token-of-tenant-a";
const TOKEN_B: &str = "token-of-tenant-b";

/// Two tenants' experiment prefixes, unique to one test, with one experiment each.
struct Tenancy {
    mlflow: Mlflow,
    prefix_a: String,
    prefix_b: String,
    exp_a: String,
    exp_b: String,
}

async fn create_named(mlflow: &Mlflow, name: &str) -> String {
    let (status, body) = mlflow
        .post("/api/2.0/mlflow/experiments/create", &json!({"name": name}))
        .await;
    assert_eq!(status, 200, "create {name}: {body}");
    body["experiment_id"].as_str().unwrap().to_string()
}

async fn tenancy(mlflow_url: &str) -> Tenancy {
    let mlflow = Mlflow::new(mlflow_url);
    let u = unique();
    let (prefix_a, prefix_b) = (format!("ta{u}"), format!("tb{u}"));
    let exp_a = create_named(&mlflow, &format!("{prefix_a}-prod")).await;
    let exp_b = create_named(&mlflow, &format!("{prefix_b}-prod")).await;
    Tenancy {
        mlflow,
        prefix_a,
        prefix_b,
        exp_a,
        exp_b,
    }
}

fn tenant(name: &str, token: &str, prefix: &str) -> TenantConfig {
    let mut t: TenantConfig = toml::from_str(&format!(
        "name = '{name}'\nexperiments = ['{prefix}-*']\ndefault_experiment = '{prefix}-prod'"
    ))
    .expect("tenant");
    t.tokens = vec![Secret::new(token)];
    t
}

/// A shared gateway for tenants A and B, every request authenticated.
async fn shared_gateway(t: &Tenancy, tweak: impl FnOnce(&mut Config)) -> Gateway {
    gateway(&t.mlflow.url, "0", |cfg| {
        cfg.auth.required = true;
        cfg.tenants = vec![
            tenant("team-a", TOKEN_A, &t.prefix_a),
            tenant("team-b", TOKEN_B, &t.prefix_b),
        ];
        tweak(cfg);
    })
    .await
}

/// A two-span turn; returns its MLflow trace id and the request.
fn turn(
    resource: Vec<opentelemetry_proto::tonic::common::v1::KeyValue>,
) -> (String, ExportTraceServiceRequest) {
    let root = SpanSpec::root(random_trace_id(), "turn", now_nanos() - 1_000_000_000, 30)
        .with(vec![s("client_request_id", &format!("req-{}", unique()))]);
    let child = SpanSpec::child(&root, "llm", 1, 10);
    (
        tr_id(&root.trace_id),
        request(resource, vec![child.build(), root.build()]),
    )
}

async fn post(
    http: SocketAddr,
    req: &ExportTraceServiceRequest,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let r = post_http(
        http,
        prost::Message::encode_to_vec(req),
        "application/x-protobuf",
        None,
        headers,
    )
    .await;
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (
        status,
        headers,
        r.bytes().await.unwrap_or_default().to_vec(),
    )
}

async fn grpc_export(
    gw: &Gateway,
    req: ExportTraceServiceRequest,
    token: Option<&str>,
    experiment: Option<&str>,
) -> Result<
    opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse,
    tonic::Status,
> {
    let mut client = TraceServiceClient::connect(format!("http://{}", gw.otlp_grpc_addr))
        .await
        .expect("gRPC connect");
    let mut request = tonic::Request::new(req);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    if let Some(exp) = experiment {
        request
            .metadata_mut()
            .insert("x-mlflow-experiment-id", exp.parse().unwrap());
    }
    client.export(request).await.map(|r| r.into_inner())
}

/// Sends an allowed trace for tenant A and waits until it lands: anything A sent before it
/// would have landed by then too (one pipeline, in order).
async fn barrier(t: &Tenancy, gw: &Gateway) {
    let (trace, req) = turn(vec![s("service.name", "barrier")]);
    let (status, _, body) = post(
        gw.otlp_http_addr,
        &req,
        &[("authorization", &format!("Bearer {TOKEN_A}"))],
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    t.mlflow.wait_spans(&trace, 2).await;
}

async fn assert_absent(mlflow: &Mlflow, traces: &[&str]) {
    for trace in traces {
        assert!(
            mlflow.trace_info(trace).await.is_none(),
            "trace {trace} landed in MLflow"
        );
    }
}

#[tokio::test]
async fn missing_or_unknown_credentials_are_refused_and_nothing_lands() {
    let t = tenancy(shared_mlflow()).await;
    let gw = shared_gateway(&t, |_| {}).await;
    let (trace_none, req_none) = turn(vec![]);
    let (status, headers, _) = post(gw.otlp_http_addr, &req_none, &[]).await;
    assert_eq!(status, 401);
    assert!(
        headers
            .get("www-authenticate")
            .is_some_and(|v| v.to_str().unwrap().starts_with("Bearer")),
        "{headers:?}"
    );
    let (trace_bad, req_bad) = turn(vec![]);
    let (status, _, _) = post(
        gw.otlp_http_addr,
        &req_bad,
        &[("authorization", "Bearer not-a-tenant")],
    )
    .await;
    assert_eq!(status, 401);
    let (trace_grpc, req_grpc) = turn(vec![]);
    let err = grpc_export(&gw, req_grpc, Some("not-a-tenant"), None)
        .await
        .expect_err("unknown token refused");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let (trace_grpc2, req_grpc2) = turn(vec![]);
    let err = grpc_export(&gw, req_grpc2, None, None)
        .await
        .expect_err("no token refused");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    barrier(&t, &gw).await;
    assert_absent(
        &t.mlflow,
        &[&trace_none, &trace_bad, &trace_grpc, &trace_grpc2],
    )
    .await;
    let metrics = metrics_text(gw.api_addr).await;
    assert!(
        metrics.contains("gateway_receiver_requests_refused_total{transport=\"http_protobuf\",reason=\"unauthenticated\"}")
            && metrics.contains("reason=\"invalid_credentials\""),
        "{metrics}"
    );
    assert!(!metrics.contains(TOKEN_A), "a token in the metrics");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_tenant_naming_another_tenants_experiment_is_denied_and_nothing_lands() {
    let t = tenancy(shared_mlflow()).await;
    let gw = shared_gateway(&t, |_| {}).await;
    let auth_a = format!("Bearer {TOKEN_A}");
    let (trace_http, req) = turn(vec![]);
    let (status, _, body) = post(
        gw.otlp_http_addr,
        &req,
        &[
            ("authorization", &auth_a),
            ("x-mlflow-experiment-id", &t.exp_b),
        ],
    )
    .await;
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
    let (trace_grpc, req) = turn(vec![]);
    let err = grpc_export(&gw, req, Some(TOKEN_A), Some(&t.exp_b))
        .await
        .expect_err("another tenant's experiment refused");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    assert!(
        !err.message().contains(&t.prefix_b),
        "the refusal names B's experiment: {}",
        err.message()
    );

    // The header naming A's own experiment goes through.
    let (trace_own, req) = turn(vec![]);
    let reply = grpc_export(&gw, req, Some(TOKEN_A), Some(&t.exp_a))
        .await
        .expect("own experiment");
    assert_eq!(reply.partial_success, None);
    t.mlflow.wait_spans(&trace_own, 2).await;
    let info = t.mlflow.trace_info(&trace_own).await.unwrap();
    assert_eq!(
        info["trace_location"]["mlflow_experiment"]["experiment_id"],
        t.exp_a.as_str()
    );

    barrier(&t, &gw).await;
    assert_absent(&t.mlflow, &[&trace_http, &trace_grpc]).await;
    assert!(
        t.mlflow.search(&t.exp_b, "").await.is_empty(),
        "spans landed in B"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_resource_naming_another_tenants_experiment_is_rejected_alone() {
    let t = tenancy(shared_mlflow()).await;
    let gw = shared_gateway(&t, |_| {}).await;
    let (trace_b, mut req) = turn(vec![s(
        "mlflow.experiment.name",
        &format!("{}-prod", t.prefix_b),
    )]);
    let (trace_a, own) = turn(vec![s("service.name", "chat")]);
    req.resource_spans.extend(own.resource_spans);
    let (status, _, body) = post(
        gw.otlp_http_addr,
        &req,
        &[("authorization", &format!("Bearer {TOKEN_A}"))],
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let reply: opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse =
        prost::Message::decode(&body[..]).unwrap();
    let partial = reply.partial_success.expect("partial success");
    assert_eq!(partial.rejected_spans, 2);
    assert!(
        partial.error_message.contains("team-a"),
        "{}",
        partial.error_message
    );

    // A's own resource went to A's default experiment.
    t.mlflow.wait_spans(&trace_a, 2).await;
    let info = t.mlflow.trace_info(&trace_a).await.unwrap();
    assert_eq!(
        info["trace_location"]["mlflow_experiment"]["experiment_id"],
        t.exp_a.as_str()
    );
    barrier(&t, &gw).await;
    assert_absent(&t.mlflow, &[&trace_b]).await;
    assert!(
        t.mlflow.search(&t.exp_b, "").await.is_empty(),
        "spans landed in B"
    );

    // A request that only names B's experiment is refused whole.
    let (trace_b2, req) = turn(vec![s("mlflow.experiment.id", &t.exp_b)]);
    let (status, _, _) = post(
        gw.otlp_http_addr,
        &req,
        &[("authorization", &format!("Bearer {TOKEN_A}"))],
    )
    .await;
    assert_eq!(status, 403);
    barrier(&t, &gw).await;
    assert_absent(&t.mlflow, &[&trace_b2]).await;
    let metrics = metrics_text(gw.api_addr).await;
    assert!(
        metrics.contains("reason=\"forbidden_experiment\",tenant=\"team-a\""),
        "{metrics}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn experiments_that_do_not_exist_are_created_only_for_tenants_allowed_to() {
    let t = tenancy(shared_mlflow()).await;
    let gw = shared_gateway(&t, |cfg| {
        cfg.tenants[1].create_experiments = true;
    })
    .await;
    let missing_a = format!("{}-new-{}", t.prefix_a, unique());
    let (trace, req) = turn(vec![s("mlflow.experiment.name", &missing_a)]);
    let (status, _, body) = post(
        gw.otlp_http_addr,
        &req,
        &[("authorization", &format!("Bearer {TOKEN_A}"))],
    )
    .await;
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("may not create experiments"), "{text}");
    barrier(&t, &gw).await;
    assert_absent(&t.mlflow, &[&trace]).await;
    assert!(
        t.mlflow.experiment_by_name(&missing_a).await.is_none(),
        "the experiment was created"
    );

    let missing_b = format!("{}-new-{}", t.prefix_b, unique());
    let (trace, req) = turn(vec![s("mlflow.experiment.name", &missing_b)]);
    let (status, _, _) = post(
        gw.otlp_http_addr,
        &req,
        &[("authorization", &format!("Bearer {TOKEN_B}"))],
    )
    .await;
    assert_eq!(status, 200);
    t.mlflow.wait_spans(&trace, 2).await;
    assert!(t.mlflow.experiment_by_name(&missing_b).await.is_some());
    gw.shutdown().await;
}

async fn feedback(api: SocketAddr, token: &str, body: &Json) -> (u16, Json) {
    let r = http_client()
        .post(format!("http://{api}/v1/feedback"))
        .header("authorization", format!("Bearer {token}"))
        .json(body)
        .send()
        .await
        .expect("POST /v1/feedback");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Json::Null))
}

#[tokio::test]
async fn feedback_reaches_only_the_tenants_own_traces() {
    let t = tenancy(shared_mlflow()).await;
    let gw = shared_gateway(&t, |_| {}).await;
    let crid_b = format!("req-b-{}", unique());
    let root = SpanSpec::root(random_trace_id(), "turn", now_nanos() - 1_000_000_000, 30)
        .with(vec![s("client_request_id", &crid_b)]);
    let trace_b = tr_id(&root.trace_id);
    let (status, _, _) = post(
        gw.otlp_http_addr,
        &request(vec![], vec![root.build()]),
        &[("authorization", &format!("Bearer {TOKEN_B}"))],
    )
    .await;
    assert_eq!(status, 200);
    t.mlflow.wait_spans(&trace_b, 1).await;

    let vote = |crid: &str| json!({"client_request_id": crid, "name": "helpful", "value": true});
    let (code, body) = feedback(gw.api_addr, TOKEN_A, &vote(&crid_b)).await;
    assert_eq!(code, 404, "{body}");
    let (code, body) = feedback(
        gw.api_addr,
        TOKEN_A,
        &json!({"trace_id": trace_b, "name": "helpful", "value": true}),
    )
    .await;
    assert_eq!(code, 404, "{body}");
    let (code, body) = feedback(gw.api_addr, "not-a-tenant", &vote(&crid_b)).await;
    assert_eq!(code, 401, "{body}");

    // B's own vote is logged, and only B can read its record.
    let (code, body) = feedback(gw.api_addr, TOKEN_B, &vote(&crid_b)).await;
    assert_eq!(code, 201, "{body}");
    let id = body["feedback_id"].as_str().unwrap().to_string();
    let get = |token: &'static str| {
        let url = format!("http://{}/v1/feedback/{id}", gw.api_addr);
        async move {
            http_client()
                .get(url)
                .header("authorization", format!("Bearer {token}"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(get(TOKEN_B).await, 200);
    assert_eq!(get(TOKEN_A).await, 404);

    let assessments = t.mlflow.assessments(&trace_b).await;
    assert_eq!(assessments.len(), 1, "only B's vote: {assessments:#?}");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_tenant_over_its_quota_gets_retryable_refusals_and_the_other_flows() {
    let t = tenancy(shared_mlflow()).await;
    let gw = shared_gateway(&t, |cfg| {
        cfg.tenants[0].max_spans_per_second = 50.0;
    })
    .await;
    let (http, auth_a, auth_b) = (
        gw.otlp_http_addr,
        format!("Bearer {TOKEN_A}"),
        format!("Bearer {TOKEN_B}"),
    );
    let flood = tokio::spawn(async move {
        // Ten times the quota for three seconds: 25 requests of 20 spans a second.
        let (mut ok, mut over, mut retry_after) = (0, 0, None);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(3) {
            let root = SpanSpec::root(random_trace_id(), "flood", now_nanos() - 1_000_000, 1);
            let spans: Vec<_> = (0..19)
                .map(|i| SpanSpec::child(&root, &format!("s{i}"), 0, 1).build())
                .chain([root.build()])
                .collect();
            let (status, headers, _) =
                post(http, &request(vec![], spans), &[("authorization", &auth_a)]).await;
            match status {
                200 => ok += 1,
                429 => {
                    over += 1;
                    retry_after = headers.get("retry-after").cloned();
                }
                other => panic!("flood got {other}"),
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        (ok, over, retry_after)
    });
    let mut b_traces = Vec::new();
    for _ in 0..20 {
        let (trace, req) = turn(vec![]);
        let (status, _, _) = post(http, &req, &[("authorization", &auth_b)]).await;
        assert_eq!(status, 200, "B refused while A floods");
        b_traces.push(trace);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let (ok, over, retry_after) = flood.await.unwrap();
    assert!(
        over > ok,
        "A was not held to its quota: {ok} accepted, {over} refused"
    );
    assert!(retry_after.is_some(), "429 without Retry-After");
    for trace in &b_traces {
        t.mlflow.wait_spans(trace, 2).await;
    }
    let metrics = metrics_text(gw.api_addr).await;
    assert!(
        metrics.contains("reason=\"over_quota\",tenant=\"team-a\""),
        "{metrics}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn tokens_files_are_reread_without_a_restart() {
    let t = tenancy(shared_mlflow()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("team-a.tokens");
    std::fs::write(&file, "# team a\nfirst-token\n").unwrap();
    let gw = shared_gateway(&t, |cfg| {
        cfg.tenants[0].tokens = vec![];
        cfg.tenants[0].tokens_file = Some(file.clone());
    })
    .await;
    let send = |token: &'static str| async move {
        let (_, req) = turn(vec![]);
        post(
            gw.otlp_http_addr,
            &req,
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await
        .0
    };
    assert_eq!(send("first-token").await, 200);
    assert_eq!(send("second-token").await, 401);
    std::fs::write(&file, "second-token\n").unwrap();
    let started = Instant::now();
    while send("second-token").await != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the new token never worked"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        send("first-token").await,
        401,
        "the removed token still works"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn an_experiment_id_is_allowed_by_the_name_it_has_in_mlflow() {
    let t = tenancy(shared_mlflow()).await;
    let gw = shared_gateway(&t, |_| {}).await;
    let other_a = create_named(&t.mlflow, &format!("{}-staging", t.prefix_a)).await;
    let (trace, req) = turn(vec![s("mlflow.experiment.id", &other_a)]);
    let (status, _, body) = post(
        gw.otlp_http_addr,
        &req,
        &[("authorization", &format!("Bearer {TOKEN_A}"))],
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    t.mlflow.wait_spans(&trace, 2).await;
    let info = t.mlflow.trace_info(&trace).await.unwrap();
    assert_eq!(
        info["trace_location"]["mlflow_experiment"]["experiment_id"],
        other_a.as_str()
    );
    gw.shutdown().await;
}

/// MLflow's basic-auth app: tenant A writes under its own MLflow user, which may edit one of
/// A's experiments and only read the other; the gateway writes B under its admin identity.
#[tokio::test]
async fn a_tenant_whose_mlflow_user_lacks_permission_is_dead_lettered_alone() {
    const ADMIN: (&str, &str) = ("admin", "admin-password-1234");
    let server = MlflowServer::start_with_basic_auth(ADMIN.0, ADMIN.1);
    let http = http_client();
    let admin = |path: &str, body: Json| {
        let url = format!("{}{path}", server.url);
        let request = http
            .post(url)
            .basic_auth(ADMIN.0, Some(ADMIN.1))
            .json(&body);
        async move {
            let r = request.send().await.expect("MLflow admin call");
            let status = r.status();
            let body: Json = r.json().await.unwrap_or(Json::Null);
            assert!(status.is_success(), "{status}: {body}");
            body
        }
    };
    let u = unique();
    let (prefix_a, prefix_b) = (format!("ta{u}"), format!("tb{u}"));
    let create = |name: String| {
        let admin = &admin;
        async move {
            admin("/api/2.0/mlflow/experiments/create", json!({"name": name}))
                .await["experiment_id"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let editable = create(format!("{prefix_a}-prod")).await;
    let locked = create(format!("{prefix_a}-locked")).await;
    let exp_b = create(format!("{prefix_b}-prod")).await;
    admin(
        "/api/2.0/mlflow/users/create",
        json!({"username": "alice", "password": "alice-password-1234"}),
    )
    .await;
    admin(
        "/api/3.0/mlflow/users/permissions/grant",
        json!({"username": "alice", "resource_type": "experiment",
               "resource_id": editable, "permission": "EDIT"}),
    )
    .await;
    let data = tempfile::tempdir().unwrap();
    let gw = gateway(&server.url, "0", |cfg| {
        cfg.data_dir = Some(data.path().to_path_buf());
        cfg.mlflow.username = Some(ADMIN.0.into());
        cfg.mlflow.password = Some(Secret::new(ADMIN.1));
        cfg.auth.required = true;
        let mut a = tenant("team-a", TOKEN_A, &prefix_a);
        a.mlflow_username_env = Some("TEST_TEAM_A_MLFLOW_USER".into());
        a.mlflow_password_env = Some("TEST_TEAM_A_MLFLOW_PASSWORD".into());
        cfg.tenants = vec![a, tenant("team-b", TOKEN_B, &prefix_b)];
        // The tenant's credentials, as the gateway reads them from its environment.
        cfg.apply_mlflow_env(&|k| match k {
            "TEST_TEAM_A_MLFLOW_USER" => Some("alice".into()),
            "TEST_TEAM_A_MLFLOW_PASSWORD" => Some("alice-password-1234".into()),
            _ => None,
        });
    })
    .await;

    let send = |token: &'static str, exp: String| async move {
        let (trace, req) = turn(vec![s("mlflow.experiment.id", &exp)]);
        let (status, _, _) = post(
            gw.otlp_http_addr,
            &req,
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await;
        assert_eq!(
            status, 200,
            "accepted: the experiment is among the tenant's"
        );
        trace
    };
    let denied = send(TOKEN_A, locked.clone()).await;
    let own = send(TOKEN_A, editable.clone()).await;
    let other = send(TOKEN_B, exp_b.clone()).await;
    let auth_get = |trace: String| {
        let http = http.clone();
        let url = format!("{}/api/3.0/mlflow/traces/get", server.url);
        async move {
            let started = Instant::now();
            loop {
                let r = http
                    .get(&url)
                    .query(&[("trace_id", trace.as_str()), ("allow_partial", "true")])
                    .basic_auth(ADMIN.0, Some(ADMIN.1))
                    .send()
                    .await
                    .unwrap();
                if r.status() == 200 {
                    let body: Json = r.json().await.unwrap();
                    if body["trace"]["spans"].as_array().map_or(0, |s| s.len()) == 2 {
                        return;
                    }
                }
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "trace {trace} never landed"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    auth_get(own).await;
    auth_get(other).await;

    // A's refused spans are in the dead-letter file, as A's, with MLflow's reason.
    let letters = data.path().join("deadletter/dead-letters.jsonl");
    let started = Instant::now();
    let letter = loop {
        let text = std::fs::read_to_string(&letters).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(&locked)) {
            break serde_json::from_str::<Json>(line).unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no dead letter for A"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(letter["tenant"], "team-a", "{letter}");
    assert!(
        letter["reason"].as_str().unwrap().contains("403"),
        "MLflow's reason: {letter}"
    );
    assert_eq!(letter["spans"], 2);
    let r = http
        .get(format!("{}/api/3.0/mlflow/traces/{denied}", server.url))
        .basic_auth(ADMIN.0, Some(ADMIN.1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "A's refused trace is not in MLflow");
    // One tenant's refusal is not the gateway's problem.
    assert_eq!(gw.readiness(), Ok(()));
    gw.shutdown().await;
}
