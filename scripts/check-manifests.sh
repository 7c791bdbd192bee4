#!/usr/bin/env bash
# Renders the deployable manifests and validates every object strictly (unknown fields
# are errors) against the Kubernetes OpenAPI schemas of each supported version: the
# kustomization in webhook-config/ and the Helm chart charts/nodewright (for which
# scripts/chart-check.py also lints, checks semantics, promtool-checks the alerts and, when
# target/debug/nodewright exists, lets `nodewright plan` read the rendered config).
# Needs kubectl (for kustomize), and kubernetes-validate and helm-python-sdk
# (scripts/setup-test-deps.sh puts them in .venv-test/). Exits non-zero if anything fails.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${NODEWRIGHT_TEST_VENV:-$repo_root/.venv-test}
# Oldest and newest Kubernetes minor versions nodewright supports.
read -r -a k8s_versions <<<"${K8S_VERSIONS:-1.29.0 1.37.0}"
# Kinds that no Kubernetes schema describes (CRD instances, component configs), by
# "apiVersion/kind". kubernetes-validate only warns on these, so anything not listed
# here that lacks a schema is treated as an error rather than silently passing.
# scripts/chart-check.py checks each of them structurally (and fails if this list and its
# checks disagree). The chart's KubeSchedulerConfiguration is inside a ConfigMap, which has a
# schema; chart-check.py checks the configuration itself.
schemaless_kinds=(
  monitoring.coreos.com/v1/ServiceMonitor
  monitoring.coreos.com/v1/PrometheusRule
  cert-manager.io/v1/Issuer
  cert-manager.io/v1/Certificate
)

if [ -x "$venv/bin/kubernetes-validate" ]; then
  validator=$venv/bin/kubernetes-validate
  python=$venv/bin/python
elif command -v kubernetes-validate >/dev/null 2>&1; then
  validator=$(command -v kubernetes-validate)
  python=$(dirname "$validator")/python
else
  echo "check-manifests: kubernetes-validate not found; run scripts/setup-test-deps.sh" >&2
  exit 1
fi
command -v kubectl >/dev/null 2>&1 || {
  echo "check-manifests: kubectl not found (needed for 'kubectl kustomize')" >&2
  exit 1
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0

# validate FILE [VERSION...]: every object in FILE must pass strict validation for every
# version (default: all of k8s_versions). kubernetes-validate's report is shown on failure.
validate() {
  local file=$1 objects version out unknown kind schemaless passed ok=0 bad
  shift
  local versions=("$@")
  [ ${#versions[@]} -gt 0 ] || versions=("${k8s_versions[@]}")
  objects=$("$python" -c '
import sys, yaml
with open(sys.argv[1]) as f:
    print(sum(1 for doc in yaml.safe_load_all(f) if doc))
' "$file")
  if [ "$objects" -eq 0 ]; then
    echo "FAIL $file: rendered no objects"
    return 1
  fi
  for version in "${versions[@]}"; do
    bad=0
    out=$("$validator" --strict --kubernetes-version "$version" "$file" 2>&1) || bad=1
    # kubernetes-validate only warns about a kind it has no schema for.
    unknown=$(printf '%s\n' "$out" |
      sed -n "s/.*Couldn't find schema for kind \([^ ]*\) with api version \([^ ]*\) .*/\2\/\1/p")
    schemaless=0
    for kind in $unknown; do
      schemaless=$((schemaless + 1))
      if [[ " ${schemaless_kinds[*]} " != *" $kind "* ]]; then
        echo "FAIL $file: no Kubernetes $version schema for $kind (list it in schemaless_kinds if expected)"
        bad=1
      fi
    done
    # Every other object must have been reported as passed.
    passed=$(printf '%s\n' "$out" | grep -c ' passed for resource ' || true)
    if [ "$passed" -ne $((objects - schemaless)) ]; then
      echo "FAIL $file: $passed of $((objects - schemaless)) objects passed against Kubernetes $version"
      bad=1
    fi
    if [ "$bad" -ne 0 ]; then
      printf '%s\n' "$out" | grep -v ' passed for resource ' | sed 's/^/       /'
      ok=1
    fi
  done
  if [ "$ok" -eq 0 ]; then
    echo "ok   $file: $objects objects ($schemaless without a schema) valid against Kubernetes ${versions[*]}"
  fi
  return "$ok"
}

# --- webhook-config/ (kustomize) -------------------------------------------------
echo "--- kubectl kustomize webhook-config"
if kubectl kustomize "$repo_root/webhook-config" >"$tmp/webhook-config.yaml"; then
  validate "$tmp/webhook-config.yaml" || failures=$((failures + 1))
else
  echo "FAIL kubectl kustomize webhook-config"
  failures=$((failures + 1))
fi

# --- charts/nodewright (Helm) ----------------------------------------------------
# scripts/chart-check.py lints and renders the chart (helm-python-sdk, offline) for its
# default values and every charts/nodewright/ci/*.yaml at each version, asserts what the chart
# promises and writes each rendering (plus the CRDs) to a file; each file is then validated
# against the Kubernetes schemas of the version it was rendered for.
echo "--- charts/nodewright (scripts/chart-check.py)"
chart_out=$tmp/chart
# NODEWRIGHT_BIN: the binary whose `plan` must read the rendered config and whose `serve`
# must know every flag the chart passes (skipped when it does not exist).
if ! "$python" "$repo_root/scripts/chart-check.py" --out "$chart_out" \
  --kube-versions "${k8s_versions[@]}" --schemaless "${schemaless_kinds[@]}" \
  --nodewright "${NODEWRIGHT_BIN:-$repo_root/target/debug/nodewright}"; then
  failures=$((failures + 1))
fi
echo "--- charts/nodewright renderings (kubernetes-validate --strict)"
if [ -s "$chart_out/manifests.txt" ]; then
  while read -r file version; do
    validate "$file" "$version" || failures=$((failures + 1))
  done <"$chart_out/manifests.txt"
else
  echo "FAIL charts/nodewright: chart-check.py rendered nothing to validate"
  failures=$((failures + 1))
fi

if [ "$failures" -ne 0 ]; then
  echo "check-manifests: $failures manifest set(s) failed"
  exit 1
fi
echo "check-manifests: all manifests valid"
