#!/usr/bin/env bash
# The project's test command: formatting, lints, Rust tests and manifest validation.
# Installs what it needs first (scripts/setup-test-deps.sh). Every step runs even when
# an earlier one failed, and the last line is the summary "N passed, M failed"; the exit
# status is non-zero if any step failed.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"

export NODEWRIGHT_TEST_VENV=${NODEWRIGHT_TEST_VENV:-$repo_root/.venv-test}
# Integration tests spawn promtool (/usr/bin) and Python tools (the virtualenv) from PATH.
PATH=$NODEWRIGHT_TEST_VENV/bin:$PATH:/usr/local/bin:/usr/bin:/bin
if [ -d "${CARGO_HOME:-$HOME/.cargo}/bin" ]; then
  PATH=$PATH:${CARGO_HOME:-$HOME/.cargo}/bin
fi
export PATH
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}

passed=0
failed=0
results=()

# step NAME COMMAND...: run one step, record whether it passed, never stop the script.
step() {
  local name=$1 start rc=0
  shift
  printf '\n==> [%d] %s\n' $((passed + failed + 1)) "$name"
  start=$SECONDS
  "$@" || rc=$?
  if [ "$rc" -eq 0 ]; then
    passed=$((passed + 1))
    results+=("PASS  $name ($((SECONDS - start))s)")
  else
    failed=$((failed + 1))
    results+=("FAIL  $name ($((SECONDS - start))s, exit $rc)")
  fi
  printf '<== %s\n' "${results[-1]}"
}

step "install test dependencies (scripts/setup-test-deps.sh)" scripts/setup-test-deps.sh
# The real Kubernetes control plane the cluster tests run against (kube-apiserver, etcd,
# kube-controller-manager, kube-scheduler, kwok), built from the Go module proxy on first use and
# cached outside the clone by version; the tests call the same script and find it built.
step "build the test control plane (scripts/k8s-binaries.sh)" scripts/k8s-binaries.sh
step "cargo fmt --all -- --check" cargo fmt --all -- --check
# clippy and the tests use the same dev profile (no --release), so proc-macros and build
# scripts compiled for one serve the other and nothing is built in a second profile.
step "cargo clippy --workspace --all-targets -- -D warnings" cargo clippy --workspace --all-targets -- -D warnings
# --no-fail-fast: one failing test binary must not hide the results of the others.
# The cluster tests start the control plane built above (tests/common/controlplane.rs).
step "cargo test --workspace --all-targets --no-fail-fast" cargo test --workspace --all-targets --no-fail-fast
step "cargo test --workspace --doc" cargo test --workspace --doc
# The chart checks run the binary itself (its `plan` reads each rendered config, its `serve
# --help` must know every flag the chart passes): make its absence a failure rather than a skip. `cargo build --workspace --tests` is a no-op
# after the test step and leaves target/debug/nodewright as the tests built it (a plain `cargo
# build` would unify features without the dev-dependencies and build the whole tree again).
step "validate manifests and the Helm chart (scripts/check-manifests.sh)" \
  env NODEWRIGHT_REQUIRE_BIN=1 bash -c 'cargo build --quiet --workspace --tests && scripts/check-manifests.sh'


printf '\n==> summary\n'
printf '%s\n' "${results[@]}"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
