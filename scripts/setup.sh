#!/usr/bin/env bash
# Sets up .venv with everything comfystream needs. `--dev` adds the test tools and
# headless Chromium (Debian's package) for the browser tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
dev=0
[ "${1:-}" = "--dev" ] && dev=1

[ -x .venv/bin/python ] || "$PY" -m venv .venv
# --no-compile: Python compiles a module when it is first imported; pip would compile every file of
# every package first (torch alone: 29 s of a fresh setup's install, 9 s without).
pip_install=(.venv/bin/python -m pip install -q --no-compile)
"${pip_install[@]}" --upgrade pip
# torch first, pinned: any other torch requirement pulls several GB of CUDA packages here.
"${pip_install[@]}" "torch==2.13.0"
if [ $dev = 1 ]; then
  extras=dev
  # With a ComfyUI checkout to test against (tests/comfyui), what it needs to import.
  [ -n "${COMFYUI_PATH:-}" ] && extras=dev,comfyui-tests
  "${pip_install[@]}" -c scripts/constraints.txt -e ".[$extras]"
  # The tests run the headless shell (about two thirds of the full browser's CPU), or the full
  # browser where only that one is there (tests/browser.py).
  if { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromium-headless-shell ]; } && [ "$(id -u)" = 0 ] \
    && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-headless-shell) \
      >/dev/null 2>&1 || echo "setup: could not install chromium and chromium-headless-shell; the browser tests use whichever is there, or are skipped" >&2
  fi
else
  "${pip_install[@]}" -c scripts/constraints.txt -e .
fi
