#!/usr/bin/env bash
# ctest entry: the Python environment (made once by scripts/python-env; exit 77, a skip, when PyPI
# cannot be reached), then tokenizer_reference.py.   tokenizer_reference.sh BUILD CHECKER WORKDIR
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
rc=0
python="$("$here/../../scripts/python-env" "$1")" || rc=$?
if ((rc == 77)); then
  echo "SKIPPED: PyPI cannot be reached to install the pinned tokenizers (tests/interop/requirements.txt)"
  exit 77
fi
((rc == 0)) || exit "$rc"
exec "$python" "$here/tokenizer_reference.py" "$2" "$3"
