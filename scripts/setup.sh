#!/usr/bin/env bash
# Sets up .venv with everything comfystream needs. `--dev` adds the test tools and
# headless Chromium (Debian's package) for the browser tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
dev=0
[ "${1:-}" = "--dev" ] && dev=1

[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first, pinned: any other torch requirement pulls several GB of CUDA packages here.
.venv/bin/python -m pip install -q "torch==2.13.0"
if [ $dev = 1 ]; then
  extras=dev
  # With a ComfyUI checkout to test against (tests/comfyui), what it needs to import.
  [ -n "${COMFYUI_PATH:-}" ] && extras=dev,comfyui-tests
  .venv/bin/python -m pip install -q -c scripts/constraints.txt -e ".[$extras]"
  # The tests run the headless shell (about two thirds of the full browser's CPU), or the full
  # browser where only that one is there (tests/browser.py).
  if { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromium-headless-shell ]; } && [ "$(id -u)" = 0 ] \
    && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-headless-shell) \
      >/dev/null 2>&1 || echo "setup: could not install chromium; browser tests will be skipped" >&2
  fi
else
  .venv/bin/python -m pip install -q -c scripts/constraints.txt -e .
fi
