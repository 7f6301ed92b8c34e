#!/usr/bin/env bash
# Installs what the benchmarks need beside the test set-up: rotel (pinned, into .venv), and
# PostgreSQL with MLflow's driver (for scenario 5). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-mlflow.sh
.venv/bin/pip install --quiet -r benches/requirements.txt
scripts/setup-postgres.sh
