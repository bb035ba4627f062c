#!/usr/bin/env bash
# Set up (idempotent) and run the test suite. Extra arguments go to pytest.
#   TEST_WORKERS=N   test processes (default: one per CPU core; 0 runs them in this process).
#   TEST_FRESH_PROCESSES=1   every fairseq command line a test runs starts a fresh interpreter
#                    (default: most run in forks of tests/command_server.py, which imported fairseq once).
# The tests of one file stay in one process, so a file's shared fixtures are built once.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
cd "$root"
exec "$root/.venv/bin/python" -m pytest -p no:cacheprovider -n "${TEST_WORKERS:-auto}" --dist loadfile "$@"
