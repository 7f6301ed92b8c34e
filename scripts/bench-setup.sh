#!/usr/bin/env bash
# Installs what the benchmarks need beside the test set-up: rotel and psycopg (pinned, into
# .venv) and PostgreSQL from Debian's packages (for scenario 5). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-mlflow.sh
.venv/bin/pip install --quiet -r benches/requirements.txt
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "==> installing PostgreSQL from Debian's packages" >&2
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >/dev/null
fi
