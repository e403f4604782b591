#!/usr/bin/env bash
# Moving replicas while serving, for the README: a 3-node local cluster (`corekv dev-cluster`,
# one core each, spread over the CPUs, 16 partitions, RF 3, durable) under a steady strong-SET load at about half its
# measured maximum (corekv-loadgen, open loop, 20 connections, 500-byte values, 20k keys
# preloaded so the moves carry data). Then:
#  1. add a 4th node (started with --join) while the load runs;
#  2. remove a founding node while the load runs.
# For each: p50/p99 before the move (SECONDS_BEFORE of load) and during it (a 15 s window
# that starts with it; the moves here take a few seconds, so the window also holds some calm),
# errors in that window, MB streamed and how long the move took, and leaders per node after.
# usage: bench/rebalance.sh [SECONDS_BEFORE]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
secs=${1:-8}
cargo build --release --quiet -p corekv -p corekv-loadgen
ulimit -l "$(ulimit -H -l)" 2>/dev/null || true
bin=target/release

# Node i listens on base+10i .. base+10i+3, below the ephemeral port range (see cluster.sh).
base=$(free_base 4)
"$bin/corekv" dev-cluster --nodes 3 --base-port "$base" --data-dir "$work/cluster" \
  --partitions 16 >"$work/cluster.out" 2>"$work/cluster.err" &
pids+=("$!")
for _ in $(seq 1 100); do grep -q 'Ctrl-C' "$work/cluster.out" && break; sleep 0.2; done
grep -q 'Ctrl-C' "$work/cluster.out" || { echo "bench/rebalance.sh: no cluster" >&2; exit 1; }
n1="127.0.0.1:$((base + 10))"
http() { echo "127.0.0.1:$((base + 10 * $1 + 2))"; }
for _ in $(seq 1 100); do "$bin/corekv" set --addr "$n1" warm up >/dev/null 2>&1 && break; sleep 0.2; done
target=$n1

load() { # rate seconds json-file [preload]
  local extra=()
  [ "${4:-}" = preload ] && extra=(--preload)
  "$bin/corekv-loadgen" --addr "$target" --keys 20000 --mix set=1 --consistency strong \
    --value-size 500 --connections 20 --pipeline 1 --duration "$2" --warmup 1 \
    ${1:+--rate "$1"} --json "$3" "${extra[@]}" >"$3.out" 2>"$3.err"
}
# "p50_us p99_us ops errors" from a loadgen JSON report.
summary() {
  python3 - "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
op = r["ops"]["set"]
print(op["p50_us"], op["p99_us"], op["count"], r["errors"])
if r["errors"]:
    print(f"{sys.argv[1].split('/')[-1]}: first error: {r['first_error']}", file=sys.stderr)
PY
}
streamed() {
  local sum=0 n
  for n in "$@"; do
    sum=$((sum + $(curl -s "$(http "$n")/api/rebalance" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("bytes_streamed_here", 0))')))
  done
  echo "$sum"
}
leaders() { # nodes...
  local n out=""
  for n in "$@"; do
    out+="$n:$(curl -s "$(http "$n")/api/replication/status" | python3 -c 'import json,sys; print(sum(p["role"]=="leader" for p in json.load(sys.stdin)["partitions"]))') "
  done
  echo "$out"
}

echo "== the maximum, closed loop (and the preload)" >&2
load "" 5 "$work/max.json" preload
max=$(summary "$work/max.json" | awk -v s=5 '{printf "%.0f", $3 / s}')
rate=$((max / ${RATE_DIVISOR:-2}))
echo "maximum ~${max} SET/s; the load runs at ${rate}/s" >&2

move() { # name http-node command...
  local name=$1 via=$2; shift 2
  load "$rate" "$secs" "$work/before-$name.json"
  load "$rate" 15 "$work/during-$name.json" &
  local lg=$!
  sleep 1
  local t0 t1; t0=$(date +%s.%N)
  "$@" --http "$(http "$via")" >"$work/$name.cli" 2>&1 || { cat "$work/$name.cli" >&2; exit 1; }
  t1=$(date +%s.%N)
  wait "$lg" || { tail -3 "$work/during-$name.json.err" >&2; exit 1; }
  # The load second by second, for where the move hurt (REBALANCE_TRACE=1).
  [ -n "${REBALANCE_TRACE:-}" ] && grep -E '^\[' "$work/during-$name.json.err" >&2
  echo "$name $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}')"
}

echo "== 1. add node 4" >&2
"$bin/corekv" serve --node-id 4 --join "127.0.0.1:$((base + 13))" \
  --cluster-listen "127.0.0.1:$((base + 43))" --listen "127.0.0.1:$((base + 40))" \
  --resp-listen off --http-listen "$(http 4)" --cores 1 --cpus $((3 % $(nproc))) --partitions 16 \
  --data-dir "$work/node-4" >"$work/node4.out" 2>"$work/node4.err" &
pids+=("$!")
wait_ready "$work/node4.out"
b_add=$(streamed 1 2 3)
add=$(move add 1 "$bin/corekv" cluster add 4 "127.0.0.1:$((base + 43))")
mb_add=$(awk -v a="$b_add" -v b="$(streamed 1 2 3 4)" 'BEGIN {printf "%.1f", (b - a) / 1048576}')
sleep 5  # leaders move back within seconds of a move (tested: 15 s at most)
lead_add=$(leaders 1 2 3 4)

echo "== 2. remove node 1" >&2
target="127.0.0.1:$((base + 20))"
b_rm=$(streamed 2 3 4)
rm=$(move remove 2 "$bin/corekv" cluster remove 1)
mb_rm=$(awk -v a="$b_rm" -v b="$(streamed 2 3 4)" 'BEGIN {printf "%.1f", (b - a) / 1048576}')
if [ -n "${REBALANCE_TRACE:-}" ]; then
  mkdir -p "${REBALANCE_TRACE_DIR:-/tmp/rebalance-trace}"
  for i in 1 2 3; do cp "$work/cluster/node-$i/node.log" "${REBALANCE_TRACE_DIR:-/tmp/rebalance-trace}/node-$i.log"; done
  cp "$work/node4.err" "${REBALANCE_TRACE_DIR:-/tmp/rebalance-trace}/node-4.log"
  echo "node logs in ${REBALANCE_TRACE_DIR:-/tmp/rebalance-trace}" >&2
fi
sleep 5
lead_rm=$(leaders 2 3 4)

printf '\n%-8s %8s %8s %9s %9s %7s %8s %7s  %s\n' move p50_us p99_us p50_move p99_move errors MB_moved secs leaders_after
for name in add remove; do
  read -r p50 p99 _ _ <<<"$(summary "$work/before-$name.json")"
  read -r q50 q99 _ errs <<<"$(summary "$work/during-$name.json")"
  if [ "$name" = add ]; then mb=$mb_add; took=${add#* }; led=$lead_add; else mb=$mb_rm; took=${rm#* }; led=$lead_rm; fi
  printf '%-8s %8s %8s %9s %9s %7s %8s %7s  %s\n' "$name" "$p50" "$p99" "$q50" "$q99" "$errs" "$mb" "$took" "$led"
done
echo "(load: ${rate} strong SET/s, routed by the map as the SDK does, seeded through node 1, then node 2 for the removal of node 1; 1/${RATE_DIVISOR:-2} of the measured maximum of ${max}/s)"
