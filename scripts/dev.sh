#!/usr/bin/env bash
# Runs the gateway in front of a local MLflow server (SQLite under .mlflow-dev/).
# Installs the pinned MLflow into .venv the first time. Ctrl-C stops both.
#   MLFLOW_PORT (default 5000), any GATEWAY_* / MLFLOW_* variable, extra args go to the gateway.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-mlflow.sh
port="${MLFLOW_PORT:-5000}"
mkdir -p .mlflow-dev/artifacts
echo "==> building the gateway" >&2
cargo build --release --quiet
echo "==> starting MLflow on 127.0.0.1:$port" >&2
MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid .venv/bin/mlflow server \
  --backend-store-uri "sqlite:///$PWD/.mlflow-dev/mlflow.db" \
  --default-artifact-root "$PWD/.mlflow-dev/artifacts" \
  --host 127.0.0.1 --port "$port" --workers 1 > .mlflow-dev/mlflow.log 2>&1 &
mlflow_pid=$!
# setsid gave MLflow its own process group: stop the server and its uvicorn workers together.
trap 'kill -TERM -- -$mlflow_pid 2>/dev/null; wait $mlflow_pid 2>/dev/null' EXIT
for _ in $(seq 1 120); do
  curl -fs "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
  kill -0 $mlflow_pid 2>/dev/null || { echo "MLflow failed to start; see .mlflow-dev/mlflow.log" >&2; exit 1; }
  sleep 0.5
done
cat >&2 <<MSG

  MLflow UI:        http://127.0.0.1:$port
  OTLP gRPC:        localhost:4317   (OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4317)
  OTLP HTTP:        http://localhost:4318/v1/traces
  Health/metrics:   http://localhost:8080/readyz  http://localhost:8080/metrics

MSG
export MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-http://127.0.0.1:$port}"
export GATEWAY_DATA_DIR="${GATEWAY_DATA_DIR:-$PWD/.mlflow-dev/gateway}"
target/release/mlflow-otlp-gateway "$@"
