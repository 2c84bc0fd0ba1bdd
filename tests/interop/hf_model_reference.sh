#!/usr/bin/env bash
# ctest entry: the Python environment (made once by scripts/python-env; exit 77, a skip, when PyPI
# cannot be reached), then hf_model_reference.py.   hf_model_reference.sh BUILD BIN MPIEXEC WORKDIR
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
rc=0
python="$("$here/../../scripts/python-env" "$1")" || rc=$?
if ((rc == 77)); then
  echo "SKIPPED: PyPI cannot be reached to install the pinned transformers (tests/interop/requirements.txt)"
  exit 77
fi
((rc == 0)) || exit "$rc"
exec "$python" "$here/hf_model_reference.py" "$2" "$3" "$4"
