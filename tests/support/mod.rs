//! Test harness: the shared fixtures (`fixtures/`: MLflow launcher, REST checks, OTLP builders
//! and senders) and what only this crate's tests can have: gateways in process, and the
//! gateway binary this crate built.
#![allow(dead_code, unused_imports)]

use std::path::Path;
use std::time::Duration;

pub use fixtures::*;
use mlflow_otlp_gateway::Gateway;
use mlflow_otlp_gateway::config::Config;

/// A gateway on ephemeral loopback ports in front of `mlflow_url`.
pub async fn gateway(
    mlflow_url: &str,
    experiment_id: &str,
    tweak: impl FnOnce(&mut Config),
) -> Gateway {
    let mut cfg = Config::default();
    cfg.server.otlp_grpc_addr = "127.0.0.1:0".into();
    cfg.server.otlp_http_addr = "127.0.0.1:0".into();
    cfg.server.api_addr = "127.0.0.1:0".into();
    cfg.mlflow.tracking_uri = mlflow_url.into();
    cfg.mlflow.experiment_id = Some(experiment_id.into());
    cfg.batch.timeout = Duration::from_millis(50);
    cfg.retry.initial_backoff = Duration::from_millis(100);
    cfg.retry.max_backoff = Duration::from_secs(1);
    cfg.mlflow.health_interval = Duration::from_millis(500);
    tweak(&mut cfg);
    Gateway::start(cfg).await.expect("gateway starts")
}

/// The shipped binary of this build, started with `extra` arguments; killed when dropped.
pub fn gateway_process(
    mlflow_url: &str,
    experiment_id: &str,
    data_dir: Option<&Path>,
    extra: &[&str],
) -> GatewayProcess {
    GatewayProcess::start(
        Path::new(env!("CARGO_BIN_EXE_mlflow-otlp-gateway")),
        mlflow_url,
        experiment_id,
        data_dir,
        extra,
    )
}
