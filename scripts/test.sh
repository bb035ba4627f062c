#!/usr/bin/env bash
# Set up (idempotent) and run the test suite. Extra arguments go to pytest.
#   TEST_WORKERS=N   test processes (default: one per CPU core; 0 runs them in this process).
#   TEST_FRESH_PROCESSES=1   every fairseq command line a test runs starts a fresh interpreter
#                    (default: most run in forks of tests/command_server.py, which imported fairseq once).
# The tests of one file stay in one process, so a file's shared fixtures are built once. The tests
# marked whole_machine (a long decode) run afterwards, alone, with every core.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
cd "$root"
run_pytest() { "$root/.venv/bin/python" -m pytest -p no:cacheprovider "$@"; }
others=0
run_pytest -n "${TEST_WORKERS:-auto}" --dist loadfile --whole-machine-tests defer "$@" || others=$?
whole=0
run_pytest -n 0 --whole-machine-tests only "$@" || whole=$?
# pytest's status 5: that run selected no test. The suite fails when either run fails, or selects nothing.
for status in "$others" "$whole"; do
  [[ "$status" == 0 || "$status" == 5 ]] || exit "$status"
done
[[ "$others" == 0 || "$whole" == 0 ]] || exit 5
