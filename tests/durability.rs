//! Never lose an acknowledged span: MLflow outages, gateway crashes, overload and damaged spool
//! files, against real MLflow 3.17.2 servers (their own, so they can be stopped, restarted and
//! frozen). Every test is bounded in time and talks to loopback only.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mlflow_otlp_gateway::config::FsyncPolicy;
use serde_json::json;
use support::*;

type Acked = Arc<Mutex<Vec<(String, String)>>>;

/// Sends traces at a steady pace until `stop`, retrying retryable refusals like an OTel SDK;
/// records every acknowledged (200) trace.
fn steady_load(
    http: std::net::SocketAddr,
    prefix: String,
    every: Duration,
    children: usize,
    acked: Acked,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut refusals = 0;
        let mut i = 0;
        while !stop.is_cancelled() {
            let crid = format!("{prefix}-{i}");
            i += 1;
            let (tr, status) =
                try_send_trace(&client, http, &crid, children, service_resource("load")).await;
            match status {
                Some(200) => acked.lock().unwrap().push((tr, crid)),
                Some(429) | Some(503) => refusals += 1,
                // The gateway was killed: this request was never acknowledged.
                None => break,
                other => panic!("unexpected answer {other:?}"),
            }
            tokio::time::sleep(every).await;
        }
        refusals
    })
}

