#!/usr/bin/env bash
# Load benchmark (not a test) of nodewright's admission path over TLS + HTTP/2, the way
# kube-apiserver calls it. Builds the release binary and the paced load generator
# (examples/loadgen.rs), starts `nodewright serve` on loopback in self-signed mode with
# --bench-endpoints, then drives it:
#   1. /mutate       h2load, closed loop, as fast as it goes (N requests, C connections,
#                    M streams each)
#   2. /bench/fixed  the same load against a fixed response: the TLS/HTTP2 stack's ceiling
#   3. /mutate       h2load --rps at a fixed total rate (default 5,000 req/s): BURSTY.
#                    h2load releases each connection's requests in ticks, not evenly: here
#                    (nghttp2 1.52) every 10 ms, so 5,000 req/s arrives as bursts of 50 and
#                    p50/p99 measure draining a burst, not the service. (--timing-script-file
#                    would be smoother but fell to about half the scripted rate here.) Kept,
#                    labelled "bursty", because how fast a burst drains is worth seeing too
#                    (the apiserver does send bursts); it is not the latency-at-a-rate figure.
#   4. /mutate       loadgen, open loop, paced: request i is due at start + i/RATE exactly,
#                    each in its own task on one of LOADGEN_CONNECTIONS HTTP/2 connections,
#                    latency measured from the due time (so a late send counts against the
#                    result: no coordinated omission). This is the latency-at-RATE figure.
#   5. /bench/fixed  the same paced load against the fixed response: the floor that the
#                    TLS/HTTP2 stack and the generator alone give at that rate.
# and prints req/s, mean, p50, p99 and max latency per run, and /mutate's throughput as a
# percentage of /bench/fixed's. Every request sends benches/load/pod-create.json, an
# AdmissionReview v1 Pod CREATE as the apiserver sends it (compacted before sending).
# loadgen runs with one tokio worker thread (plus a mostly idle pacer thread), so on a
# 2-core machine the server keeps a core. Below each paced run it also prints how late
# requests started and the latency from the actual start, to show how much of the figure
# is the generator's own lateness. Generator and server share the machine's cores, so the
# paced tails move with anything else running (p999 of ~4-5 ms, one 4 ms scheduler tick,
# shows up even on a quiet 2-core machine): repeat a run before trusting its p99.
#
# Needs h2load (Debian nghttp2-client), curl and python3; scripts/setup-test-deps.sh
# installs h2load. All traffic goes to 127.0.0.1. With the defaults a run takes about two
# minutes after the builds.
#
# Environment (defaults in brackets):
#   N [50000]  C [8]  M [16]           requests, connections, streams per connection (runs 1, 2)
#   RATE [5000] RATE_CLIENTS [10]      total req/s and connections for run 3 (RATE/RATE_CLIENTS each)
#   RATE_SECONDS [10]                  length of runs 3, 4 and 5 (loadgen: after 1 s warm-up)
#   LOADGEN_CONNECTIONS [4]            HTTP/2 connections for runs 4 and 5
#   WARMUP [2000]                      requests sent before each measured run, not reported
#   PORT [18443] METRICS_PORT [18080]  loopback ports for the HTTPS and metrics listeners
#   NODEWRIGHT_CONFIG                  config file for serve (default: its embedded example)
#   BINARY                             run this nodewright binary instead of building
#                                      target/release/nodewright
#   LOADGEN                            run this loadgen binary instead of building
#                                      target/release/examples/loadgen
#   KEEP=DIR                           keep h2load and loadgen output, per-request logs and
#                                      the server log in DIR
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo_root"

N=${N:-50000}
C=${C:-8}
M=${M:-16}
RATE=${RATE:-5000}
RATE_CLIENTS=${RATE_CLIENTS:-10}
RATE_SECONDS=${RATE_SECONDS:-10}
LOADGEN_CONNECTIONS=${LOADGEN_CONNECTIONS:-4}
WARMUP=${WARMUP:-2000}
PORT=${PORT:-18443}
METRICS_PORT=${METRICS_PORT:-18080}

if [ $((RATE % RATE_CLIENTS)) -ne 0 ]; then
  echo "RATE ($RATE) must be a multiple of RATE_CLIENTS ($RATE_CLIENTS): h2load's --rps is per connection" >&2
  exit 2
fi
for tool in h2load curl python3; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "$tool not found; run scripts/setup-test-deps.sh (h2load is Debian's nghttp2-client)" >&2
    exit 2
  }
done

if [ -n "${KEEP:-}" ]; then
  mkdir -p "$KEEP"
  work=$(cd "$KEEP" && pwd)
else
  work=$(mktemp -d)
fi

server_pid=
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$server_pid" 2>/dev/null || break
      sleep 0.2
    done
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -n "${BINARY:-}" ]; then
  binary=$BINARY
else
  echo "==> cargo build --release"
  cargo build --release
  binary=$repo_root/target/release/nodewright
