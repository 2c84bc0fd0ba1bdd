#!/usr/bin/env bash
# Installs this build into a scratch prefix, builds examples/consumer against it with
# find_package(weft CONFIG REQUIRED), and runs it on 2 ranks.
set -euo pipefail
build_dir="$1" source_dir="$2" mpiexec="$3"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
cmake --install "$build_dir" --prefix "$scratch/prefix" >/dev/null
cmake -S "$source_dir/examples/consumer" -B "$scratch/build" -DCMAKE_PREFIX_PATH="$scratch/prefix" \
  -DCMAKE_BUILD_TYPE=Release
cmake --build "$scratch/build"
OMP_NUM_THREADS=1 "$mpiexec" -np 2 --oversubscribe "$scratch/build/consumer"
