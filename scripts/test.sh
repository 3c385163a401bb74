#!/usr/bin/env bash
# Sets up (with test tools) and runs the whole test suite. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
# The suite starts hundreds of Python processes (servers, workers, commands): let them share
# compiled modules, kept in .pycache/ (the ComfyUI checkout beside may be read-only), even where
# the environment asks Python not to write them (PYTHONDONTWRITEBYTECODE, as some images set).
export PYTHONPYCACHEPREFIX="${PYTHONPYCACHEPREFIX:-$PWD/.pycache}"
unset PYTHONDONTWRITEBYTECODE
# What nearly every test process imports, compiled once while ruff runs: in a fresh checkout the
# pytest-xdist workers and their first servers and workers would each compile it, side by side.
.venv/bin/python -c "import pytest, xdist, pytest_asyncio, torch, numpy, av, PIL.Image, aiohttp, aiortc, \
playwright.async_api, server.app, server.cli, workers.child, comfystream.nodes" &
warm=$!
.venv/bin/python -m ruff check .
wait "$warm" || true  # a module that fails to import fails the tests that need it, with its error
# pytest-xdist: one worker more than cores (8 at most), since the tests spend part of their time
# waiting on servers, workers and browsers; a test file (or a unit tests/conftest.py names) runs on
# one worker. PYTEST_WORKERS=0 runs everything in this process.
workers=${PYTEST_WORKERS:-$(( $(nproc) < 8 ? $(nproc) + 1 : 8 ))}
# --durations: the slowest tests, printed under the results, say where a slow run went.
exec .venv/bin/python -m pytest -q -p no:cacheprovider -n "$workers" --dist loadfile --durations=12 "$@"
