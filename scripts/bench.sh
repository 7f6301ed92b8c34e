#!/usr/bin/env bash
# Runs every benchmark scenario (BENCHMARKS.md) and prints the table. Extra arguments go to the
# bench binary: `--only 1,2` picks scenarios, `--quick` shortens each run.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bench-setup.sh
cargo bench --bench bench -- "$@"
