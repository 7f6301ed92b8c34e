#!/usr/bin/env bash
# Installs the pinned MLflow into the project-local venv (.venv) once. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
want="$(grep -E '^mlflow(\[auth\])?==' scripts/requirements-mlflow.txt | cut -d= -f3)"
if [ -x .venv/bin/mlflow ] && [ "$(.venv/bin/python -c 'import mlflow, flask_wtf; print(mlflow.__version__)' 2>/dev/null)" = "$want" ]; then
  exit 0
fi
echo "==> installing MLflow $want into .venv (first run only; takes a few minutes)" >&2
python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -r scripts/requirements-mlflow.txt
