#!/usr/bin/env bash
# The whole test suite: the README's second command, and what CI runs (.ci/run calls this).
# It installs or sets what the tests need by itself, so it works on a fresh Debian machine
# with the Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."

# glommio needs locked memory (>= 512 KiB per process; more with many cores). Raise the soft
# limit as far as the hard limit allows; nodes started by the tests inherit it.
ulimit -l "$(ulimit -H -l)" 2>/dev/null || true
if [ "$(ulimit -l)" != unlimited ] && [ "$(ulimit -l)" -lt 512 ]; then
  echo "tests/run.sh: RLIMIT_MEMLOCK is $(ulimit -l) KiB; glommio needs 512. See tuning/README.md" >&2
  exit 2
fi

step() { printf '\n== %s\n' "$*"; }

# The Redis-protocol tests drive corekv with redis-cli and redis-py, and compare it with a real
# redis-server; the HTTP tests parse /metrics with prometheus-client: install what is missing
# (Debian packages, PyPI).
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  step "installing redis-server and redis-tools (Debian)"
  # The package would start a server on 6379; the tests start their own on free ports, and
  # stop nothing they did not start. policy-rc.d (Debian's switch for this) keeps the
  # package from starting its service; it is removed again unless it was there before.
  policy=/usr/sbin/policy-rc.d
  made_policy=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
  fi
  installed=0
  apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools || installed=$?
  if [ -n "$made_policy" ]; then rm -f "$policy"; fi
  if [ "$installed" != 0 ]; then
    echo "tests/run.sh: installing redis-server and redis-tools failed" >&2
    exit 2
  fi
fi
# The TLS tests make their certificates with tuning/make-certs.sh, which needs openssl.
if ! command -v openssl >/dev/null; then
  step "installing openssl (Debian)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl || {
    echo "tests/run.sh: installing openssl failed" >&2
    exit 2
  }
fi
if ! python3 -c 'import redis, prometheus_client' 2>/dev/null; then
  step "installing redis-py and prometheus-client (PyPI)"
  python3 -m pip install --quiet redis prometheus-client
fi

step "format"
cargo fmt --all -- --check

step "clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "benchmarks compile"
cargo bench --workspace --no-run --quiet

step "tests (unit, integration, doc)"
mkdir -p target
cargo test --workspace --quiet 2>&1 | tee target/test-output.txt
# One closing line for humans and CI: cargo's per-binary results, summed.
awk '/^test result:/ { p += $4; f += $6 } END { printf "\n%d passed, %d failed\n", p, f }' \
  target/test-output.txt
