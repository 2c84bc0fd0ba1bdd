# Puts the libraries and tools that `scripts/gpu-check --fetch` gathered in .gpu-deps/ to use on a
# machine without a package manager: Debian packages unpacked into a private prefix, cmake and
# ninja from their wheels where the machine has none. Sourced by gpu-check and fresh-check.

# weft_use_gpu_deps PREFIX: unpacks into PREFIX and exports the search paths; sets
# weft_gpu_deps_note; returns 1 when there is no .gpu-deps/ (the system's libraries are used).
weft_use_gpu_deps() {
  local prefix="$1" deps multiarch=x86_64-linux-gnu deb member tool wheel binary
  deps="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.gpu-deps"
  if ! compgen -G "$deps/debs/*.deb" >/dev/null; then
    weft_gpu_deps_note="no .gpu-deps (scripts/gpu-check --fetch): using the system's libraries"
    return 1
  fi
  mkdir -p "$prefix"
  for deb in "$deps"/debs/*.deb; do
    if command -v dpkg-deb >/dev/null; then
      dpkg-deb -x "$deb" "$prefix"
    else  # a .deb is an ar archive holding data.tar.{xz,zst}
      member=$(ar t "$deb" | grep '^data\.tar')
      ar p "$deb" "$member" | tar -x -C "$prefix" -f - \
        --use-compress-program="$([[ $member == *.xz ]] && echo xz || echo zstd) -d"
    fi
  done
  # Unpacking does not run the alternatives that name mpirun, mpicxx and libmpi.so.
  for tool in mpirun mpiexec mpicxx mpicc; do
    if [[ -e $prefix/usr/bin/$tool.openmpi ]]; then ln -sf "$tool.openmpi" "$prefix/usr/bin/$tool"; fi
  done
  export OPAL_PREFIX="$prefix/usr"  # a relocated Open MPI finds its own files through this
  # Open MPI wants an ssh or rsh binary even to launch on this node alone; a bare machine has none.
  if ! command -v ssh >/dev/null && ! command -v rsh >/dev/null; then
    export OMPI_MCA_plm_rsh_agent=false
  fi
  export PATH="$prefix/usr/bin:$PATH"
  export LD_LIBRARY_PATH="$prefix/usr/lib/$multiarch:$prefix/lib/$multiarch:$prefix/usr/lib/$multiarch/openmpi/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export LIBRARY_PATH="$prefix/usr/lib/$multiarch${LIBRARY_PATH:+:$LIBRARY_PATH}"
  export CMAKE_PREFIX_PATH="$prefix/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
  # cmake >= 3.25 and ninja: the machine's own, else the self-contained binaries in the wheels.
  for tool in cmake ninja; do
    if [[ $tool == cmake ]] && command -v cmake >/dev/null &&
      printf '%s\n3.25\n' "$(cmake --version | grep -o '[0-9][0-9.]*' | head -1)" | sort -V -C -r; then
      continue
    fi
    if [[ $tool == ninja ]] && command -v ninja >/dev/null; then continue; fi
    wheel=$(compgen -G "$deps/wheels/$tool-*.whl" | head -1) || continue
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' \
      "$wheel" "$prefix/wheels/$tool"
    # cmake's wheel keeps its binaries in cmake/data/bin (beside its modules), ninja's in *.data/scripts.
    binary=$(find "$prefix/wheels/$tool" -type f -name "$tool" \( -path '*/bin/*' -o -path '*/scripts/*' \) | head -1)
    [[ -n $binary ]] || continue
    chmod +x "$(dirname "$binary")"/*
    export PATH="$(dirname "$binary"):$PATH"
  done
  weft_gpu_deps_note="$(compgen -G "$deps/debs/*.deb" | wc -l) packages from .gpu-deps unpacked in $prefix; cmake $(cmake --version 2>/dev/null | grep -o '[0-9][0-9.]*' | head -1), ninja $(ninja --version 2>/dev/null)"
}
