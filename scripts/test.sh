#!/usr/bin/env bash
# Sets up (with test tools) and runs the whole test suite. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
.venv/bin/python -m ruff check .
# pytest-xdist: one worker more than cores (8 at most), since the tests spend part of their time
# waiting on servers, workers and browsers; a test file (or a unit tests/conftest.py names) runs on
# one worker. PYTEST_WORKERS=0 runs everything in this process.
workers=${PYTEST_WORKERS:-$(( $(nproc) < 8 ? $(nproc) + 1 : 8 ))}
exec .venv/bin/python -m pytest -q -p no:cacheprovider -n "$workers" --dist loadfile "$@"
