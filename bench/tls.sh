#!/usr/bin/env bash
# TLS, and authentication with authorization, against plaintext, in the same run: one corekv
# node pinned to CPU 0 (`--cores 1`, memory only so the front end is what is measured),
# corekv-loadgen pinned to CPU 1, 50 connections at pipeline 1 and 16, 50-byte keys,
# 500-byte values, 100k keys preloaded. The node is started three times on the same data
# shape: plaintext; with --tls-cert (certificates from tuning/make-certs.sh); and plaintext
# with --requirepass, every connection authenticated and every request checked. Server CPU
# is read from /proc over each run.
#
# usage: bench/tls.sh [SECONDS_PER_SHAPE]    (default 10; needs openssl)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
secs=${1:-10}
keys=100000

cargo build --release --quiet -p corekv -p corekv-loadgen
ulimit -l "$(ulimit -H -l)" 2>/dev/null || true
bin=target/release
bash tuning/make-certs.sh "$work/certs" 1 >/dev/null

declare -A result
for mode in plain tls auth; do
  port=$(free_port)
  tls_node=(); tls_client=()
  if [ "$mode" = tls ]; then
    tls_node=(--tls-cert "$work/certs/node-1.pem" --tls-key "$work/certs/node-1.key")
    tls_client=(--tls-ca "$work/certs/ca.pem")
  fi
  if [ "$mode" = auth ]; then
    tls_node=(--requirepass bench-secret)
    tls_client=(--password bench-secret)
  fi
  rm -rf "$work/data"
  taskset -c 0 "$bin/corekv" serve --cores 1 --durability none --resp-listen off \
    --http-listen off --listen "127.0.0.1:$port" --data-dir "$work/data" "${tls_node[@]}" \
    >"$work/node.out" 2>"$work/node.err" &
  node=$!; pids+=("$node")
  wait_ready "$work/node.out"
  taskset -c 1 "$bin/corekv-loadgen" --addr "127.0.0.1:$port" --keys $keys --preload \
    --mix set=1 --duration 1 --warmup 0 "${tls_client[@]}" >/dev/null 2>&1
  for pipeline in 1 16; do
    for op in get set; do
      t0=$(ticks "$node"); s0=$(date +%s.%N)
      out=$(taskset -c 1 "$bin/corekv-loadgen" --addr "127.0.0.1:$port" --keys $keys \
        --mix "$op=1" --connections 50 --pipeline $pipeline --duration "$secs" --warmup 2 \
        "${tls_client[@]}" 2>/dev/null)
      t1=$(ticks "$node"); s1=$(date +%s.%N)
      # table row: op count ops/s p50 p90 p99 p99.9 max; CPU over the warmup too
      row=$(echo "$out" | awk -v op="$op" '$1==op {printf "%.0f %s %s %s", $3, $4, $6, $7}')
      ops=${row%% *}
      us=$(awk -v a="$t0" -v b="$t1" -v hz="$hz" -v s="$s0" -v e="$s1" -v ops="$ops" -v secs="$secs" \
        'BEGIN{ busy=(b-a)/hz; printf "%.1f", busy/((e-s)) / ops * 1e6 }')
      result[$mode,$op,$pipeline]="$row $us"
    done
  done
  kill "$node"; wait "$node" 2>/dev/null || true
done

echo "# bench/tls.sh $secs  ($(date -u +%Y-%m-%d), $(nproc) CPUs; node CPU 0, client CPU 1)"
echo
echo "| Shape | Plain ops/s | TLS ops/s | TLS / plain | Plain p50/p99/p999 µs | TLS p50/p99/p999 µs | Plain CPU µs/req | TLS CPU µs/req |"
echo "|---|---|---|---|---|---|---|---|"
for pipeline in 1 16; do
  for op in get set; do
    read -r po pp50 pp99 pp999 pcpu <<<"${result[plain,$op,$pipeline]}"
    read -r to tp50 tp99 tp999 tcpu <<<"${result[tls,$op,$pipeline]}"
    ratio=$(awk -v a="$to" -v b="$po" 'BEGIN{printf "%.2f", a/b}')
    echo "| ${op^^} c50 P$pipeline | $po | $to | $ratio | $pp50/$pp99/$pp999 | $tp50/$tp99/$tp999 | $pcpu | $tcpu |"
  done
done
echo
echo "| Shape | Plain ops/s | Authenticated ops/s | Auth / plain | Auth p50/p99/p999 µs | Plain CPU µs/req | Auth CPU µs/req |"
echo "|---|---|---|---|---|---|---|"
for pipeline in 1 16; do
  for op in get set; do
    read -r po pp50 pp99 pp999 pcpu <<<"${result[plain,$op,$pipeline]}"
    read -r ao ap50 ap99 ap999 acpu <<<"${result[auth,$op,$pipeline]}"
    ratio=$(awk -v a="$ao" -v b="$po" 'BEGIN{printf "%.2f", a/b}')
    echo "| ${op^^} c50 P$pipeline | $po | $ao | $ratio | $ap50/$ap99/$ap999 | $pcpu | $acpu |"
  done
done
