#!/usr/bin/env bash
# sysctl.sh: check or apply the kernel settings a busy corekv node wants.
#
#   tuning/sysctl.sh --check   show current vs recommended; exit 1 if any falls short
#   tuning/sysctl.sh --print   print the file --apply would write (no root needed)
#   tuning/sysctl.sh --apply   (root) write /etc/sysctl.d/90-corekv.conf, sysctl --system
#   tuning/sysctl.sh --help
#
# How a setting is judged (the MODE column in SETTINGS):
#   min    current >= recommended, field by field. --apply never lowers a higher value.
#   max    current <= recommended. --apply never raises a lower value.
#   eq     current == recommended.
#   range  the current "low high" range contains the recommended one.
# So --apply writes the better of (current, recommended). It never makes a
# setting worse, and running it twice produces the same file. A key missing
# from this kernel (such as kernel.io_uring_disabled before 6.6) shows as n/a:
# it is not counted and not written.
set -euo pipefail

CONF=${COREKV_SYSCTL_CONF:-/etc/sysctl.d/90-corekv.conf}

# setting KEY MODE RECOMMENDED WHY: one line of the table below.
SETTINGS=()
setting() { SETTINGS+=("$1|$2|$3|$4"); }

setting net.core.somaxconn min 65535 \
  "caps each listen() accept queue; reconnect storms after a failover overflow a small one"
setting net.ipv4.tcp_max_syn_backlog min 65535 \
  "half-open (SYN_RECV) queue per listener, deep enough for connection storms"
setting net.core.netdev_max_backlog min 16384 \
  "per-CPU queue of packets waiting for the stack; a small one drops 10+ GbE bursts"
setting net.ipv4.ip_local_port_range range "10240 65535" \
  "more ephemeral ports for outgoing connections; keep corekv's ports below 10240"
setting net.ipv4.tcp_tw_reuse eq 1 \
  "outgoing connections may reuse TIME_WAIT ports (safe with timestamps); 2 = loopback only"
setting net.core.rmem_max min 16777216 \
  "largest SO_RCVBUF a process may set (peer links, snapshot streams)"
setting net.core.wmem_max min 16777216 \
  "largest SO_SNDBUF a process may set"
setting net.ipv4.tcp_rmem min "4096 131072 16777216" \
  "min/default/max autotuned receive buffer; 16 MiB fills 10 Gb/s at ~13 ms RTT"
setting net.ipv4.tcp_wmem min "4096 16384 16777216" \
  "same for send; the small default keeps a million idle connections cheap"
setting net.ipv4.tcp_fin_timeout max 15 \
  "free orphaned FIN_WAIT_2 sockets after 15 s, not 60, with many short-lived clients"
setting fs.file-max min 2097152 \
  "system-wide open-file ceiling; must cover the node's 1048576 fds plus everything else"
setting fs.nr_open min 1048576 \
  "per-process ceiling on RLIMIT_NOFILE; the unit's LimitNOFILE=1048576 fails above it"
setting vm.swappiness max 1 \
  "keep the index and values in RAM; a swapped-out page turns a µs lookup into a ms read"
setting vm.overcommit_memory eq 1 \
  "never refuse big sparse reservations (table growth); a refusal aborts a Rust process anyway"
setting kernel.io_uring_disabled eq 0 \
  "glommio needs io_uring; 1 = only kernel.io_uring_group, 2 = off (kernel >= 6.6)"
setting net.ipv4.tcp_slow_start_after_idle eq 0 \
  "idle keep-alive connections keep their congestion window; no slow start after a pause"

usage() {
  sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
}

die() {
  echo "sysctl.sh: $*" >&2
  exit 2
}

# Prints the current value with whitespace normalised to single spaces;
# returns 1 when the key does not exist on this kernel.
read_key() {
  local path="/proc/sys/${1//.//}"
  [[ -r $path ]] || return 1
  local value
  value=$(<"$path")
  # shellcheck disable=SC2086 # word splitting normalises tabs to single spaces
  echo $value
}

