#!/usr/bin/env bash
# Redis protocol, side by side: Debian's redis-server and corekv's --resp-listen port, each
# pinned to CPU 0 (corekv with --cores 1), driven from CPU 1 by redis-benchmark and by
# corekv-loadgen --protocol resp with the same shapes: SET and GET, 50-byte keys, 500-byte
# values, 1M keys preloaded, 50 connections, pipeline 1 and 16. Both servers keep data in
# memory only (redis: no RDB, no AOF; corekv: --durability none). Server CPU is read from
# /proc over each run; "cpu/op" is corekv's CPU per request over Redis's.
#
# usage: bench/resp-vs-redis.sh [SECONDS_PER_RUN]   (default 10; needs redis-server, redis-tools)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
secs=${1:-10}
keys=1000000
command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null ||
  { echo "needs redis-server and redis-benchmark (apt-get install redis-server redis-tools)" >&2; exit 2; }
cargo build --release --quiet -p corekv -p corekv-loadgen
ulimit -l "$(ulimit -H -l)" 2>/dev/null || true
bin=target/release

start_server() { # name -> sets server_pid, server_port
  server_port=$(free_port)
  case $1 in
    redis) taskset -c 0 redis-server --port "$server_port" --bind 127.0.0.1 --save "" --appendonly no \
             >"$work/redis.log" 2>&1 &
           server_pid=$!; wait_port "$server_port" ;;
    corekv) taskset -c 0 "$bin/corekv" serve --cores 1 --durability none --http-listen off --listen "127.0.0.1:$(free_port)" \
             --resp-listen "127.0.0.1:$server_port" --data-dir "$work/data" >"$work/corekv.out" 2>"$work/corekv.err" &
           server_pid=$!; wait_ready "$work/corekv.out" ;;
  esac
  pids+=("$server_pid")
  echo "preloading $keys keys into $1 ..." >&2
  taskset -c 1 redis-benchmark -p "$server_port" -c 50 -P 16 -n $((keys * 3)) -r $keys -q \
    SET "$bench_key" "$bench_value" >/dev/null 2>&1
  # corekv-loadgen names its keys its own way: preload those too, so its GETs hit.
  taskset -c 1 "$bin/corekv-loadgen" --protocol resp --addr "127.0.0.1:$server_port" --keys $keys \
    --preload --mix set=1 --connections 50 --pipeline 16 --duration 1 --warmup 0 >/dev/null 2>&1
}

declare -A result
for server in redis corekv; do
  start_server $server
  for tool in redis-benchmark loadgen; do
    for pipeline in 1 16; do
      for op in set get; do
        t0=$(ticks "$server_pid"); s0=$(date +%s.%N)
        if [ $tool = loadgen ]; then
          row=$(taskset -c 1 "$bin/corekv-loadgen" --protocol resp --addr "127.0.0.1:$server_port" \
            --keys $keys --mix "$op=1" --connections 50 --pipeline $pipeline --duration "$secs" \
            --warmup 1 2>/dev/null | loadgen_row $op)
        else
          n=$(( pipeline == 1 ? 20000 * secs : 200000 * secs ))
          args=(SET "$bench_key" "$bench_value"); [ $op = get ] && args=(GET "$bench_key")
          row=$(taskset -c 1 redis-benchmark -p "$server_port" -c 50 -P $pipeline -n $n -r $keys \
            "${args[@]}" 2>/dev/null | redis_benchmark_row)
        fi
        t1=$(ticks "$server_pid"); s1=$(date +%s.%N)
        result[$server,$tool,$op,$pipeline]="$row $(cpu_pct "$t0" "$t1" "$s0" "$s1")"
      done
    done
  done
  kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
done

printf '\n%-15s %-6s %-3s | %10s %7s %7s %5s | %10s %7s %7s %5s | %6s %6s\n' \
  client shape op corekv_ops p50_us p99_us cpu% redis_ops p50_us p99_us cpu% ratio cpu/op
for tool in redis-benchmark loadgen; do
  for pipeline in 1 16; do
    for op in set get; do
      read -r c_ops c_p50 c_p99 c_cpu <<<"${result[corekv,$tool,$op,$pipeline]}"
      read -r r_ops r_p50 r_p99 r_cpu <<<"${result[redis,$tool,$op,$pipeline]}"
      ratio=$(awk -v a="$c_ops" -v b="$r_ops" 'BEGIN{ if (b>0) printf "%.2f", a/b; else print "-" }')
      cpuop=$(awk -v a="$c_ops" -v b="$r_ops" -v c="$c_cpu" -v d="$r_cpu" \
        'BEGIN{ if (a>0 && d>0) printf "%.2f", (c/a)/(d/b); else print "-" }')
      printf '%-15s %-6s %-3s | %10s %7s %7s %5s | %10s %7s %7s %5s | %6s %6s\n' "$tool" "50xP$pipeline" "$op" \
        "$c_ops" "$c_p50" "$c_p99" "$c_cpu" "$r_ops" "$r_p50" "$r_p99" "$r_cpu" "$ratio" "$cpuop"
    done
  done
done
echo
echo "both servers on CPU 0, clients on CPU 1, memory only; $(date -u +%F), $(nproc) CPUs"
