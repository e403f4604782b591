#!/usr/bin/env bash
# Cluster numbers for the README, in one run on this machine (2 cores, so read the ratios):
#  1. a single node (`--cores 1`) against a 3-node local cluster (`corekv dev-cluster`, one
#     core each, 16 partitions, RF 3), both durable (sync): strong SET, strong GET and eventual
#     GET, 50 connections x pipeline 1, 100k keys, 500-byte values; in the cluster twice: all
#     through one node (`--routing node`: it forwards to each partition's leader), and routed
#     by the map as the SDK does (`--routing map`: each request straight to its leader);
#  2. failover: with the cluster idle, kill -9 the node leading the most partitions and time
#     until a write to every partition has succeeded again through a survivor.
# usage: bench/cluster.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
secs=${1:-10}
cargo build --release --quiet -p corekv -p corekv-loadgen
ulimit -l "$(ulimit -H -l)" 2>/dev/null || true
bin=target/release

run_load() { # addr mix consistency preload [routing] -> "ops p50 p99 p999"
  local pre=() out
  [ "$4" = yes ] && pre=(--preload)
  out=$("$bin/corekv-loadgen" --addr "$1" --keys 100000 --mix "$2" --consistency "$3" \
    --routing "${5:-auto}" \
    "${pre[@]}" --value-size 500 --connections 50 --pipeline 1 --duration "$secs" --warmup 2 \
    2>"$work/loadgen.err") || {
    echo "bench/cluster.sh: corekv-loadgen $2 against $1 failed:" >&2
    tail -5 "$work/loadgen.err" >&2
    exit 1
  }
  echo "$out" | awk -v op="${2%%=*}" '$1==op {printf "%.0f %s %s %s", $3, $4, $6, $7}'
}

echo "== 1a. single node" >&2
p=$(free_port)
"$bin/corekv" serve --cores 1 --resp-listen off --http-listen off --listen "127.0.0.1:$p" \
  --data-dir "$work/single" >"$work/single.out" 2>"$work/single.err" &
node=$!; pids+=("$node"); wait_ready "$work/single.out"
s_set=$(run_load "127.0.0.1:$p" set=1 default no)
s_get=$(run_load "127.0.0.1:$p" get=1 default yes)
kill "$node"; wait "$node" 2>/dev/null || true

echo "== 1b. 3-node cluster" >&2
# Node i listens on base+10i .. base+10i+3. Pick a base below the ephemeral port range, where
# all of them are free: the load generator's closed connections (TIME_WAIT) sit in that range
# and would make a node's bind fail.
base=$(free_base 3)
"$bin/corekv" dev-cluster --nodes 3 --base-port "$base" --data-dir "$work/cluster" \
  --partitions 16 >"$work/cluster.out" 2>"$work/cluster.err" &
dc=$!; pids+=("$dc")
for _ in $(seq 1 100); do grep -q 'Ctrl-C' "$work/cluster.out" && break; sleep 0.2; done
grep -q 'Ctrl-C' "$work/cluster.out" || {
  echo "bench/cluster.sh: the dev cluster did not start (base port $base):" >&2
  tail -5 "$work/cluster.err" >&2
  exit 1
}
n1="127.0.0.1:$((base + 10))"
for _ in $(seq 1 100); do "$bin/corekv" set --addr "$n1" warm up >/dev/null 2>&1 && break; sleep 0.2; done
c_set=$(run_load "$n1" set=1 strong no node)
c_get=$(run_load "$n1" get=1 strong yes node)
c_eget=$(run_load "$n1" get=1 eventual no node)
r_set=$(run_load "$n1" set=1 strong no map)
r_get=$(run_load "$n1" get=1 strong no map)
r_eget=$(run_load "$n1" get=1 eventual no map)

printf '\n%-34s %10s %8s %8s %9s\n' "(50 conns x P1, 500 B values)" ops_per_sec p50_us p99_us p99.9_us
row() { read -r a b c d <<<"$2"; printf '%-34s %10s %8s %8s %9s\n' "$1" "$a" "$b" "$c" "$d"; }
row "single node SET (sync)" "$s_set"
row "single node GET" "$s_get"
row "cluster SET (strong), one node" "$c_set"
row "cluster GET (strong), one node" "$c_get"
row "cluster GET (eventual), one node" "$c_eget"
row "cluster SET (strong), by map" "$r_set"
row "cluster GET (strong), by map" "$r_get"
row "cluster GET (eventual), by map" "$r_eget"
ratio() { awk -v a="${1%% *}" -v b="${2%% *}" 'BEGIN {printf "%.2f", a / b}'; }
echo "cluster/single through one node: SET $(ratio "$c_set" "$s_set")x, strong GET $(ratio "$c_get" "$s_get")x, eventual GET $(ratio "$c_eget" "$s_get")x"
echo "cluster/single by map: SET $(ratio "$r_set" "$s_set")x, strong GET $(ratio "$r_get" "$s_get")x, eventual GET $(ratio "$r_eget" "$s_get")x"

echo "== 2. failover" >&2
status=$(curl -s "127.0.0.1:$((base + 12))/api/replication/status")
victim=$(echo "$status" | python3 -c 'import json,sys,collections
c=collections.Counter(p["leader"] for p in json.load(sys.stdin)["partitions"])
print(c.most_common(1)[0][0])')
led=$(echo "$status" | python3 -c "import json,sys; print(sum(p['leader']==$victim for p in json.load(sys.stdin)['partitions']))")
pid=$(grep "node $victim:" "$work/cluster.out" | sed 's/.*pid=//')
survivor=$(( victim % 3 + 1 ))
addr="127.0.0.1:$((base + 10 * survivor))"
# One key per partition (crc32c of the key mod 16, as schema/src/placement.rs places it), so
# the time covers every partition, those the dead node led included.
keys=$(python3 - <<'PY'
def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF
assert crc32c(b"123456789") == 0xE3069283
found = {}
k = 0
while len(found) < 16:
    key = f"failover-{k}"
    found.setdefault(crc32c(key.encode()) % 16, key)
    k += 1
print(" ".join(found.values()))
PY
)
s0=$(date +%s.%N)
kill -9 "$pid"
for key in $keys; do
  until "$bin/corekv" set --addr "$addr" --timeout-ms 10000 "$key" v >/dev/null 2>&1; do :; done
done
s1=$(date +%s.%N)
echo "killed node $victim (leader of $led of 16 partitions): every partition written again through node $survivor after $(awk -v a="$s0" -v b="$s1" 'BEGIN {printf "%.0f", (b - a) * 1000}') ms (one key per partition, sequential)"
