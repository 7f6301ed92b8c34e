//! The binary's edge: --check-config, precedence of flags over env over file.

use std::process::Command;

fn gateway() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mlflow-otlp-gateway"));
    for var in [
        "GATEWAY_CONFIG",
        "GATEWAY_OTLP_GRPC_ADDR",
        "GATEWAY_OTLP_HTTP_ADDR",
        "GATEWAY_API_ADDR",
        "GATEWAY_DATA_DIR",
        "MLFLOW_TRACKING_URI",
        "MLFLOW_EXPERIMENT_ID",
        "MLFLOW_EXPERIMENT_NAME",
    ] {
        c.env_remove(var);
    }
    c
}

fn write_config(text: &str) -> tempfile::NamedTempFile {
    let f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(f.path(), text).unwrap();
    f
}

#[test]
fn check_config_accepts_the_shipped_file() {
    let out = gateway()
        .args([
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/gateway.toml"),
            "--check-config",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("configuration OK"), "{stdout}");
    assert!(
        stdout.contains("0.0.0.0:4317") && stdout.contains("0.0.0.0:4318"),
        "{stdout}"
    );
}

#[test]
fn check_config_reports_every_error_at_once() {
    let f = write_config(
        "[server]\notlp_http_addr = \"nowhere\"\n[mlflow]\nexperiment_id = \"x1\"\n[batch]\nmax_spans = 0\n",
    );
    let out = gateway()
        .args(["--config", f.path().to_str().unwrap(), "--check-config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "server.otlp_http_addr",
        "mlflow.experiment_id",
        "batch.max_spans",
    ] {
        assert!(stderr.contains(needle), "missing {needle} in: {stderr}");
    }
}

#[test]
fn unknown_keys_are_config_errors() {
    let f = write_config("[batch]\nmax_span = 3\n");
    let out = gateway()
        .args(["--config", f.path().to_str().unwrap(), "--check-config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_span"));
}

#[test]
fn flags_beat_env_beat_file() {
    let f = write_config(
        "[server]\notlp_grpc_addr = \"127.0.0.1:1111\"\notlp_http_addr = \"127.0.0.1:2222\"\n\
         [mlflow]\ntracking_uri = \"http://file:1\"\n",
    );
    let out = gateway()
        .env("GATEWAY_CONFIG", f.path())
        .env("GATEWAY_OTLP_GRPC_ADDR", "127.0.0.1:3333")
        .env("GATEWAY_OTLP_HTTP_ADDR", "127.0.0.1:4444")
        .env("MLFLOW_TRACKING_URI", "http://env:2")
        .env("MLFLOW_EXPERIMENT_NAME", "from-env")
        .args(["--otlp-http-addr", "127.0.0.1:5555", "--check-config"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("OTLP gRPC 127.0.0.1:3333"),
        "env beats file: {stdout}"
    );
    assert!(
        stdout.contains("OTLP HTTP 127.0.0.1:5555"),
        "flag beats env: {stdout}"
    );
    assert!(
        stdout.contains("MLflow http://env:2"),
        "MLFLOW_TRACKING_URI beats file: {stdout}"
    );
    assert!(
        stdout.contains("'from-env'"),
        "MLFLOW_EXPERIMENT_NAME: {stdout}"
    );
}

#[test]
fn healthcheck_fails_when_no_gateway_answers() {
    let port = fixtures::net::free_port();
    let out = gateway()
        .args(["--api-addr", &format!("127.0.0.1:{port}"), "healthcheck"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unhealthy"));
}

/// A log that is not a terminal (a file, a container runtime's pipe) is plain text: no colour
/// escape codes around the level and the fields.
#[test]
fn text_logs_to_a_file_carry_no_colour_codes() {
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = gateway()
        .args(["--otlp-grpc-addr", "127.0.0.1:0"])
        .args(["--otlp-http-addr", "127.0.0.1:0"])
        .args(["--api-addr", "127.0.0.1:0"])
        .args(["--log-format", "text", "--log-level", "info"])
        // Nothing listens there; the gateway starts anyway and logs that it did.
        .env("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
        .env_remove("RUST_LOG")
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let text = loop {
        let text = std::fs::read_to_string(log.path()).unwrap_or_default();
        if text.contains("gateway started") || started.elapsed().as_secs() > 20 {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(text.contains("gateway started"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in a log file: {text:?}"
    );
}
