#!/usr/bin/env bash
# The levels are a rule the build enforces: with the include folder a level compiles against
# (build/levels/<level>), a header of the level above it does not compile, while the same header
# does with that level's own folder. Also: the core level cannot see a private backend header.
set -euo pipefail
build_dir="$1" cxx="$2"
levels=(core backend comm parallel layers pipeline train)
try() {  # try <stage> <include line>: 0 when the include compiles
  echo "$2" | "$cxx" -std=c++17 -fsyntax-only -I "$build_dir/levels/$1" -x c++ - 2>/dev/null
}
failures=0
for ((i = 0; i + 1 < ${#levels[@]}; ++i)); do
  below="${levels[i]}" level="${levels[i + 1]}"
  # A public header of `level` that `below` does not have.
  header=""
  for h in "$build_dir/levels/$level/weft/"*.hpp; do
    name="$(basename "$h")"
    if [[ ! -e "$build_dir/levels/$below/weft/$name" ]]; then header="$name" && break; fi
  done
  if [[ -z "$header" ]]; then
    echo "FAIL: level $level adds no public header over $below" && failures=$((failures + 1))
    continue
  fi
  if ! try "$level" "#include \"weft/$header\""; then
    echo "FAIL: weft/$header does not compile in its own level $level"
    failures=$((failures + 1))
  elif try "$below" "#include \"weft/$header\""; then
    echo "FAIL: level $below can include weft/$header of the level above it ($level)"
    failures=$((failures + 1))
  else
    echo "ok: weft/$header compiles in $level and not in $below"
  fi
done
if try core '#include "backend/backend_checks.hpp"'; then
  echo "FAIL: core can include the private header backend/backend_checks.hpp"
  failures=$((failures + 1))
else
  echo "ok: core cannot include backend/backend_checks.hpp"
fi
exit $((failures > 0))
