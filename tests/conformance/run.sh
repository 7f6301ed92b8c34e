#!/usr/bin/env bash
# Runs the polyglot conformance suite: installs its pinned Python and npm packages, starts a real
# MLflow on SQLite with two gateways (an open one, and a shared one with TLS and a tenant token)
# and a real MLflow on PostgreSQL with a third, runs every case, prints the tables.
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$PWD"
scripts/setup-mlflow.sh
.venv/bin/pip install --quiet -r tests/conformance/requirements.txt
scripts/setup-postgres.sh
# MLflow's own SDK with an OpenTelemetry SDK it can export over OTLP with, in a venv of its own.
sdk_venv=tests/conformance/.venv-sdk-otlp
if ! cmp -s tests/conformance/requirements-sdk-otlp.txt "$sdk_venv/requirements.txt" 2>/dev/null; then
  rm -rf "$sdk_venv"
  python3 -m venv "$sdk_venv"
  "$sdk_venv/bin/pip" install --quiet -r tests/conformance/requirements-sdk-otlp.txt
  cp tests/conformance/requirements-sdk-otlp.txt "$sdk_venv/requirements.txt"
fi
(cd tests/conformance/node && npm ci --no-audit --no-fund --loglevel=error)
cargo build --quiet
cargo build --quiet -p fixtures --bin test-pki --bin free-ports
# The Rust SDK app shares the project's target directory, so tonic and prost are built once.
CARGO_TARGET_DIR="$root/target" cargo build --quiet --manifest-path tests/conformance/rust/Cargo.toml

state="$(mktemp -d)"
# Picked below the ephemeral range, as the tests pick theirs: the gateways bind theirs only after
# MLflow and PostgreSQL are up, and an outgoing connection meanwhile could take an OS-picked one.
read -r mlflow_port grpc_port http_port api_port pg_port pg_mlflow_port pg_grpc_port pg_http_port \
  pg_api_port tls_grpc_port tls_http_port tls_api_port <<< "$(target/debug/free-ports 12)"
mkdir -p "$state/artifacts"
MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid .venv/bin/mlflow server \
  --backend-store-uri "sqlite:///$state/mlflow.db" --default-artifact-root "$state/artifacts" \
  --host 127.0.0.1 --port "$mlflow_port" --workers 1 > "$state/mlflow.log" 2>&1 &
mlflow_pid=$!
gateway_pid=""
tls_gateway_pid=""
pg_gateway_pid=""
pg_mlflow_pid=""
# A private PostgreSQL cluster; initdb refuses to run as root, so as root it is postgres's.
pg_bin="$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | head -1)")"
as_pg=(); [ "$(id -u)" = 0 ] && as_pg=(runuser -u postgres --)
mkdir -p "$state/pg"; [ "$(id -u)" = 0 ] && chmod o+x "$state" && chown postgres:postgres "$state/pg"
"${as_pg[@]}" "$pg_bin/initdb" -A trust -U postgres -D "$state/pg/data" >/dev/null
"${as_pg[@]}" "$pg_bin/pg_ctl" -D "$state/pg/data" -l "$state/pg/log" -w \
  -o "-p $pg_port -k $state/pg -c listen_addresses=127.0.0.1" start >/dev/null
"${as_pg[@]}" "$pg_bin/psql" -h 127.0.0.1 -p "$pg_port" -U postgres -q -c "CREATE DATABASE mlflow"
mkdir -p "$state/pg-artifacts"
MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid .venv/bin/mlflow server \
  --backend-store-uri "postgresql+psycopg://postgres@127.0.0.1:$pg_port/mlflow" \
  --default-artifact-root "$state/pg-artifacts" \
  --host 127.0.0.1 --port "$pg_mlflow_port" --workers 1 > "$state/pg-mlflow.log" 2>&1 &
pg_mlflow_pid=$!
cleanup() {
  for pid in "$gateway_pid" "$tls_gateway_pid" "$pg_gateway_pid"; do
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  done
  kill -TERM -- "-$mlflow_pid" 2>/dev/null; wait "$mlflow_pid" 2>/dev/null
  [ -n "$pg_mlflow_pid" ] && { kill -TERM -- "-$pg_mlflow_pid" 2>/dev/null; wait "$pg_mlflow_pid" 2>/dev/null; }
  "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$state/pg/data" -m immediate stop >/dev/null 2>&1
  rm -rf "$state"
}
trap cleanup EXIT
for _ in $(seq 1 240); do
  curl -fs "http://127.0.0.1:$mlflow_port/health" >/dev/null 2>&1 \
    && curl -fs "http://127.0.0.1:$pg_mlflow_port/health" >/dev/null 2>&1 && break
  sleep 0.5
done
# Traces whose root is lost are finalized after root_wait: short here so the case is quick.
printf '[traces]\nroot_wait = "3s"\n' > "$state/gateway.toml"
MLFLOW_TRACKING_URI="http://127.0.0.1:$mlflow_port" target/debug/mlflow-otlp-gateway \
  --config "$state/gateway.toml" \
  --otlp-grpc-addr "127.0.0.1:$grpc_port" --otlp-http-addr "127.0.0.1:$http_port" \
  --api-addr "127.0.0.1:$api_port" --data-dir "$state/gateway" --log-level warn \
  > "$state/gateway.log" 2>&1 &
gateway_pid=$!
MLFLOW_TRACKING_URI="http://127.0.0.1:$pg_mlflow_port" target/debug/mlflow-otlp-gateway \
  --otlp-grpc-addr "127.0.0.1:$pg_grpc_port" --otlp-http-addr "127.0.0.1:$pg_http_port" \
  --api-addr "127.0.0.1:$pg_api_port" --data-dir "$state/gateway-pg" --log-level warn \
  > "$state/gateway-pg.log" 2>&1 &
pg_gateway_pid=$!
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
    && curl -fs "http://127.0.0.1:$pg_api_port/readyz" >/dev/null 2>&1 \
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
  --pg-mlflow "http://127.0.0.1:$pg_mlflow_port" --pg-otlp-http "http://127.0.0.1:$pg_http_port" \
  || { for log in gateway gateway-tls gateway-pg; do echo "--- $log log"; tail -50 "$state/$log.log"; done; exit 1; }
