//! The shipped binary end to end: started from the command line against a real MLflow, fed over
//! OTLP/HTTP, stopped with SIGTERM; what it held in memory must reach MLflow before it exits.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

#[tokio::test]
async fn sigterm_drains_to_mlflow_and_exits_cleanly() {
    let mlflow = Mlflow::new(shared_mlflow());
    let exp = mlflow.create_experiment("binary").await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    // A batch timeout far beyond the test: only the shutdown flush can deliver the spans.
    std::fs::write(&config, "[batch]\ntimeout = \"10m\"\nmax_spans = 100000\n").unwrap();
    let (grpc, http, api) = (free_port(), free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_mlflow-otlp-gateway"))
        .arg("--config")
        .arg(&config)
        .args(["--otlp-grpc-addr", &format!("127.0.0.1:{grpc}")])
        .args(["--otlp-http-addr", &format!("127.0.0.1:{http}")])
        .args(["--api-addr", &format!("127.0.0.1:{api}")])
        .args(["--log-format", "json"])
        .env("MLFLOW_TRACKING_URI", &mlflow.url)
        .env("MLFLOW_EXPERIMENT_ID", &exp)
        .env("MLFLOW_TRACKING_TOKEN", "secret-token-never-logged")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let http_addr = format!("127.0.0.1:{http}").parse().unwrap();
    loop {
        if std::net::TcpStream::connect(http_addr).is_ok() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "gateway did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The container HEALTHCHECK: the same binary asks the running gateway's /healthz.
    let check = Command::new(env!("CARGO_BIN_EXE_mlflow-otlp-gateway"))
        .args(["--api-addr", &format!("0.0.0.0:{api}"), "healthcheck"])
        .env("MLFLOW_TRACKING_URI", &mlflow.url)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "healthcheck: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let root = SpanSpec::root(random_trace_id(), "job", now_nanos() - 1_000_000_000, 40)
        .with(vec![s("client_request_id", "bin-req-1")]);
    let r = post_protobuf(
        http_addr,
        &request(service_resource("bin"), vec![root.build()]),
    )
    .await;
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        mlflow.trace_info(&tr_id(&root.trace_id)).await.is_none(),
        "held in memory"
    );

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let logs = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "exit code; logs:\n{logs}");
    assert!(
        logs.contains("\"message\":\"gateway started\""),
        "JSON logs:\n{logs}"
    );
    assert!(
        !logs.contains("secret-token-never-logged"),
        "secret in logs:\n{logs}"
    );
    let info = mlflow
        .wait_trace(&tr_id(&root.trace_id), "its client request id", |i| {
            i["client_request_id"] == "bin-req-1"
        })
        .await;
    assert_eq!(info["state"], "OK");
}
