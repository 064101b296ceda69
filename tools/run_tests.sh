#!/usr/bin/env bash
# Run the test suite with the project's interpreter (after `make setup`).
# pytest's exit code 5 ("no tests collected") is an error here: a suite that
# silently runs nothing must not pass CI.
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
start=$(date +%s)
.venv/bin/python -m pytest tests -q -ra --durations=15 "$@"
rc=$?
echo "[test] suite finished in $(( $(date +%s) - start ))s (exit $rc)"
if [ "$rc" -eq 5 ]; then
  echo "[test] pytest collected no tests: failing on purpose" >&2
fi
exit $rc
