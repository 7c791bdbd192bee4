#!/usr/bin/env bash
# Karpenter's own scheduling benchmark and `nodewright plan`, side by side, on identical work
# (a benchmark, not a test; CI does not run it). Usage: benches/karpenter/run.sh [SIZES...]
# (default 1000 5000 20000; Karpenter has BenchmarkSchedulingN for 1 50 100 500 1000 2000 5000
# 10000 20000).
#
# 1. Karpenter: sigs.k8s.io/karpenter at $KARPENTER_VERSION (v1.14.1) from the Go module proxy,
#    copied once into ${NODEWRIGHT_BENCH_CACHE:-~/.cache/nodewright-bench}/karpenter-sched-VERSION
#    (outside the clone). nodewright_export_test.go is copied next to the benchmark
#    (pkg/controllers/provisioning/scheduling/scheduling_benchmark_test.go, build tag
#    test_performance) and the package's test binary is built once.
# 2. The exporter writes the benchmark's own pods (makeDiversePods, seed 42, as the first call of
#    BenchmarkSchedulingN gets them) and its 400 fake instance types, and runs the benchmark's
#    scheduler set-up once on those pods: Solve time, nodes, $/h (launched as Karpenter's fake
#    cloud provider launches: the cheapest compatible type and offering).
# 3. Karpenter's BenchmarkSchedulingN for each size, each in its own process so each sees the
#    seed-42 pods again: ns/op and its pods/sec, nodes metrics.
# 4. nodewright_side.py turns the fake types into a catalog served by a local EC2 stand-in (for
#    `nodewright plan --catalog ec2`) and a config (kubelet overhead and prices as Karpenter's),
#    proves with probe pods that every type's allocatable equals Karpenter's, and checks that the
#    pod file nodewright reads is what Karpenter's Solve got.
# 5. `nodewright plan` (release build) on the same pods: whole-process wall time (after a warm-up
#    run) and the solve phase from its log; nodes and $/h from its JSON plan.
# 6. Both plans are checked (every pod placed once, nodes within Karpenter's allocatable, the
#    constraints) and one table is printed with the machine it ran on.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
here=$repo_root/benches/karpenter
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1000 5000 20000)
version=${KARPENTER_VERSION:-v1.14.1}
cache=${NODEWRIGHT_BENCH_CACHE:-$HOME/.cache/nodewright-bench}/karpenter-sched-$version
side() { python3 "$here/nodewright_side.py" "$@"; }

work=$(mktemp -d)
stub_pid=
cleanup() {
  [ -z "$stub_pid" ] || kill "$stub_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

cpu_model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)
printf '%s, nproc %s, %s; load average at start %s; %s; Karpenter %s (%s), nodewright %s\n' \
  "$cpu_model" "$(nproc)" "$(awk '/MemTotal/ {printf "%.0f GiB RAM", $2 / 1048576}' /proc/meminfo)" \
  "$(cut -d' ' -f1-3 /proc/loadavg)" "$(date -u +%Y-%m-%dT%H:%MZ)" "$version" "$(go version | cut -d' ' -f3)" \
  "$(git -C "$repo_root" rev-parse --short HEAD)" >"$work/machine.txt"
echo "== machine: $(cat "$work/machine.txt")"

