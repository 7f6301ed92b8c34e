#!/usr/bin/env bash
# Validates the Kubernetes manifests and the container image definition, as CI does:
#   1. the config checksum annotation matches base/gateway.toml (--fix rewrites it);
#   2. `kubectl kustomize` renders every overlay;
#   3. kubernetes-validate (pinned) checks the output against the Kubernetes schemas;
#   4. checkov (pinned) scans the output and deploy/Dockerfile (skips explained in .checkov.yaml);
#   5. the gateway binary accepts every config file the manifests and the image ship.
set -euo pipefail
cd "$(dirname "$0")"
here="$PWD"; root="$(cd ../.. && pwd)"
overlays=(sidecar deployment statefulset)

sum="$(sha256sum base/gateway.toml | cut -d' ' -f1)"
want="- op: replace
  path: /spec/template/metadata/annotations/checksum~1config
  value: \"$sum\""
if [ "${1:-}" = "--fix" ]; then
  printf '%s\n' "$want" > components/config-checksum/checksum.yaml
fi
if [ "$(cat components/config-checksum/checksum.yaml)" != "$want" ]; then
  echo "components/config-checksum/checksum.yaml is stale: run deploy/kubernetes/check.sh --fix" >&2
  exit 1
fi

tools="$root/.venv-deploy"
if [ ! -x "$tools/bin/checkov" ] || ! cmp -s "$root/deploy/requirements.txt" "$tools/requirements.txt"; then
  echo "==> installing kubernetes-validate and checkov into .venv-deploy" >&2
  python3 -m venv "$tools"
  "$tools/bin/pip" install --quiet --upgrade pip
  "$tools/bin/pip" install --quiet -r "$root/deploy/requirements.txt"
  cp "$root/deploy/requirements.txt" "$tools/requirements.txt"
fi

command -v kubectl >/dev/null || { echo "kubectl (1.29+, for kustomize) is not installed" >&2; exit 1; }
out="$(mktemp -d)"; trap 'rm -rf "$out"' EXIT
for o in "${overlays[@]}"; do
  kubectl kustomize "$o" > "$out/$o.yaml"
  echo "rendered $o: $(grep -c '^kind:' "$out/$o.yaml") objects"
  "$tools/bin/kubernetes-validate" --strict --kubernetes-version "${K8S_VERSION:-1.33}" "$out/$o.yaml"
done

"$tools/bin/checkov" --quiet --compact --skip-download --config-file "$root/deploy/.checkov.yaml" \
  --directory "$out" --framework kubernetes
"$tools/bin/checkov" --quiet --compact --skip-download --config-file "$root/deploy/.checkov.yaml" \
  --file "$root/deploy/Dockerfile" --framework dockerfile

gateway="${GATEWAY_BIN:-$root/target/debug/mlflow-otlp-gateway}"
[ -x "$gateway" ] || (cd "$root" && cargo build --quiet --bin mlflow-otlp-gateway)
for cfg in "$here/base/gateway.toml" "$root/deploy/gateway.container.toml"; do
  "$gateway" --config "$cfg" --check-config
done
echo "deploy check: all overlays valid"
