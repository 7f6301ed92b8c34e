use super::*;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;

use crate::mlflow::error::MlflowError;

/// A stand-in for a frozen MLflow (a fault a real server cannot be made to produce on
/// demand here): accepts connections, counts request lines, answers only once `wake` is set.
async fn frozen_server(wake: Arc<AtomicBool>) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (log, wake) = (log.clone(), wake.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let Ok(n) = socket.read(&mut buf).await else {
                    return;
                };
                let head = String::from_utf8_lossy(&buf[..n]);
                let line = head.lines().next().unwrap_or_default().to_string();
                log.lock().unwrap().push(line);
                while !wake.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
                    .await;
            });
        }
    });
    (url, seen)
}

/// A client that gives up on a call after 300 ms.
fn impatient_client(url: String) -> MlflowClient {
    MlflowClient::new(&MlflowConfig {
        tracking_uri: url,
        request_timeout: Duration::from_millis(300),
        ..MlflowConfig::default()
    })
    .unwrap()
}

#[tokio::test]
async fn after_a_timeout_only_health_probes_reach_a_stalled_mlflow() {
    let wake = Arc::new(AtomicBool::new(false));
    let (url, seen) = frozen_server(wake.clone()).await;
    let client = impatient_client(url);
    let spans = || client.post_spans("1", Bytes::from_static(b"payload"));
    assert!(matches!(spans().await, Err(MlflowError::Timeout)));
    assert!(matches!(spans().await, Err(MlflowError::Stalled)));
    assert!(matches!(
        client.start_trace(Bytes::from_static(b"{}")).await,
        Err(MlflowError::Stalled)
    ));
    let lines = |prefix: &str| {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with(prefix))
            .count()
    };
    assert_eq!(
        lines("POST"),
        1,
        "one payload, then probes: {:?}",
        seen.lock().unwrap()
    );
    assert_eq!(lines("GET /health"), 2);

    wake.store(true, Ordering::SeqCst);
    spans().await.unwrap();
    assert_eq!(
        lines("POST /v1/traces"),
        2,
        "the payload goes again once /health answers"
    );
    spans().await.unwrap();
    assert_eq!(lines("GET /health"), 3, "no probe once MLflow answers");
}

#[tokio::test]
async fn a_trace_info_writer_s_own_connection_shares_timeouts_and_the_stall_gate() {
    let wake = Arc::new(AtomicBool::new(false));
    let (url, seen) = frozen_server(wake.clone()).await;
    let client = impatient_client(url);
    let writer = client.trace_info_connection(4);
    let start = || writer.start_trace(Bytes::from_static(b"{}"));
    assert!(matches!(start().await, Err(MlflowError::Timeout)));
    // The shared pool sees the stall too, and the writer's next call waits for /health.
    assert!(matches!(
        client.post_spans("1", Bytes::from_static(b"payload")).await,
        Err(MlflowError::Stalled)
    ));
    assert!(matches!(start().await, Err(MlflowError::Stalled)));
    wake.store(true, Ordering::SeqCst);
    start().await.unwrap();
    let seen = seen.lock().unwrap();
    let posts: Vec<&String> = seen.iter().filter(|l| l.starts_with("POST")).collect();
    assert_eq!(
        posts, ["POST /api/3.0/mlflow/traces HTTP/1.1"; 2],
        "the timed-out call, then the one after /health answered: {seen:?}"
    );
}

#[test]
fn credentials_never_appear_in_debug_output() {
    let cfg = MlflowConfig {
        token: Some(crate::config::Secret::new("tok-123")),
        ..MlflowConfig::default()
    };
    let client = MlflowClient::new(&cfg).unwrap();
    assert!(!format!("{client:?}").contains("tok-123"));
}

#[test]
fn a_ca_file_without_certificates_is_a_clear_error() {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), "not a certificate\n").unwrap();
    let cfg = MlflowConfig {
        tracking_uri: "https://mlflow.internal".into(),
        ca_cert: Some(f.path().to_owned()),
        ..MlflowConfig::default()
    };
    let err = MlflowClient::new(&cfg).unwrap_err().to_string();
    assert!(err.contains("no PEM certificates"), "{err}");
    let missing = MlflowConfig {
        ca_cert: Some("/nonexistent/ca.pem".into()),
        ..MlflowConfig::default()
    };
    assert!(
        MlflowClient::new(&missing)
            .unwrap_err()
            .to_string()
            .contains("ca_cert")
    );
}

#[test]
fn base_url_gets_a_trailing_slash_for_joins() {
    let cfg = MlflowConfig {
        tracking_uri: "http://h:5000/mlflow".into(),
        ..MlflowConfig::default()
    };
    let client = MlflowClient::new(&cfg).unwrap();
    assert_eq!(
        client.url("v1/traces").as_str(),
        "http://h:5000/mlflow/v1/traces"
    );
}