#[tokio::test]
async fn mlflow_down_for_30_seconds_under_load_loses_nothing() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let state = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = MlflowServer::start_at(port, state.path());
    let mlflow = Mlflow::new(&server.url);
    let exp = mlflow.create_experiment("outage").await;
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_owned();
    let missing = format!("created-after-{}", unique());
    let gw = gateway(&mlflow.url, &exp, |c| {
        c.data_dir = Some(data_dir.clone());
        c.mlflow.create_missing_experiments = false;
        c.feedback.retry_interval = Duration::from_millis(300);
        c.mlflow.request_timeout = Duration::from_secs(5);
    })
    .await;

    let acked: Acked = Default::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let u = unique();
    let load = steady_load(
        gw.otlp_http_addr,
        format!("out-{u}"),
        Duration::from_millis(100),
        2,
        acked.clone(),
        stop.clone(),
    );

    tokio::time::sleep(Duration::from_secs(4)).await;
    server.stop();
    let down_at = Instant::now();

    // While MLflow is down: feedback for acknowledged traces is kept pending, and a trace for an
    // experiment that does not exist yet is accepted (it cannot be checked now).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during: Vec<(String, String)> = acked
        .lock()
        .unwrap()
        .iter()
        .rev()
        .take(3)
        .cloned()
        .collect();
    let mut feedback_ids = vec![];
    for (_, crid) in &during {
        let r = reqwest::Client::new()
            .post(format!("http://{}/v1/feedback", gw.api_addr))
            .json(&json!({"client_request_id": crid, "name": "outage_vote", "value": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let body: serde_json::Value = r.json().await.unwrap();
        feedback_ids.push(body["feedback_id"].as_str().unwrap().to_string());
    }
    let mut resource = service_resource("late");
    resource.push(s("mlflow.experiment.name", &missing));
    let (dead_tr, status) = try_send_trace(
        &reqwest::Client::new(),
        gw.otlp_http_addr,
        "dead-letter-1",
        1,
        resource,
    )
    .await;
    assert_eq!(status, Some(200));
    let ready = reqwest::get(format!("http://{}/readyz", gw.api_addr))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503, "not ready while MLflow is down");

    tokio::time::sleep(Duration::from_secs(30).saturating_sub(down_at.elapsed())).await;
    let server = MlflowServer::start_at(port, state.path());
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    let refusals = load.await.unwrap();
    let acked = acked.lock().unwrap().clone();
    println!(
        "acknowledged {} traces ({} spans), {refusals} retryable refusals",
        acked.len(),
        acked.len() * 3
    );
    assert!(acked.len() > 100, "steady load ran: {}", acked.len());

    // Every acknowledged span and every TraceInfo, counted exactly.
    assert_all_delivered(&mlflow, &acked, 3, Duration::from_secs(120)).await;
    // Every pending feedback.
    for id in &feedback_ids {
        let started = Instant::now();
        loop {
            let r: serde_json::Value =
                reqwest::get(format!("http://{}/v1/feedback/{id}", gw.api_addr))
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
            if r["status"] == "logged" {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "feedback {id}: {r}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    for (tr, _) in &during {
        let a = mlflow.assessments(tr).await;
        assert_eq!(
            a.iter()
                .filter(|x| x["assessment_name"] == "outage_vote")
                .count(),
            1
        );
    }

    // The trace whose experiment was missing went to the dead-letter file; after the fix
    // (creating the experiment) the replay subcommand delivers it.
    let letters = data_dir.join("deadletter/dead-letters.jsonl");
    let started = Instant::now();
    while !std::fs::read_to_string(&letters)
        .unwrap_or_default()
        .contains(&missing)
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no dead letter"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let report = gw.shutdown().await;
    assert!(report.drained, "{report:?}");
    let (status, body) = mlflow
        .post(
            "/api/2.0/mlflow/experiments/create",
            &json!({"name": missing}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mlflow-otlp-gateway"))
        .arg("replay-dead-letters")
        .arg("--data-dir")
        .arg(&data_dir)
        .env("MLFLOW_TRACKING_URI", &mlflow.url)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1 delivered, 0 still failing"), "{stdout}");
    let info = mlflow
        .wait_trace(&dead_tr, "its client request id", |i| {
            i["client_request_id"] == "dead-letter-1"
        })
        .await;
    assert_eq!(
        info["trace_location"]["mlflow_experiment"]["experiment_id"],
        body["experiment_id"]
    );
    assert!(
        std::fs::read_to_string(&letters).unwrap().trim().is_empty(),
        "replayed letters removed"
    );
    drop(server);
}

#[tokio::test]
async fn a_gateway_killed_with_sigkill_under_load_delivers_every_acknowledged_span_after_restart() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mlflow = Mlflow::new(shared_mlflow());
    let exp = mlflow.create_experiment("sigkill").await;
    let data = tempfile::tempdir().unwrap();
    let mut gw = gateway_process(&mlflow.url, &exp, Some(data.path()), &[]);
    let acked: Acked = Default::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let u = unique();
    let mut loads = vec![];
    for k in 0..4 {
        loads.push(steady_load(
            gw.http,
            format!("kill-{u}-{k}"),
            Duration::from_millis(5),
            4,
            acked.clone(),
            stop.clone(),
        ));
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    gw.kill9();
    stop.cancel();
    for l in loads {
        // Requests in flight at the kill fail at the transport level and were never acked.
        let _ = l.await;
    }
    let acked = acked.lock().unwrap().clone();
    println!("acknowledged {} traces before SIGKILL", acked.len());
    assert!(acked.len() > 50);
    let _gw = gateway_process(&mlflow.url, &exp, Some(data.path()), &[]);
    assert_all_delivered(&mlflow, &acked, 5, Duration::from_secs(180)).await;
}

#[tokio::test]
async fn overload_with_mlflow_stalled_refuses_retryably_within_the_memory_budget() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let state = tempfile::tempdir().unwrap();
    let server = MlflowServer::start_at(free_port(), state.path());
    let mlflow = Mlflow::new(&server.url);
    let exp = mlflow.create_experiment("overload").await;
    let config = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    let queue_bytes: u64 = 8 << 20;
    std::fs::write(
        config.path(),
        format!(
            "[receiver]\nmax_message_bytes = 1048576\nmax_decompressed_bytes = 1048576\n\
             [queue]\nmax_bytes = {queue_bytes}\n[mlflow]\nrequest_timeout = \"2s\"\n\
             [retry]\nmax_backoff = \"1s\"\n"
        ),
    )
    .unwrap();
    let gw = gateway_process(
        &mlflow.url,
        &exp,
        None,
        &["--config", config.path().to_str().unwrap()],
    );
    server.signal_group("-STOP");

    // ~64 KiB requests from 4 clients: far more than the 8 MiB queue while MLflow is frozen.
    let acked: Acked = Default::default();
    let refused = Arc::new(Mutex::new(0usize));
    let mut peak_rss = 0;
    let mut tasks = vec![];
    let u = unique();
    for k in 0..4 {
        let acked = acked.clone();
        let refused = refused.clone();
        let http = gw.http;
        let u = u.clone();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            for i in 0..120 {
                let crid = format!("ovl-{u}-{k}-{i}");
                let mut resource = service_resource("overload");
                resource.push(s("padding", &"p".repeat(60 * 1024)));
                let (tr, status) = try_send_trace(&client, http, &crid, 2, resource).await;
                match status {
                    Some(200) => acked.lock().unwrap().push((tr, crid)),
                    Some(429) | Some(503) => *refused.lock().unwrap() += 1,
                    other => panic!("unexpected {other:?}"),
                }
            }
        }));
    }
    while tasks.iter().any(|t| !t.is_finished()) {
        peak_rss = peak_rss.max(gw.rss_bytes());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    let ready = reqwest::get(format!("http://{}/readyz", gw.api))
        .await
        .unwrap();
    let refused = *refused.lock().unwrap();
    let acked = acked.lock().unwrap().clone();
    // Budget: the queue, plus four in-flight 1 MiB requests decoded (x4), plus the process itself.
    let budget = queue_bytes + 4 * 4 * (1 << 20) + (48 << 20);
    println!(
        "acked {}, refused {refused}, peak RSS {:.1} MiB (budget {:.1} MiB), readyz {}",
        acked.len(),
        peak_rss as f64 / 1048576.0,
        budget as f64 / 1048576.0,
        ready.status()
    );
    assert!(refused > 0, "clients got retryable refusals");
    assert_eq!(ready.status(), 503, "not ready while the queue is full");
    assert!(
        peak_rss > 0 && peak_rss < budget,
        "peak RSS {peak_rss} over budget {budget}"
    );

    server.signal_group("-CONT");
    let thawed = std::time::Instant::now();
    assert_all_delivered(&mlflow, &acked, 3, Duration::from_secs(120)).await;
    println!(
        "all acknowledged traces complete {:.1} s after MLflow resumed",
        thawed.elapsed().as_secs_f64()
    );
    drop(server);
}

#[tokio::test]
async fn a_torn_spool_tail_is_survived_reported_and_counted() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mlflow = Mlflow::new(shared_mlflow());
    let exp = mlflow.create_experiment("torn").await;
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_owned();
    // First run: MLflow unreachable, so everything stays in the spool at shutdown.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let gw = gateway(&dead, &exp, |c| {
        c.data_dir = Some(data_dir.clone());
        c.shutdown_timeout = Duration::from_secs(1);
        c.spool.fsync = FsyncPolicy::Always;
    })
    .await;
    let client = reqwest::Client::new();
    let mut sent = vec![];
    for i in 0..5 {
        let crid = format!("torn-{}-{i}", unique());
        let (tr, status) = try_send_trace(
            &client,
            gw.otlp_http_addr,
            &crid,
            1,
            service_resource("torn"),
        )
        .await;
        assert_eq!(status, Some(200));
        sent.push((tr, crid));
    }
    let report = gw.shutdown().await;
    assert!(!report.drained);

    // Tear the last record, as a crash mid-write would.
    let spool = data_dir.join("spool");
    let mut segs: Vec<_> = std::fs::read_dir(&spool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    let last = segs.last().unwrap();
    assert_eq!(
        &std::fs::read(last).unwrap()[..4],
        b"GWSZ",
        "records are spooled compressed by default, so the replay below reads zstd frames"
    );
    let len = std::fs::metadata(last).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(last)
        .unwrap()
        .set_len(len - 10)
        .unwrap();

    let gw = gateway(&mlflow.url, &exp, |c| c.data_dir = Some(data_dir.clone())).await;
    assert_all_delivered(&mlflow, &sent[..4], 2, Duration::from_secs(60)).await;
    assert!(
        mlflow.trace_info(&sent[4].0).await.is_none(),
        "the torn record is not invented"
    );
    let text = metrics_text(gw.api_addr).await;
    assert!(
        text.contains("gateway_spool_damaged_regions_total 1"),
        "{text}"
    );
    // And the gateway keeps serving.
    let (tr, status) = try_send_trace(
        &client,
        gw.otlp_http_addr,
        "after-torn",
        1,
        service_resource("torn"),
    )
    .await;
    assert_eq!(status, Some(200));
    assert_all_delivered(
        &mlflow,
        &[(tr, "after-torn".into())],
        2,
        Duration::from_secs(30),
    )
    .await;
}
