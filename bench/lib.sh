# Helpers shared by the bench/*.sh scripts (sourced, not run).

# A scratch directory on disk (not tmpfs: the node's log uses direct I/O) and the processes a
# script starts (append their pids to `pids`): on exit every one is stopped and waited for,
# then the directory is removed.
work=$(mktemp -d -p "${TMPDIR:-/var/tmp}")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# CPU ticks (user + system) a process has used so far.
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
# CPU use in percent of one core between two tick readings over s0..s1 (date +%s.%N).
cpu_pct() { awk -v a="$1" -v b="$2" -v s="$3" -v e="$4" -v hz="$hz" 'BEGIN{printf "%.0f", (b-a)/hz/(e-s)*100}'; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo $((20000 + RANDOM % 20000)); }
wait_ready() { for _ in $(seq 12000); do grep -q ready "$1" 2>/dev/null && return 0; sleep 0.05; done; return 1; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }
# 50-byte redis-benchmark keys (16 + 34) and a 500-byte value.
bench_key="key:__rand_int__$(printf 'k%.0s' $(seq 34))"
bench_value=$(head -c 500 /dev/zero | tr '\0' 'v')
# redis-benchmark output -> "ops_per_sec p50_us p99_us"
redis_benchmark_row() {
  tr '\r' '\n' | awk '/throughput summary/ {t=$3} /latency summary/ {getline; getline; p50=$3*1000; p99=$5*1000} END{printf "%.0f %.0f %.0f", t, p50, p99}'
}
# corekv-loadgen table -> "ops_per_sec p50_us p99_us" for operation $1
loadgen_row() { awk -v op="$1" '$1==op {printf "%.0f %s %s", $3, $4, $6}'; }
# A base port for `corekv dev-cluster --base-port` with nodes 1..$1 (node i on base+10i ..
# base+10i+3) all free, below the ephemeral port range: the load generator's closed
# connections (TIME_WAIT) sit in that range and would make a node's bind fail.
free_base() {
  python3 - "$1" <<'PY'
import random, socket, sys
nodes = int(sys.argv[1])
for _ in range(200):
    base = random.randrange(20000, 32000, 100)
    try:
        for node in range(1, nodes + 1):
            for off in range(4):
                s = socket.socket(); s.bind(("127.0.0.1", base + 10 * node + off)); s.close()
        print(base); break
    except OSError:
        continue
PY
}
