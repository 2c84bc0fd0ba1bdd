#!/usr/bin/env bash
# run.sh BIN_DIR DATA_FILE MPIEXEC CLASS: runs the hostile-input cases of cases.tsv in CLASS (all
# classes when CLASS is "all"). Each case line (tab-separated): class, timeout in seconds, the
# exit code expected (a number, or !0 for any failure), an extended regular expression the
# output (stdout and stderr of every rank) must match, and the command (bash; ${BIN}, ${DATA},
# ${TMP}, ${MPI} = mpirun at 2 ranks, ${MPI4} = at 4 ranks). A case that runs past its timeout
# hung: it fails. Prints one line per case and a count per class; exits 1 if any case failed.
set -u
here="$(cd "$(dirname "$0")" && pwd)"
export BIN="$1" DATA="$2"
mpiexec="$3" only="${4:-all}"
export MPI="$mpiexec -np 2 --oversubscribe" MPI4="$mpiexec -np 4 --oversubscribe"
export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
TMP="$(mktemp -d "${TMPDIR:-/tmp}/weft-hostile-XXXXXX")"
export TMP
trap 'rm -rf "$TMP"' EXIT
# Fixtures the cases name: a FIFO, a checkpoint whose manifest is /dev/zero, a cluster file that
# is /dev/zero.
mkfifo "$TMP/fifo"
mkdir -p "$TMP/zero_ckpt" && ln -s /dev/zero "$TMP/zero_ckpt/manifest.json"
ln -s /dev/zero "$TMP/zero.json"

declare -A passed failed
status=0
while IFS=$'\t' read -r class timeout_s expect pattern command; do
  [[ -z "$class" || "$class" == \#* ]] && continue
  [[ "$only" != all && "$class" != "$only" ]] && continue
  start=$(date +%s.%N)
  out="$(timeout --kill-after=5 "$timeout_s" bash -c "$command" 2>&1 </dev/null)"
  rc=$?
  took=$(printf '%.1f' "$(echo "$(date +%s.%N) - $start" | bc)")
  why=""
  if [[ $rc -eq 124 || $rc -eq 137 ]]; then
    why="hung: no exit within ${timeout_s} s"
  elif [[ "$expect" == '!0' && $rc -eq 0 ]]; then
    why="expected a failure, got exit 0"
  elif [[ "$expect" != '!0' && $rc -ne $expect ]]; then
    why="expected exit $expect, got $rc"
  elif ! grep -Eq -- "$pattern" <<<"$out"; then
    why="output does not match /$pattern/"
  fi
  if [[ -z "$why" ]]; then
    passed[$class]=$(( ${passed[$class]:-0} + 1 ))
    printf 'ok    %-8s exit %-3s %5s s  %s\n' "$class" "$rc" "$took" "$command"
  else
    failed[$class]=$(( ${failed[$class]:-0} + 1 ))
    status=1
    printf 'FAIL  %-8s exit %-3s %5s s  %s\n      %s\n' "$class" "$rc" "$took" "$command" "$why"
    sed 's/^/      | /' <<<"$out" | tail -n 15
  fi
done < "$here/cases.tsv"
for class in $(printf '%s\n' "${!passed[@]}" "${!failed[@]}" | sort -u); do
  printf 'class %-8s %3d passed, %d failed\n' "$class" "${passed[$class]:-0}" "${failed[$class]:-0}"
done
exit $status
