//! Tail sampling end to end against a real MLflow: the policies keep what they say (late
//! children counted, sessions whole), feedback promotes a dropped trace (across a restart
//! too, and when it came before the trace), and feedback after the window gets 410.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use mlflow_otlp_gateway::Gateway;
use mlflow_otlp_gateway::config::{AttributeMatch, Config, SamplingConfig};
use mlflow_otlp_gateway::pipeline::sampling::policy::stable_hash;
use serde_json::{Value as Json, json};
use support::*;

const DECISION_WAIT: Duration = Duration::from_millis(1500);

fn sampling(cfg: &mut Config, dir: &Path, probability: f64) {
    cfg.data_dir = Some(dir.to_path_buf());
    cfg.feedback.retry_interval = Duration::from_millis(200);
    cfg.sampling = SamplingConfig {
        enabled: true,
        decision_wait: DECISION_WAIT,
        feedback_window: Duration::from_secs(120),
        probability,
        keep_slower_than: Some(Duration::from_secs(2)),
        keep_when: vec![
            AttributeMatch {
                key: "mlflow.trace.user".into(),
                values: vec!["vip-*".into()],
            },
            AttributeMatch {
                key: "gen_ai.request.model".into(),
                values: vec!["special-model".into()],
            },
        ],
        ..SamplingConfig::default()
    };
}

/// A session id whose hash drops it at probability 0.5: a trace in it lands only if another
/// policy keeps it.
fn dropped_session(prefix: &str) -> String {
    (0..)
        .map(|n| format!("{prefix}-{n}"))
        .find(|s| stable_hash(s.as_bytes()) >= (0.5 * u64::MAX as f64) as u64)
        .unwrap_or_default()
}

async fn send(gw: &Gateway, spans: Vec<&SpanSpec>) {
    let r = post_protobuf(
        gw.otlp_http_addr,
        &request(
            service_resource("sampled-app"),
            spans.iter().map(|s| s.build()).collect(),
        ),
    )
    .await;
    assert_eq!(r.status(), 200);
}

fn root(
    name: &str,
    dur_ms: u64,
    attrs: Vec<opentelemetry_proto::tonic::common::v1::KeyValue>,
) -> SpanSpec {
    SpanSpec::root(random_trace_id(), name, now_nanos() - 5_000_000_000, dur_ms).with(attrs)
}

async fn post_feedback(api: SocketAddr, crid: &str, name: &str) -> (u16, Json) {
    let r = http_client()
        .post(format!("http://{api}/v1/feedback"))
        .json(&json!({"client_request_id": crid, "name": name, "value": true}))
        .send()
        .await
        .expect("POST feedback");
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or(Json::Null))
}

