#!/usr/bin/env bash
# Scale benchmark (not a test) of nodewright's scheduler extender behind the real kube-scheduler:
# runs benches/kwok_scale/main.rs (read its header for the details), which starts the test control
# plane of tests/common/controlplane.rs (etcd, kube-apiserver, kube-controller-manager) plus kwok
# on 127.0.0.1, creates NODES kwok Nodes, and then for each mode in MODES (names-only:
# nodeCacheCapable true; full-nodes: false) a fresh nodewright, a fresh kube-scheduler with
# nodewright's extender stanza and PODS pending pods for it. Per mode it prints the time from the
# first create to the last pod bound, kube-scheduler's scheduling algorithm and attempt latency
# p50/p99 (its /metrics: kube-scheduler has no metric for the extender call alone), nodewright's
# server-side extender filter/prioritize p50/p99 and call counts, nodewright's RSS (after start,
# after the run, peak) and CPU seconds, and the CPU and RSS of the other processes; then one
# summary table. Everything printed also goes to target/kwok-scale.txt (OUT to change).
#
# Needs: Go (scripts/k8s-binaries.sh builds kube-apiserver, kube-controller-manager,
# kube-scheduler, etcd and kwok on first use: 15-25 minutes cold on 2 cores, then cached in
# ~/.cache/nodewright-test), python3 with the test virtualenv (scripts/setup-test-deps.sh; the
# chart's RBAC is rendered with helm-python-sdk), and the Rust toolchain.
#
# How long: a cold release build of the benchmark and nodewright takes about 25 minutes on a
# 2-core machine. Then, with the defaults (5,000 nodes, 10,000 pods, both modes), about an hour
# or more on 2 cores. Measured with the dev profile: the nodes took about 2 minutes to be Ready (kwok
# initialises about 75 a second), names-only bound 10,000 pods in 4-6 minutes (30-40 pods/s),
# full-nodes bound only about 4 pods/s (kube-scheduler used 137 ms of CPU per bound pod against
# 10 ms in names-only mode; most likely encoding the full Node objects it sends, 500 per call by
# its default percentageOfNodesToScore at 5,000 nodes, twice per pod: not profiled),
# so 10,000 pods take 45 minutes or more (BIND_TIMEOUT's default allows 85 per mode). Everything shares the
# machine's cores, so the figures are for this machine, not for nodewright alone.
#
# Environment (defaults in brackets):
#   PROFILE [release]   cargo profile; PROFILE=dev builds unoptimised, much faster, for a quick
#                       try (`cargo bench --profile dev`: still passes --bench, so NODES etc. apply)
#   NODES [5000]  PODS [10000]  MODES [names-only,full-nodes]  CONCURRENCY [32]
#   KWOK_LEASE_SECONDS [40]  kwok's node lease duration (renewed every quarter of it: at the
#                            default, 5,000 nodes renew 500 leases a second)
#   BIND_TIMEOUT [120 + PODS/2]  seconds per mode before giving up (it then reports what bound
#                                and exits 1)
#   NODEWRIGHT_LOG [warn]    nodewright's log level; its log, and every other process's, stays in
#                            target/tmp/controlplane/kwok_scale-<pid>/
#   OUT [target/kwok-scale.txt]
#
#   benches/kwok/run.sh                                  # the full run, release
#   PROFILE=dev NODES=500 PODS=1000 benches/kwok/run.sh  # a quick try (about 5 minutes after the build)
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo_root"

PROFILE=${PROFILE:-release}
target_dir=${CARGO_TARGET_DIR:-$repo_root/target}
OUT=${OUT:-$target_dir/kwok-scale.txt}

export NODEWRIGHT_TEST_VENV=${NODEWRIGHT_TEST_VENV:-$repo_root/.venv-test}
PATH=$NODEWRIGHT_TEST_VENV/bin:$PATH
export PATH
if ! python3 -c 'import helm_python, yaml' 2>/dev/null; then
  echo "python3 cannot import helm_python and yaml; run scripts/setup-test-deps.sh (the virtualenv is $NODEWRIGHT_TEST_VENV)" >&2
  exit 2
fi

case $PROFILE in
  release | bench) profile_args=() ;;
  *) profile_args=(--profile "$PROFILE") ;;
esac
cargo_args=(bench "${profile_args[@]}" --bench kwok_scale)

# The control plane first, so that a first (long) build of it shows as such.
echo "==> scripts/k8s-binaries.sh"
scripts/k8s-binaries.sh >/dev/null
echo "==> cargo ${cargo_args[*]} --no-run (builds the benchmark and the nodewright binary it runs)"
cargo "${cargo_args[@]}" --no-run

mkdir -p "$(dirname "$OUT")"
{
  echo "# benches/kwok/run.sh $(date -u +%Y-%m-%dT%H:%M:%SZ), $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo '+dirty'), profile $PROFILE, $(nproc) cores"
  echo "# NODES=${NODES:-5000} PODS=${PODS:-10000} MODES=${MODES:-names-only,full-nodes} CONCURRENCY=${CONCURRENCY:-32} KWOK_LEASE_SECONDS=${KWOK_LEASE_SECONDS:-40} BIND_TIMEOUT=${BIND_TIMEOUT:-default}"
} | tee "$OUT"
echo "==> cargo ${cargo_args[*]}"
# Progress (stderr) and results (stdout) both go to the terminal and to $OUT.
rc=0
cargo "${cargo_args[@]}" 2>&1 | tee -a "$OUT" || rc=$?
echo "output kept in $OUT"
exit "$rc"