fi
[ -x "$binary" ] || { echo "$binary is not an executable" >&2; exit 2; }
if [ -n "${LOADGEN:-}" ]; then
  loadgen=$LOADGEN
else
  echo "==> cargo build --release --example loadgen"
  cargo build --release --example loadgen
  loadgen=$repo_root/target/release/examples/loadgen
fi
[ -x "$loadgen" ] || { echo "$loadgen is not an executable" >&2; exit 2; }

if curl -sf -o /dev/null "http://127.0.0.1:$METRICS_PORT/readyz"; then
  echo "something already answers on 127.0.0.1:$METRICS_PORT; stop it or set METRICS_PORT/PORT" >&2
  exit 2
fi

# The apiserver sends compact JSON; the file in the repository is indented to be read.
body=$work/pod-create.json
python3 -c 'import json, sys; json.dump(json.load(open(sys.argv[1])), open(sys.argv[2], "w"), separators=(",", ":"))' \
  "$repo_root/benches/load/pod-create.json" "$body"

serve_args=(serve --listen "127.0.0.1:$PORT" --metrics-listen "127.0.0.1:$METRICS_PORT"
  --ca-out "$work/ca.crt" --bench-endpoints)
[ -z "${NODEWRIGHT_CONFIG:-}" ] || serve_args+=(--config "$NODEWRIGHT_CONFIG")

echo "==> $binary ${serve_args[*]}"
"$binary" "${serve_args[@]}" >"$work/server.log" 2>&1 &
server_pid=$!

ready=0
for _ in $(seq 1 150); do
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "nodewright exited during start-up; its log:" >&2
    tail -n 50 "$work/server.log" >&2
    exit 1
  fi
  if curl -sf -o /dev/null "http://127.0.0.1:$METRICS_PORT/readyz"; then
    ready=1
    break
  fi
  sleep 0.2
done
if [ "$ready" -ne 1 ]; then
  echo "nodewright not ready after 30 s; its log:" >&2
  tail -n 50 "$work/server.log" >&2
  exit 1
fi

