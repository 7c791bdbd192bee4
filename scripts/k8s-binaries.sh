#!/usr/bin/env bash
# Builds, on first use, the real Kubernetes control plane the tests run against, from the Go
# module proxy, and caches it outside the clone by version:
#   kube-apiserver, kube-controller-manager, kube-scheduler  (k8s.io/kubernetes, tests/controlplane/k8s)
#   etcd                                                     (go.etcd.io/etcd/server/v3, tests/controlplane/etcd)
#   kwok                                                     (sigs.k8s.io/kwok, tests/controlplane/kwok)
# The recipes (go.mod + go.sum, pinned) live in tests/controlplane/. The last line printed is the
# directory holding the five binaries, and kwok-stages.yaml: kwok's own "fast" stages (node
# initialize + heartbeat with lease, pod ready/complete/delete) from its module, which the kwok
# binary needs as --config. Safe to run concurrently (a lock) and again (a stamp of the
# recipes: a changed go.sum rebuilds). Go is a build tool for test peers only.
#
#   scripts/k8s-binaries.sh            # build if needed, print the bin directory
#   NODEWRIGHT_K8S_CACHE=/some/dir scripts/k8s-binaries.sh
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
recipes=$repo_root/tests/controlplane
k8s_version=$(awk '{ sub(/^require /, "") } $1 == "k8s.io/kubernetes" && $2 ~ /^v1\./ { print $2 }' "$recipes/k8s/go.mod")
[ -n "$k8s_version" ] || { echo "k8s-binaries: no k8s.io/kubernetes version in $recipes/k8s/go.mod" >&2; exit 1; }
cache=${NODEWRIGHT_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nodewright-test}
root=$cache/k8s-$k8s_version
bin=$root/bin
binaries=(kube-apiserver kube-controller-manager kube-scheduler etcd kwok)

log() { printf 'k8s-binaries: %s\n' "$*" >&2; }

stamp_of_recipes() {
  (cd "$recipes" && cat k8s/go.mod k8s/go.sum etcd/go.mod etcd/go.sum etcd/main.go kwok/go.mod kwok/go.sum \
    && printf '%s\n' "$(go env GOVERSION)") | sha256sum | cut -d' ' -f1
}

command -v go >/dev/null 2>&1 || { log "go not found on PATH; it builds the test control plane"; exit 1; }
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false
want=$(stamp_of_recipes)

built() {
  [ "$(cat "$root/stamp" 2>/dev/null || true)" = "$want" ] || return 1
  local b
  for b in "${binaries[@]}"; do [ -x "$bin/$b" ] || return 1; done
}

# kwok's stages ship in its module (kustomize/stage), not in the binary.
write_kwok_stages() {
  local dir stage out=$1
  dir=$(cd "$recipes/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)
  : >"$out.new"
  for stage in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
    pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    [ -f "$dir/kustomize/stage/$stage" ] || { log "kwok stage $stage missing in $dir"; return 1; }
    { echo "---"; cat "$dir/kustomize/stage/$stage"; } >>"$out.new"
  done
  mv "$out.new" "$out"
}

mkdir -p "$root"
exec 9>"$root/lock"
flock 9
if built; then
  [ -s "$bin/kwok-stages.yaml" ] || write_kwok_stages "$bin/kwok-stages.yaml"
  log "cached: $bin"
  echo "$bin"
  exit 0
fi

start=$SECONDS
work=$root/bin.new
rm -rf "$work" && mkdir -p "$work"

# Version stamps as Kubernetes' own hack/lib/version.sh sets them, so /version answers the release.
minor=${k8s_version#v1.}
minor=${minor%%.*}
version_ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  version_ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  version_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

log "building Kubernetes $k8s_version control plane into $bin (first use; about 15-25 minutes cold on 2 cores)"
(cd "$recipes/k8s" && go build -trimpath -ldflags "-s -w$version_ldflags" -o "$work/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler)
log "kube-apiserver, kube-controller-manager, kube-scheduler built ($((SECONDS - start))s)"
(cd "$recipes/etcd" && go build -trimpath -ldflags "-s -w" -o "$work/etcd" .)
log "etcd built ($((SECONDS - start))s)"
(cd "$recipes/kwok" && go build -trimpath -ldflags "-s -w" -o "$work/kwok" sigs.k8s.io/kwok/cmd/kwok)
log "kwok built ($((SECONDS - start))s)"
write_kwok_stages "$work/kwok-stages.yaml"

rm -rf "$bin" && mv "$work" "$bin"
echo "$want" >"$root/stamp"
log "built in $((SECONDS - start))s: $bin"
echo "$bin"
