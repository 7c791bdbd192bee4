#!/usr/bin/env bash
# Planner benchmark (not a test): `nodewright plan` end to end, as a user runs it, on
# Karpenter's scheduling-benchmark mix (examples/benchmix.rs: five equal groups of pods -
# no constraint, zone spread maxSkew 1, hostname spread maxSkew 1, zone self-affinity,
# hostname anti-affinity - with cpu from {100,250,500,1000,1500}m and memory from
# {100,256,512,1024,2048,4096}Mi) at 1,000, 5,000 and 20,000 pods, against the full
# embedded us-east-1 catalog (benches/plan/benchmix-config.yaml allows every type).
#
# For each size it prints the wall time and peak RSS of the whole process (reading and
# parsing the YAML, mutation, catalog, solve, JSON output; from /usr/bin/time), the phase
# times nodewright logs at info level, pods per second, and the plan's node count and
# price. Builds the release binary first. Usage: benches/plan/run.sh [SIZES...]
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo_root"
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1000 5000 20000)

cargo build --release --quiet --bin nodewright --example benchmix
bin=target/release/nodewright
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

printf '%8s %9s %9s %10s %10s %8s %8s %9s %11s %7s %10s\n' \
  pods wall_ms rss_mib read_ms expand_ms cat_ms solve_ms pods/s solve_pods/s nodes usd/hour
for n in "${sizes[@]}"; do
  manifest=$work/benchmix-$n.yaml
  target/release/examples/benchmix --pods "$n" --seed 42 >"$manifest"
  # warm the page cache, then measure
  "$bin" plan --config benches/plan/benchmix-config.yaml --output json "$manifest" >/dev/null
  NODEWRIGHT_LOG=info /usr/bin/time -f '%e %M' -o "$work/time" \
    "$bin" --log-format json plan --config benches/plan/benchmix-config.yaml --output json \
    "$manifest" >"$work/plan.json" 2>"$work/log"
  read -r wall_s rss_kib <"$work/time"
  phases=$(grep '"planned"' "$work/log" | tail -n1)
  field() { printf '%s' "$phases" | sed -E "s/.*\"$1\":([0-9.]+).*/\1/"; }
  nodes=$(grep -c '"nodePool"' "$work/plan.json" || true)
  price=$(sed -nE 's/.*"totalPricePerHour": ([0-9.]+).*/\1/p' "$work/plan.json")
  awk -v n="$n" -v wall="$wall_s" -v rss="$rss_kib" -v r="$(field read_ms)" -v e="$(field expand_ms)" \
      -v c="$(field catalog_ms)" -v s="$(field solve_ms)" -v nodes="$nodes" -v price="$price" 'BEGIN {
    printf "%8d %9.0f %9.1f %10.1f %10.1f %8.1f %8.1f %9.0f %11.0f %7d %10.2f\n",
      n, wall * 1000, rss / 1024, r, e, c, s, n / wall, n / (s / 1000), nodes, price }'
done