base=https://127.0.0.1:$PORT
# One request through each endpoint first, so a broken endpoint fails loudly here rather
# than as a table of fast errors. curl checks the certificate against the CA serve wrote
# (self-signed mode names localhost and 127.0.0.1); h2load does not verify certificates.
uid=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["request"]["uid"])' "$body")
for path in /mutate /bench/fixed; do
  out=$work/check${path//\//-}.out
  code=$(curl -sS --cacert "$work/ca.crt" --http2 -o "$out" -w '%{http_code} %{http_version}' \
    -H 'content-type: application/json' --data-binary "@$body" "$base$path?timeout=10s") || true
  if [ "$code" != "200 2" ]; then
    echo "POST $path answered '$code' (want '200 2': status 200 over HTTP/2):" >&2
    head -c 2000 "$out" >&2
    echo >&2
    exit 1
  fi
done
if ! grep -q "\"$uid\"" "$work/check-mutate.out"; then
  echo "POST /mutate did not answer with the request's uid $uid:" >&2
  head -c 2000 "$work/check-mutate.out" >&2
  echo >&2
  exit 1
fi

# load NAME PATH H2LOAD_ARGS...: one measured h2load run, preceded by a warm-up, writing
# h2load's output to $work/NAME.out and its per-request log to $work/NAME.log.
load() {
  local name=$1 path=$2
  shift 2
  local common=(-t 1 -H 'content-type: application/json' -d "$body")
  if [ "$WARMUP" -gt 0 ]; then
    timeout 120 h2load "${common[@]}" -n "$WARMUP" -c "$C" -m "$M" "$base$path?timeout=10s" >/dev/null
  fi
  echo "==> h2load $* $path"
  timeout 300 h2load "${common[@]}" "$@" --log-file="$work/$name.log" "$base$path?timeout=10s" \
    >"$work/$name.out"
  grep -E '^(finished in|requests:|status codes:)' "$work/$name.out" | sed 's/^/    /'
}

# summarize NAME LABEL PATH: one table row from h2load's req/s and the per-request log
# (columns: start time µs, status, µs until the end of the response; status -1 = failed).
# Prints "LABEL PATH req/s count mean p50 p99 max errors".
summarize() {
  local name=$1 label=$2 path=$3 rps errors
  rps=$(awk '/^finished in/ {print $4}' "$work/$name.out")
  errors=$(awk -F'\t' '$2 != 200 {n++} END {print n + 0}' "$work/$name.log")
  awk -F'\t' '$2 == 200 {print $3}' "$work/$name.log" | sort -n |
    awk -v label="$label" -v path="$path" -v rps="$rps" -v errors="$errors" '
      { v[NR] = $1; sum += $1 }
      function pct(p,  i) { i = int(p * NR + 0.999999); if (i < 1) i = 1; return v[i] / 1000 }
      END {
        if (NR == 0) { printf "%s %s %s 0 - - - - %d\n", label, path, rps, errors; exit }
        printf "%s %s %s %d %.3f %.3f %.3f %.3f %d\n", label, path, rps, NR,
          sum / NR / 1000, pct(0.50), pct(0.99), v[NR] / 1000, errors
      }'
}

# paced NAME PATH: one loadgen run at RATE for RATE_SECONDS (after its own 1 s warm-up),
# writing its output to $work/NAME.out. A failed run (errors, or under 95 % of RATE) is
# remembered in paced_failed and fails the script after the table is printed.
paced_failed=
paced() {
  local name=$1 path=$2 rc=0
  echo "==> loadgen --rate $RATE --duration $RATE_SECONDS --connections $LOADGEN_CONNECTIONS $path"
  timeout $((RATE_SECONDS + 60)) "$loadgen" --url "$base$path?timeout=10s" --body "$body" \
    --ca "$work/ca.crt" --rate "$RATE" --duration "$RATE_SECONDS" \
    --connections "$LOADGEN_CONNECTIONS" >"$work/$name.out" 2>&1 || rc=$?
  { grep -E '^(loadgen|from actual start|errors):' "$work/$name.out" || true; } | sed 's/^/    /'
  if [ "$rc" -ne 0 ]; then
    paced_failed="$paced_failed $path"
    echo "    loadgen exited with status $rc; the end of its other output:" >&2
    { grep -v -E '^(loadgen: rate=|from actual start|errors|paced open-loop|latency is)' \
      "$work/$name.out" || true; } | tail -n 5 | sed 's/^/    /' >&2
  fi
}

# summarize_paced NAME LABEL PATH: a table row from loadgen's summary line (no mean: "-").
summarize_paced() {
  local name=$1 label=$2 path=$3 line
  line=$(grep -m1 '^loadgen: rate=' "$work/$name.out" || true)
  if [ -z "$line" ]; then
    printf '%s %s - 0 - - - - -\n' "$label" "$path"
    return
  fi
  awk -v label="$label" -v path="$path" '
    {
      for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
      sub(/\/s$/, "", f["achieved"])
      printf "%s %s %s %s - %s %s %s %s\n", label, path, f["achieved"], f["ok"],
        f["p50_ms"], f["p99_ms"], f["max_ms"], f["errors"]
    }' <<<"$line"
}

load mutate-max /mutate -n "$N" -c "$C" -m "$M"
load fixed-max /bench/fixed -n "$N" -c "$C" -m "$M"
load mutate-rate /mutate -n $((RATE * RATE_SECONDS)) -c "$RATE_CLIENTS" -m "$M" --rps=$((RATE / RATE_CLIENTS))
paced mutate-paced /mutate
paced fixed-paced /bench/fixed

rows=$work/rows.txt
{
  summarize mutate-max "max(c=$C,m=$M)" /mutate
  summarize fixed-max "max(c=$C,m=$M)" /bench/fixed
  summarize mutate-rate "bursty($RATE/s)" /mutate
  summarize_paced mutate-paced "paced($RATE/s)" /mutate
  summarize_paced fixed-paced "paced($RATE/s)" /bench/fixed
} >"$rows"

echo
echo "nodewright load benchmark: $(nproc) cores, h2load -t 1 and loadgen --threads 1, TLS + HTTP/2, body $(wc -c <"$body") bytes"
printf '%-17s %-13s %10s %8s %9s %9s %9s %9s %7s\n' run endpoint req/s ok mean_ms p50_ms p99_ms max_ms errors
while read -r label path rps count mean p50 p99 max errors; do
  printf '%-17s %-13s %10s %8s %9s %9s %9s %9s %7s\n' "$label" "$path" "$rps" "$count" "$mean" "$p50" "$p99" "$max" "$errors"
done <"$rows"
awk 'NR == 1 {m = $3} NR == 2 {f = $3} END {if (f > 0) printf "/mutate throughput is %.1f %% of /bench/fixed\n", 100 * m / f}' "$rows"
echo "(max runs are closed-loop: their latency includes queueing behind c*m requests in flight;"
echo " the bursty run's arrivals come in h2load --rps ticks, bursts of about RATE/100 every 10 ms;"
echo " the paced runs are open loop with evenly spaced arrivals, latency from each request's due"
echo " time, correcting for coordinated omission: those are the latency-at-$RATE/s figures)"
[ -z "${KEEP:-}" ] || echo "raw output kept in $work"

failed=0
if awk '$9 > 0 {bad = 1} END {exit !bad}' "$rows"; then
  echo "some requests failed (non-200 or stream error): see the errors column" >&2
  failed=1
fi
if [ -n "$paced_failed" ]; then
  echo "loadgen failed for$paced_failed (errors, under 95 % of $RATE req/s, or no result): see above" >&2
  failed=1
fi
if [ "$failed" -ne 0 ]; then
  exit 1
fi
