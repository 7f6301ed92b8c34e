#!/usr/bin/env bash
# Installs PostgreSQL from Debian's packages and MLflow's PostgreSQL driver (pinned, into .venv),
# for the benchmarks' and the conformance suite's MLflow on PostgreSQL. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-mlflow.sh
want="$(grep -E '^psycopg' scripts/requirements-postgres.txt)"
.venv/bin/python -c 'import psycopg' 2>/dev/null || .venv/bin/pip install --quiet "$want"
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "==> installing PostgreSQL from Debian's packages" >&2
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >/dev/null
fi
