#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine with Rust and Python 3: installs the pinned MLflow
# into .venv, checks formatting and lints, then runs unit and end-to-end tests. The end-to-end
# tests start their own MLflow servers (SQLite, loopback) through the shared fixtures
# (fixtures/). The benchmark binary runs its sent == delivered smoke check under `cargo test`;
# the manifests in deploy/ are rendered and validated last.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-mlflow.sh
echo "==> cargo fmt --check" >&2
cargo fmt --all -- --check
echo "==> cargo clippy" >&2
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "==> cargo test" >&2
cargo test --all-targets -- --test-threads 4
echo "==> polyglot conformance (Python and Node.js OpenTelemetry SDKs)" >&2
tests/conformance/run.sh
echo "==> deployment manifests (kustomize, kubernetes-validate, checkov, --check-config)" >&2
deploy/kubernetes/check.sh
