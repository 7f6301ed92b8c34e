#!/usr/bin/env bash
# Runs the polyglot conformance suite: installs its pinned Python and npm packages, starts a real
# MLflow (SQLite, loopback) and two gateways (an open one, and a shared one with TLS and a tenant
# token), runs every SDK x exporter case, prints the table.
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$PWD"
scripts/setup-mlflow.sh
.venv/bin/pip install --quiet -r tests/conformance/requirements.txt
(cd tests/conformance/node && npm ci --no-audit --no-fund --loglevel=error)
cargo build --quiet
cargo build --quiet -p fixtures --bin test-pki
# The Rust SDK app shares the project's target directory, so tonic and prost are built once.
CARGO_TARGET_DIR="$root/target" cargo build --quiet --manifest-path tests/conformance/rust/Cargo.toml

free_port() { .venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
state="$(mktemp -d)"
mlflow_port="$(free_port)"; grpc_port="$(free_port)"; http_port="$(free_port)"; api_port="$(free_port)"
tls_grpc_port="$(free_port)"; tls_http_port="$(free_port)"; tls_api_port="$(free_port)"
mkdir -p "$state/artifacts"
MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid .venv/bin/mlflow server \
  --backend-store-uri "sqlite:///$state/mlflow.db" --default-artifact-root "$state/artifacts" \
  --host 127.0.0.1 --port "$mlflow_port" --workers 1 > "$state/mlflow.log" 2>&1 &
mlflow_pid=$!
gateway_pid=""
tls_gateway_pid=""
cleanup() {
  [ -n "$gateway_pid" ] && kill "$gateway_pid" 2>/dev/null && wait "$gateway_pid" 2>/dev/null
  [ -n "$tls_gateway_pid" ] && kill "$tls_gateway_pid" 2>/dev/null && wait "$tls_gateway_pid" 2>/dev/null
  kill -TERM -- "-$mlflow_pid" 2>/dev/null; wait "$mlflow_pid" 2>/dev/null
  rm -rf "$state"
}
trap cleanup EXIT
for _ in $(seq 1 240); do
  curl -fs "http://127.0.0.1:$mlflow_port/health" >/dev/null 2>&1 && break
  sleep 0.5
done
MLFLOW_TRACKING_URI="http://127.0.0.1:$mlflow_port" target/debug/mlflow-otlp-gateway \
  --otlp-grpc-addr "127.0.0.1:$grpc_port" --otlp-http-addr "127.0.0.1:$http_port" \
  --api-addr "127.0.0.1:$api_port" --data-dir "$state/gateway" --log-level warn \
  > "$state/gateway.log" 2>&1 &
gateway_pid=$!
# The shared tier's set-up: TLS on every listener, every request a tenant's.
target/debug/test-pki "$state/tls"
token="conformance-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
echo "$token" > "$state/tls/tokens"
printf '[auth]\nrequired = true\n[[tenants]]\nname = "conformance"\ntokens_file = "%s"\nexperiments = ["conformance-*"]\n' \
  "$state/tls/tokens" > "$state/tls/gateway.toml"
MLFLOW_TRACKING_URI="http://127.0.0.1:$mlflow_port" target/debug/mlflow-otlp-gateway \
  --config "$state/tls/gateway.toml" \
  --otlp-grpc-addr "127.0.0.1:$tls_grpc_port" --otlp-http-addr "127.0.0.1:$tls_http_port" \
  --api-addr "127.0.0.1:$tls_api_port" --data-dir "$state/gateway-tls" --log-level warn \
  --tls-cert-file "$state/tls/server.crt" --tls-key-file "$state/tls/server.key" \
  > "$state/gateway-tls.log" 2>&1 &
tls_gateway_pid=$!
for _ in $(seq 1 120); do
  curl -fs "http://127.0.0.1:$api_port/readyz" >/dev/null 2>&1 \
    && curl -fs --cacert "$state/tls/ca.crt" "https://localhost:$tls_api_port/readyz" >/dev/null 2>&1 \
    && break
  sleep 0.25
done
.venv/bin/python tests/conformance/conformance.py \
  --mlflow "http://127.0.0.1:$mlflow_port" \
  --otlp-grpc "http://127.0.0.1:$grpc_port" \
  --otlp-http "http://127.0.0.1:$http_port" \
  --api "http://127.0.0.1:$api_port" \
  --tls-otlp-grpc "https://localhost:$tls_grpc_port" \
  --tls-otlp-http "https://localhost:$tls_http_port" \
  --tls-api "https://localhost:$tls_api_port" \
  --tls-ca "$state/tls/ca.crt" --tls-token "$token" \
  || { echo "--- gateway log"; tail -50 "$state/gateway.log"; echo "--- TLS gateway log"; tail -50 "$state/gateway-tls.log"; exit 1; }
