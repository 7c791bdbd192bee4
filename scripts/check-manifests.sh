#!/usr/bin/env bash
# Renders the deployable manifests and validates every object strictly (unknown fields
# are errors) against the Kubernetes OpenAPI schemas of each supported version.
# Needs kubectl (for kustomize) and kubernetes-validate (scripts/setup-test-deps.sh puts
# it in .venv-test/). Exits non-zero if anything fails to render or validate.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${NODEWRIGHT_TEST_VENV:-$repo_root/.venv-test}
# Oldest and newest Kubernetes minor versions nodewright supports.
read -r -a k8s_versions <<<"${K8S_VERSIONS:-1.29.0 1.37.0}"
# Kinds that no Kubernetes schema describes (CRD instances, component configs), by
# "apiVersion/kind". kubernetes-validate only warns on these, so anything not listed
# here that lacks a schema is treated as an error rather than silently passing.
schemaless_kinds=()

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

# validate FILE: every object in FILE must pass strict validation for every version.
validate() {
  local file=$1 objects version out unknown kind schemaless passed ok=0
  objects=$("$python" -c '
import sys, yaml
with open(sys.argv[1]) as f:
    print(sum(1 for doc in yaml.safe_load_all(f) if doc))
' "$file")
  if [ "$objects" -eq 0 ]; then
    echo "FAIL $file: rendered no objects"
    return 1
  fi
  for version in "${k8s_versions[@]}"; do
    out=$("$validator" --strict --kubernetes-version "$version" "$file" 2>&1) || ok=1
    printf '%s\n' "$out"
    # kubernetes-validate only warns about a kind it has no schema for.
    unknown=$(printf '%s\n' "$out" |
      sed -n "s/.*Couldn't find schema for kind \([^ ]*\) with api version \([^ ]*\) .*/\2\/\1/p")
    schemaless=0
    for kind in $unknown; do
      schemaless=$((schemaless + 1))
      if [[ " ${schemaless_kinds[*]} " != *" $kind "* ]]; then
        echo "FAIL $file: no Kubernetes $version schema for $kind (list it in schemaless_kinds if expected)"
        ok=1
      fi
    done
    # Every other object must have been reported as passed.
    passed=$(printf '%s\n' "$out" | grep -c ' passed for resource ' || true)
    if [ "$passed" -ne $((objects - schemaless)) ]; then
      echo "FAIL $file: $passed of $((objects - schemaless)) objects passed against Kubernetes $version"
      ok=1
    fi
  done
  if [ "$ok" -eq 0 ]; then
    echo "ok   $file: $objects objects ($schemaless without a schema) valid against Kubernetes ${k8s_versions[*]}"
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
# To be added with the chart: lint it strictly and render it with default values (and
# each values file under charts/nodewright/ci/, if any) into $tmp with helm-python-sdk
# from the same virtualenv, then `validate` each rendered file like webhook-config above.

if [ "$failures" -ne 0 ]; then
  echo "check-manifests: $failures manifest set(s) failed"
  exit 1
fi
echo "check-manifests: all manifests valid"
