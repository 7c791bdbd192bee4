#!/usr/bin/env bash
# A live race between Karpenter and nodewright on the same real control plane (read the header of
# benches/race/main.rs for what each side runs and what is measured): builds what is needed, then
# runs `cargo bench --bench race`, which runs each side on a fresh control plane and prints one
# table (pods bound, creation -> bound p50/p99/max, nodes launched, $/h, and the ratios).
#
# Builds, each once and cached:
#   - the control plane (scripts/k8s-binaries.sh: kube-apiserver, kube-controller-manager,
#     kube-scheduler v1.37.2, etcd, kwok; ~/.cache/nodewright-test);
#   - Karpenter's kwok provider, sigs.k8s.io/karpenter v1.14.1 from the Go module proxy, built with
#     `go build ./kwok` in a writable copy of the module, into
#     ${NODEWRIGHT_BENCH_CACHE:-~/.cache/nodewright-bench}/karpenter-v1.14.1/ (about 10 minutes
#     cold on 2 cores). v1.14.1 because its go.mod asks for go 1.26.6; later releases need a newer
#     Go than the machine's;
#   - the release build of the benchmark and of nodewright (cargo bench).
# Needs Go, the Rust toolchain and the test virtualenv (scripts/setup-test-deps.sh: moto_server and
# Helm's library for the chart's RBAC).
#
# Environment (defaults in brackets): PODS [1000]  DEPLOYMENTS_PER_KIND [4]  SEED [1]
#   SIDES [karpenter,nodewright]  TIMEOUT [600] seconds per side  TYPES [24 m5/c5/r5/m6i/c6i/r6i
#   types, large to 4xlarge]  PROFILE [release]  OUT [target/race.txt]
#
#   benches/race/run.sh                 # the race: Karpenter's side about 3 minutes, nodewright's
#                                       # up to TIMEOUT when pods stay unbound (README, benchmarks)
#   PODS=100 benches/race/run.sh        # a quick try
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo_root"

KARPENTER_VERSION=v1.14.1
PROFILE=${PROFILE:-release}
target_dir=${CARGO_TARGET_DIR:-$repo_root/target}
OUT=${OUT:-$target_dir/race.txt}
cache=${NODEWRIGHT_BENCH_CACHE:-$HOME/.cache/nodewright-bench}/karpenter-$KARPENTER_VERSION

export NODEWRIGHT_TEST_VENV=${NODEWRIGHT_TEST_VENV:-$repo_root/.venv-test}
PATH=$NODEWRIGHT_TEST_VENV/bin:$PATH
export PATH
if ! python3 -c 'import helm_python, yaml' 2>/dev/null || ! command -v moto_server >/dev/null; then
  echo "the test virtualenv ($NODEWRIGHT_TEST_VENV) lacks helm_python or moto_server; run scripts/setup-test-deps.sh" >&2
  exit 2
fi

echo "==> scripts/k8s-binaries.sh"
scripts/k8s-binaries.sh >/dev/null

# Karpenter's side only: SIDES=nodewright needs no Go build beyond the control plane.
if [[ ,${SIDES:-karpenter,nodewright}, == *,karpenter,* && ! -x $cache/karpenter-kwok ]]; then
  echo "==> building Karpenter $KARPENTER_VERSION's kwok provider into $cache"
  mkdir -p "$cache"
  module_dir=$(cd "$(mktemp -d)" && go mod download -json "sigs.k8s.io/karpenter@$KARPENTER_VERSION" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  rm -rf "$cache/src"
  cp -r "$module_dir" "$cache/src"
  chmod -R u+w "$cache/src"
  (cd "$cache/src" && GOFLAGS=-mod=mod go build -o "$cache/karpenter-kwok.tmp" ./kwok)
  mv "$cache/karpenter-kwok.tmp" "$cache/karpenter-kwok"
fi
export KARPENTER_BIN=$cache/karpenter-kwok KARPENTER_SRC=$cache/src

case $PROFILE in
  release | bench) profile_args=() ;;
  *) profile_args=(--profile "$PROFILE") ;;
esac
cargo_args=(bench "${profile_args[@]}" --bench race)
echo "==> cargo ${cargo_args[*]} --no-run (builds the benchmark and the nodewright binary it runs)"
cargo "${cargo_args[@]}" --no-run

mkdir -p "$(dirname "$OUT")"
{
  echo "# benches/race/run.sh $(date -u +%Y-%m-%dT%H:%M:%SZ), $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo '+dirty'), profile $PROFILE, Karpenter $KARPENTER_VERSION"
  echo "# $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "# PODS=${PODS:-1000} DEPLOYMENTS_PER_KIND=${DEPLOYMENTS_PER_KIND:-4} SEED=${SEED:-1} SIDES=${SIDES:-karpenter,nodewright} TIMEOUT=${TIMEOUT:-600}"
} | tee "$OUT"
echo "==> cargo ${cargo_args[*]}"
rc=0
cargo "${cargo_args[@]}" 2>&1 | tee -a "$OUT" || rc=$?
echo "output kept in $OUT"
exit "$rc"