# is_ok MODE CURRENT RECOMMENDED: exit status 0 when current satisfies the recommendation.
is_ok() {
  local mode=$1 cur rec i
  read -ra cur <<<"$2"
  read -ra rec <<<"$3"
  case $mode in
    eq) [[ "$2" == "$3" ]] ;;
    min | max)
      ((${#cur[@]} == ${#rec[@]})) || return 1
      for i in "${!rec[@]}"; do
        if [[ $mode == min ]]; then
          ((cur[i] >= rec[i])) || return 1
        else
          ((cur[i] <= rec[i])) || return 1
        fi
      done
      ;;
    range) ((${#cur[@]} == 2 && cur[0] <= rec[0] && cur[1] >= rec[1])) ;;
    *) die "unknown mode $mode" ;;
  esac
}

# target MODE CURRENT RECOMMENDED: the value --apply writes (never worse than current).
target() {
  local mode=$1 cur rec i out=()
  read -ra cur <<<"$2"
  read -ra rec <<<"$3"
  if [[ $mode == eq ]] || ((${#cur[@]} != ${#rec[@]})); then
    echo "$3"
    return
  fi
  case $mode in
    min) for i in "${!rec[@]}"; do out+=($((cur[i] > rec[i] ? cur[i] : rec[i]))); done ;;
    max) for i in "${!rec[@]}"; do out+=($((cur[i] < rec[i] ? cur[i] : rec[i]))); done ;;
    range) out=($((cur[0] < rec[0] ? cur[0] : rec[0])) $((cur[1] > rec[1] ? cur[1] : rec[1]))) ;;
  esac
  echo "${out[*]}"
}

check() {
  local entry key mode rec why cur want bad=0
  printf '%-36s %-24s %-26s %s\n' KEY CURRENT RECOMMENDED STATUS
  for entry in "${SETTINGS[@]}"; do
    IFS='|' read -r key mode rec why <<<"$entry"
    case $mode in
      min) want=">= $rec" ;;
      max) want="<= $rec" ;;
      range) want="within $rec" ;;
      *) want=$rec ;;
    esac
    if ! cur=$(read_key "$key"); then
      printf '%-36s %-24s %-26s %s\n' "$key" "(absent)" "$want" "n/a"
    elif is_ok "$mode" "$cur" "$rec"; then
      printf '%-36s %-24s %-26s %s\n' "$key" "$cur" "$want" "ok"
    else
      printf '%-36s %-24s %-26s %s\n' "$key" "$cur" "$want" "DIFFERS"
      bad=1
    fi
    printf '    why: %s\n' "$why"
  done
  cat <<EOF

Notes (not checked):
  net.core.busy_poll=$(read_key net.core.busy_poll || echo n/a)\
 net.core.busy_read=$(read_key net.core.busy_read || echo n/a): leave at 0.
    Busy polling makes the kernel spin on NIC queues in recv/poll. glommio already spins in
    user space when spin_before_park_us is set, and corekv sets no SO_BUSY_POLL. Try it only
    with one NIC queue per dedicated core, and measure.
  net.ipv4.ip_local_reserved_ports="$(read_key net.ipv4.ip_local_reserved_ports || echo n/a)":
    if corekv's listen/shard ports lie inside ip_local_port_range, reserve them here,
    e.g. "7379,7400-7463".
EOF
  return "$bad"
}

render_conf() {
  local entry key mode rec why cur
  echo "# Written by corekv tuning/sysctl.sh --apply. Re-run it rather than edit by hand."
  echo "# Each value is the better of the recommendation and what the system already had."
  for entry in "${SETTINGS[@]}"; do
    IFS='|' read -r key mode rec why <<<"$entry"
    cur=$(read_key "$key") || continue
    echo
    echo "# $why"
    echo "$key = $(target "$mode" "$cur" "$rec")"
  done
}

apply() {
  ((EUID == 0)) || die "--apply must run as root (try: sudo $0 --apply)"
  command -v sysctl >/dev/null || die "sysctl(8) not found (package procps)"
  local dir tmp
  dir=$(dirname "$CONF")
  mkdir -p "$dir"
  tmp=$(mktemp "$dir/.90-corekv.conf.XXXXXX")
  trap 'rm -f "$tmp"' EXIT
  render_conf >"$tmp"
  chmod 0644 "$tmp"
  if [[ -f $CONF ]] && cmp -s "$tmp" "$CONF"; then
    echo "$CONF unchanged"
    rm -f "$tmp"
  else
    mv -f "$tmp" "$CONF"
    echo "wrote $CONF"
  fi
  trap - EXIT
  # Loads every sysctl.d file in order. A later file (e.g. 99-*.conf) can still
  # override ours, and the check below shows it if so.
  sysctl --system >/dev/null
  echo
  check
}

case ${1:-} in
  --check) check ;;
  --print) render_conf ;;
  --apply) apply ;;
  -h | --help) usage ;;
  *)
    usage >&2
    exit 2
    ;;
esac
