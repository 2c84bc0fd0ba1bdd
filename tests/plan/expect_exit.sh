#!/usr/bin/env bash
# expect_exit.sh CODE PATTERN COMMAND...: runs COMMAND, passes when it exits with CODE and its
# output (stdout and stderr) matches the extended regular expression PATTERN.
code="$1" pattern="$2"
shift 2
out="$("$@" 2>&1)"
rc=$?
printf '%s\n[exit %d]\n' "$out" "$rc"
if [[ "$rc" -ne "$code" ]]; then
  echo "expected exit $code, got $rc"
  exit 1
fi
if ! grep -Eq -- "$pattern" <<<"$out"; then
  echo "output does not match: $pattern"
  exit 1
fi
