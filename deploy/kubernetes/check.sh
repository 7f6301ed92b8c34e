#!/usr/bin/env bash
# Validates the Kubernetes manifests and the container image definition, as CI does:
#   1. the config checksum annotations match base/gateway.toml (sidecar) and
#      components/shared-tier/gateway.toml (deployment, statefulset) (--fix rewrites them);
#   2. `kubectl kustomize` renders every overlay;
#   3. kubernetes-validate (pinned) checks the output against the Kubernetes schemas;
#   4. checkov (pinned) scans the output and deploy/Dockerfile (skips explained in .checkov.yaml);
#   5. the gateway binary accepts every config file the manifests and the image ship (the shared
#      tier's with a throwaway certificate and tokens files at the paths it names).
set -euo pipefail
cd "$(dirname "$0")"
here="$PWD"; root="$(cd ../.. && pwd)"
overlays=(sidecar deployment statefulset)

check_checksum() { # <config file> <checksum patch>
  local sum want
  sum="$(sha256sum "$1" | cut -d' ' -f1)"
  want="- op: replace
  path: /spec/template/metadata/annotations/checksum~1config
  value: \"$sum\""
  if [ "${fix:-}" = 1 ]; then
    printf '%s\n' "$want" > "$2"
  fi
  if [ "$(cat "$2" 2>/dev/null)" != "$want" ]; then
    echo "$2 is stale: run deploy/kubernetes/check.sh --fix" >&2
    exit 1
  fi
}
[ "${1:-}" = "--fix" ] && fix=1
check_checksum base/gateway.toml components/config-checksum/checksum.yaml
check_checksum components/shared-tier/gateway.toml components/shared-tier/checksum.yaml

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
# The shared tier's files come from Secrets at run time: stand-ins at the same names.
stand_in="$out/etc"
mkdir -p "$stand_in/tls" "$stand_in/tenants"
pki="$root/target/debug/test-pki"
[ -x "$pki" ] || (cd "$root" && cargo build --quiet -p fixtures --bin test-pki)
"$pki" "$out/pki"
cp "$out/pki/server.crt" "$stand_in/tls/tls.crt"
cp "$out/pki/server.key" "$stand_in/tls/tls.key"
for t in $(sed -n 's|^tokens_file = "/etc/mlflow-otlp-gateway/tenants/\(.*\)"|\1|p' "$here/components/shared-tier/gateway.toml"); do
  echo "stand-in-token-$t" > "$stand_in/tenants/$t"
done
sed "s|/etc/mlflow-otlp-gateway/|$stand_in/|g" "$here/components/shared-tier/gateway.toml" > "$out/shared-tier.toml"
"$gateway" --config "$out/shared-tier.toml" --check-config
echo "deploy check: all overlays valid"