async fn wait_logged(api: SocketAddr, id: &str) -> Json {
    let started = Instant::now();
    loop {
        let r = http_client()
            .get(format!("http://{api}/v1/feedback/{id}"))
            .send()
            .await
            .expect("GET feedback");
        let body: Json = r.json().await.unwrap_or(Json::Null);
        if body["status"] == "logged" {
            return body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "feedback {id} never logged: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits for a counter in /metrics to reach `at_least`.
async fn wait_metric(api: SocketAddr, line_start: &str, at_least: f64) {
    let started = Instant::now();
    loop {
        let text = metrics_text(api).await;
        let value = text
            .lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if value >= at_least {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{line_start} stayed at {value}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn policies_keep_what_matters_and_sessions_whole() {
    let mlflow = Mlflow::new(shared_mlflow());
    let exp = mlflow.create_experiment("sampling").await;
    let data = tempfile::tempdir().expect("tempdir");
    let gw = gateway(&mlflow.url, &exp, |c| sampling(c, data.path(), 0.5)).await;

    // Errors: a failed child sent before its root, and one arriving after it (within the wait).
    let early = root(
        "early error",
        30,
        vec![s("session.id", &dropped_session("err-1"))],
    );
    let mut failed = SpanSpec::child(&early, "tool", 1, 10);
    failed.error = true;
    send(&gw, vec![&failed]).await;
    send(&gw, vec![&early]).await;
    let late = root(
        "late error",
        30,
        vec![s("session.id", &dropped_session("err-2"))],
    );
    send(&gw, vec![&late]).await;
    tokio::time::sleep(DECISION_WAIT / 3).await;
    let mut late_failed = SpanSpec::child(&late, "tool", 1, 10);
    late_failed.error = true;
    send(&gw, vec![&late_failed]).await;
    // Slow, a VIP user (mapped to mlflow.trace.user), a model on a child span.
    let slow = root(
        "slow",
        3_000,
        vec![s("session.id", &dropped_session("slow-1"))],
    );
    let vip = root(
        "vip",
        30,
        vec![
            s("user.id", "vip-7"),
            s("session.id", &dropped_session("vip-1")),
        ],
    );
    let modeled = root(
        "modeled",
        30,
        vec![s("session.id", &dropped_session("model-1"))],
    );
    let llm = SpanSpec::child(&modeled, "chat", 1, 10)
        .with(vec![s("gen_ai.request.model", "special-model")]);
    send(&gw, vec![&slow, &vip, &modeled, &llm]).await;
    // Sessions of three turns each: kept or dropped whole, as the session's hash says.
    let mut sessions = Vec::new();
    for n in 0..16 {
        let session = format!("conversation-{}-{n}", unique());
        let turns: Vec<SpanSpec> = (0..3)
            .map(|t| root(&format!("turn {t}"), 30, vec![s("session.id", &session)]))
            .collect();
        send(&gw, turns.iter().collect()).await;
        let kept = stable_hash(session.as_bytes()) < (0.5 * u64::MAX as f64) as u64;
        sessions.push((session, kept, turns));
    }
    assert!(
        sessions.iter().any(|s| s.1) && sessions.iter().any(|s| !s.1),
        "both fates among 16 sessions"
    );

    for (trace, spans) in [
        (&early, 2),
        (&late, 2),
        (&slow, 1),
        (&vip, 1),
        (&modeled, 2),
    ] {
        let tr = tr_id(&trace.trace_id);
        mlflow.wait_spans(&tr, spans).await;
        mlflow
            .wait_trace(&tr, "its TraceInfo", |i| i["state"] != "IN_PROGRESS")
            .await;
    }
    for (session, kept, turns) in &sessions {
        if *kept {
            for t in turns {
                mlflow
                    .wait_trace(&tr_id(&t.trace_id), "its TraceInfo", |i| i["state"] == "OK")
                    .await;
            }
        }
        let _ = session;
    }
    // Everything kept has landed; what was dropped has had its decision and more.
    tokio::time::sleep(DECISION_WAIT).await;
    for (session, kept, turns) in &sessions {
        let landed: Vec<bool> = futures_landed(&mlflow, turns).await;
        assert!(
            landed.iter().all(|l| l == kept),
            "session {session} (kept: {kept}) landed {landed:?}"
        );
    }
    let text = metrics_text(gw.api_addr).await;
    for line in [
        "gateway_sampling_traces_kept_total{policy=\"error\"} 2",
        "gateway_sampling_traces_kept_total{policy=\"duration\"} 1",
        "gateway_sampling_traces_kept_total{policy=\"attribute\"} 2",
    ] {
        assert!(text.contains(line), "{line}\n{text}");
    }
    assert!(text.contains("gateway_sampling_traces_dropped_total{reason=\"probability\"}"));
    gw.shutdown().await;
}

async fn futures_landed(mlflow: &Mlflow, turns: &[SpanSpec]) -> Vec<bool> {
    let mut out = Vec::new();
    for t in turns {
        out.push(mlflow.trace_info(&tr_id(&t.trace_id)).await.is_some());
    }
    out
}

#[tokio::test]
async fn feedback_promotes_dropped_traces_across_a_restart() {
    let mlflow = Mlflow::new(shared_mlflow());
    let exp = mlflow.create_experiment("sampling-feedback").await;
    let data = tempfile::tempdir().expect("tempdir");
    let gw = gateway(&mlflow.url, &exp, |c| sampling(c, data.path(), 0.0)).await;

    // Feedback first, its trace after: pending until the sampler holds the trace.
    let early_crid = format!("early-{}", unique());
    let (code, early) = post_feedback(gw.api_addr, &early_crid, "early_vote").await;
    assert_eq!(code, 202, "{early}");
    let early_tr = send_trace(gw.otlp_http_addr, &early_crid).await;
    let logged = wait_logged(gw.api_addr, early["feedback_id"].as_str().unwrap()).await;
    assert_eq!(logged["trace_id"], early_tr.as_str());
    mlflow.wait_spans(&early_tr, 2).await;

    // Dropped, then the gateway restarts; feedback after it still brings the trace.
    let crid = format!("rated-{}", unique());
    let tr = send_trace(gw.otlp_http_addr, &crid).await;
    wait_metric(
        gw.api_addr,
        "gateway_sampling_traces_dropped_total{reason=\"probability\"}",
        2.0,
    )
    .await;
    gw.shutdown().await;
    assert!(
        mlflow.trace_info(&tr).await.is_none(),
        "dropped, not in MLflow"
    );

    let gw = gateway(&mlflow.url, &exp, |c| sampling(c, data.path(), 0.0)).await;
    let (code, body) = post_feedback(gw.api_addr, &crid, "thumbs_up").await;
    assert_eq!(code, 202, "{body}");
    wait_logged(gw.api_addr, body["feedback_id"].as_str().unwrap()).await;
    let info = mlflow
        .wait_trace(&tr, "its TraceInfo", |i| {
            i["client_request_id"] == crid.as_str()
        })
        .await;
    assert_eq!(info["state"], "OK");
    assert_eq!(mlflow.wait_spans(&tr, 2).await.len(), 2, "its spans too");
    let rated: Vec<Json> = mlflow
        .assessments(&tr)
        .await
        .into_iter()
        .filter(|a| a["assessment_name"] == "thumbs_up")
        .collect();
    assert_eq!(rated.len(), 1);
    wait_metric(gw.api_addr, "gateway_sampling_traces_promoted_total", 1.0).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn feedback_after_the_window_is_gone() {
    let mlflow = Mlflow::new(shared_mlflow());
    let exp = mlflow.create_experiment("sampling-gone").await;
    let data = tempfile::tempdir().expect("tempdir");
    let gw = gateway(&mlflow.url, &exp, |c| {
        sampling(c, data.path(), 0.0);
        c.sampling.decision_wait = Duration::from_millis(200);
        c.sampling.feedback_window = Duration::from_secs(2);
    })
    .await;
    let crid = format!("late-{}", unique());
    let tr = send_trace(gw.otlp_http_addr, &crid).await;
    wait_metric(
        gw.api_addr,
        "gateway_sampling_traces_discarded_total{reason=\"expired\"}",
        1.0,
    )
    .await;
    let (code, body) = post_feedback(gw.api_addr, &crid, "too_late").await;
    assert_eq!(code, 410, "{body}");
    assert!(
        body.to_string().contains("feedback window"),
        "the reason is given: {body}"
    );
    assert!(mlflow.trace_info(&tr).await.is_none());
    gw.shutdown().await;
}