echo "== Karpenter $version: source and test binary"
if [ ! -f "$cache/src/go.mod" ]; then
  moddir=$(go mod download -json "sigs.k8s.io/karpenter@$version" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
  mkdir -p "$cache"
  rm -rf "$cache/src.tmp"
  cp -r "$moddir" "$cache/src.tmp"
  chmod -R u+w "$cache/src.tmp"
  mv "$cache/src.tmp" "$cache/src"
fi
pkg=$cache/src/pkg/controllers/provisioning/scheduling
cp "$here/nodewright_export_test.go" "$pkg/zz_nodewright_export_test.go"
(cd "$pkg" && go test -c -vet=off -tags test_performance -o "$cache/scheduling.test" .)

echo "== Karpenter's input, and one Solve of it (exporter)"
csv=$(IFS=,; echo "${sizes[*]}")
mkdir -p "$work/export"
(cd "$work" && NODEWRIGHT_EXPORT_DIR=$work/export NODEWRIGHT_EXPORT_SIZES=$csv NODEWRIGHT_KARPENTER_VERSION=$version \
  "$cache/scheduling.test" -test.run '^TestNodewrightExport$' -test.v -test.timeout 0) | grep -E 'pods:|FAIL' || true
for n in "${sizes[@]}"; do
  [ -f "$work/export/karpenter-$n.json" ] || { echo "exporter wrote nothing for $n pods" >&2; exit 1; }
done

echo "== Karpenter's BenchmarkSchedulingN (${KARPENTER_BENCHTIME:-1s} benchtime)"
for n in "${sizes[@]}"; do
  load=$(cut -d' ' -f1 /proc/loadavg)
  line=$(cd "$work" && /usr/bin/time -f '%e %U %S' -o "$work/ktime-$n" "$cache/scheduling.test" -test.run '^$' \
    -test.bench "^BenchmarkScheduling$n\$" -test.benchtime "${KARPENTER_BENCHTIME:-1s}" -test.timeout 0 |
    grep "^BenchmarkScheduling$n-" || true)
  [ -n "$line" ] || { echo "no BenchmarkScheduling$n in Karpenter $version" >&2; exit 1; }
  read -r kwall_s kuser_s ksys_s <"$work/ktime-$n"
  echo "$line"
  printf '%6d pods: benchmark process wall %.1f s, cpu %.1f s; load average before %s\n' \
    "$n" "$kwall_s" "$(awk -v u="$kuser_s" -v s="$ksys_s" 'BEGIN { print u + s }')" "$load"
  python3 - "$line" "$work/export/karpenter-$n.json" "$work/k-$n.json" "$work/ktime-$n" "$load" <<'EOF'
import json, sys
line, export, out, ktime, load = sys.argv[1:]
kwall, kuser, ksys = (float(x) for x in open(ktime).read().split())
f = line.split()
metrics = {f[i + 1]: float(f[i]) for i in range(2, len(f) - 1, 2)}
k = json.load(open(export))
r = {"karpenterIterations": int(f[1]), "karpenterNsPerOp": metrics["ns/op"],
     "karpenterPodsPerSec": metrics["pods/sec"], "karpenterBenchNodes": metrics.get("nodes"),
     "karpenterSolveSeconds": k["solveSeconds"], "karpenterProcessWallS": kwall,
     "karpenterProcessCpuS": kuser + ksys, "karpenterLoad": float(load)}
json.dump(r, open(out, "w"))
EOF
done

echo "== nodewright: release build"
(cd "$repo_root" && cargo build --release --quiet --bin nodewright)
bin=${CARGO_TARGET_DIR:-$repo_root/target}/release/nodewright

echo "== nodewright's input"
side prepare "$work/export" "$work"
python3 "$here/nodewright_side.py" ec2 "$work" "$work/port" & # not through side(): $! must be python
stub_pid=$!
for _ in $(seq 50); do [ -f "$work/port" ] && break; sleep 0.1; done
export AWS_ENDPOINT_URL_EC2=http://127.0.0.1:$(cat "$work/port") AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench \
  AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
plan=("$bin" --log-format json plan --config "$work/config.yaml" --catalog ec2 --region us-east-1 --output json)
"${plan[@]}" "$work/probe.json" >"$work/plan-probe.json" 2>"$work/probe.log"
side probe "$work" "$work/plan-probe.json"
for n in "${sizes[@]}"; do side inputs "$work/export" "$n"; done

echo "== nodewright plan"
for n in "${sizes[@]}"; do
  manifest=$work/export/pods-$n.json
  "${plan[@]}" "$manifest" >/dev/null 2>&1 # warm the page cache
  load=$(cut -d' ' -f1 /proc/loadavg)
  NODEWRIGHT_LOG=info /usr/bin/time -f '%e %M %U %S' -o "$work/time-$n" "${plan[@]}" "$manifest" >"$work/plan-$n.json" \
    2>"$work/log-$n"
  read -r wall_s rss_kib user_s sys_s <"$work/time-$n"
  cpu_s=$(awk -v u="$user_s" -v s="$sys_s" 'BEGIN { printf "%.2f", u + s }')
  solve_ms=$(grep '"planned"' "$work/log-$n" | tail -n1 | sed -E 's/.*"solve_ms":([0-9.]+).*/\1/')
  printf '%6d pods: wall %.2f s (cpu %.2f s), solve %.0f ms, peak RSS %d MiB; load average before %s\n' \
    "$n" "$wall_s" "$cpu_s" "$solve_ms" "$((rss_kib / 1024))" "$load"
  printf '{"nwWallS": %s, "nwSolveMs": %s, "nwRssKiB": %s, "nwCpuS": %s, "nwLoad": %s}\n' \
    "$wall_s" "$solve_ms" "$rss_kib" "$cpu_s" "$load" >"$work/nw-$n.json"
done

echo "== both plans, checked"
for n in "${sizes[@]}"; do side check "$work/export" "$work" "$n"; done
side table "$work" "${sizes[@]}"
