# Shared by scripts/demo and scripts/test: install what is missing (Debian packages), then build.
# Sourced, not run.

WEFT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WEFT_BUILD="${WEFT_BUILD:-$WEFT_ROOT/build}"
WEFT_PACKAGES=(build-essential cmake ninja-build pkg-config libopenmpi-dev openmpi-bin libdnnl-dev
               libgtest-dev libbenchmark-dev nlohmann-json3-dev ocl-icd-opencl-dev
               libpcre2-dev libxxhash-dev python3-venv python3-torch gnupg-l10n)
# Only for scripts/levels-diagram (dot renders the build's level graph).
WEFT_DOC_PACKAGES=(graphviz)

weft_log() { printf '\033[1m[weft]\033[0m %s\n' "$*" >&2; }

# Installs the Debian packages that are not installed yet (needs root and apt-get): the given
# ones, or WEFT_PACKAGES.
weft_install_deps() {
  local missing=() wanted=("$@")
  [ ${#wanted[@]} -gt 0 ] || wanted=("${WEFT_PACKAGES[@]}")
  for pkg in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" ||
      missing+=("$pkg")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    return 0
  fi
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    weft_log "missing packages: ${missing[*]}; install them (as root: apt-get install ${missing[*]})"
    return 1
  fi
  weft_log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Configures (once) and builds Release into $WEFT_BUILD. CUDA is built when nvcc is found.
weft_build() {
  if [ -z "${CMAKE_CUDA_COMPILER:-}" ] && ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
    export PATH="/usr/local/cuda/bin:$PATH"
  fi
  if [ ! -f "$WEFT_BUILD/CMakeCache.txt" ]; then
    cmake -S "$WEFT_ROOT" -B "$WEFT_BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release "$@"
  fi
  cmake --build "$WEFT_BUILD" --parallel "$(nproc)"
}

# mpirun as root needs explicit consent; more ranks than cores need oversubscription.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1
