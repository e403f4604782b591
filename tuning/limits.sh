#!/usr/bin/env bash
# limits.sh: check the memlock and nofile limits a corekv node started from here would get.
#
#   tuning/limits.sh [--cores N] [--io-memory-mib M]   check this shell (and a running node)
#   tuning/limits.sh --apply [--user NAME]             (root) write limits.d, raise this shell
#   tuning/limits.sh --help
#
# corekv.service sets its own limits (LimitMEMLOCK=infinity, LimitNOFILE=1048576). This script
# is for nodes run by hand, and for checking that limits took effect.
# glommio refuses to start below 512 KiB of RLIMIT_MEMLOCK. Each executor registers its
# io_memory (at most 10 MiB, glommio's default) with 3 io_uring rings, and every registration
# is charged to the per-user locked-memory counter. Full need: cores x io_memory x 3.
# At startup the node raises its soft memlock limit to the hard one (to unlimited as root with
# CAP_SYS_RESOURCE), so the hard limit is what counts. It does not raise nofile.
# Exit status: 0 when every limit is enough, 1 when one falls short, 2 on a usage error.
set -euo pipefail

LIMITS_CONF=${COREKV_LIMITS_CONF:-/etc/security/limits.d/90-corekv.conf}
GLOMMIO_MIN_KIB=512
IO_MEMORY_MIN_KIB=64
NOFILE_WANT=1048576
cores=$(nproc)
io_mib=10
user=corekv
mode=check

usage() { sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; }
die() {
  echo "limits.sh: $*" >&2
  exit 2
}

while (($#)); do
  case $1 in
    --apply) mode=apply ;;
    --cores) cores=${2:?--cores needs a number} && shift ;;
    --io-memory-mib) io_mib=${2:?--io-memory-mib needs a number} && shift ;;
    --user) user=${2:?--user needs a name} && shift ;;
    -h | --help) usage && exit 0 ;;
    *) usage >&2 && exit 2 ;;
  esac
  shift
done
[[ $cores =~ ^[1-9][0-9]*$ && $io_mib =~ ^[1-9][0-9]*$ ]] ||
  die "--cores and --io-memory-mib take positive integers"

# at_least LIMIT WANT: exit 0 if LIMIT ("unlimited" or a number) >= WANT.
at_least() { [[ $1 == unlimited ]] || (($1 >= $2)); }

# Exit 0 if this process is root and holds CAP_SYS_RESOURCE (bit 24), which lifts hard limits.
can_lift_limits() {
  local eff
  ((EUID == 0)) || return 1
  eff=$(awk '/^CapEff:/ { print $2 }' /proc/self/status)
  (((16#$eff >> 24) & 1))
}

check() {
  local bad=0 need_kib=$((cores * io_mib * 1024 * 3))
  local l_soft l_hard n_soft n_hard eff
  l_soft=$(ulimit -Sl) l_hard=$(ulimit -Hl) n_soft=$(ulimit -Sn) n_hard=$(ulimit -Hn)
  eff=$l_hard
  if can_lift_limits; then eff=unlimited; fi

  echo "Limits of the calling shell (pid $PPID), inherited by what it starts:"
  echo "  memlock (ulimit -l, KiB): soft $l_soft, hard $l_hard; the node can reach: $eff"
  if at_least "$eff" "$GLOMMIO_MIN_KIB"; then
    echo "    ok      >= $GLOMMIO_MIN_KIB KiB, glommio's minimum"
  else
    echo "    SHORT   < $GLOMMIO_MIN_KIB KiB: the node refuses to start (MemlockTooLow)"
    bad=1
  fi
  if at_least "$eff" "$need_kib"; then
    echo "    ok      >= $need_kib KiB = $cores cores x $io_mib MiB io_memory x 3 rings"
  else
    local per_core_kib=$((eff / (3 * cores)))
    echo "    SHORT   < $need_kib KiB = $cores cores x $io_mib MiB io_memory x 3 rings"
    if ((per_core_kib < IO_MEMORY_MIN_KIB)); then
      echo "            io_memory would be $per_core_kib KiB per core, below the"
      echo "            $IO_MEMORY_MIN_KIB KiB floor: registration fails, I/O is unregistered"
    else
      echo "            io_memory shrinks to $per_core_kib KiB per core"
    fi
    bad=1
  fi
  echo "  nofile  (ulimit -n):      soft $n_soft, hard $n_hard"
  if at_least "$n_soft" "$NOFILE_WANT"; then
    echo "    ok      >= $NOFILE_WANT"
  else
    echo "    SHORT   < $NOFILE_WANT: one fd per connection; accept() gets EMFILE at the limit"
    bad=1
  fi

  # A running node: what it really got (systemd's limits, not this shell's).
  local pid
  for pid in $(pgrep -x corekv || true); do
    echo "Running corekv pid $pid (/proc/$pid/limits):"
    grep -E '^Max (locked memory|open files)' "/proc/$pid/limits" | sed 's/^/  /'
  done
  if command -v systemctl >/dev/null && systemctl cat corekv.service >/dev/null 2>&1; then
    echo "corekv.service: $(systemctl show corekv.service -p LimitMEMLOCK -p LimitNOFILE |
      tr '\n' ' ')"
  fi
  return "$bad"
}

apply() {
  ((EUID == 0)) || die "--apply must run as root"
  local tmp bad=0
  tmp=$(mktemp)
  trap 'rm -f "$tmp"' EXIT
  cat >"$tmp" <<EOF
# Written by corekv tuning/limits.sh --apply. Applies to new PAM login sessions of $user,
# not to systemd services (corekv.service sets LimitMEMLOCK/LimitNOFILE itself).
$user soft memlock unlimited
$user hard memlock unlimited
$user soft nofile $NOFILE_WANT
$user hard nofile $NOFILE_WANT
EOF
  mkdir -p "$(dirname "$LIMITS_CONF")"
  if [[ -f $LIMITS_CONF ]] && cmp -s "$tmp" "$LIMITS_CONF"; then
    echo "$LIMITS_CONF unchanged"
  else
    install -m 0644 "$tmp" "$LIMITS_CONF"
    echo "wrote $LIMITS_CONF (takes effect at $user's next login)"
  fi
  rm -f "$tmp"
  trap - EXIT

  # A script cannot change its caller's limits with ulimit. prlimit can when the
  # caller is a shell. Under sudo the parent is sudo, so only print the commands.
  local parent
  parent=$(cat "/proc/$PPID/comm" 2>/dev/null || echo "?")
  if [[ $parent =~ ^(bash|zsh|sh|dash|ksh)$ ]] && command -v prlimit >/dev/null; then
    if prlimit --pid "$PPID" --memlock=unlimited:unlimited \
      --nofile="$NOFILE_WANT:$NOFILE_WANT"; then
      echo "raised the limits of the calling shell (pid $PPID, $parent)"
    else
      echo "could not raise the shell's limits: root without CAP_SYS_RESOURCE (a container?)"
      bad=1
    fi
  else
    echo "parent is '$parent', not a shell: in your root shell run"
    echo "  ulimit -l unlimited; ulimit -n $NOFILE_WANT"
  fi
  return "$bad"
}

if [[ $mode == apply ]]; then
  apply
else
  check
fi
