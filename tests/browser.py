"""The headless Chromium the browser tests drive (tests/dashboard, tests/editor, tests/webrtc).

Debian's chromium-headless-shell first: the same Chromium build as a headless shell (what
Playwright itself runs for headless pages), with no GPU process or desktop features to start. On
this suite's pages it takes about two thirds of the CPU of `chromium --headless`. The full browser
is the fallback where the shell is not installed (scripts/setup.sh --dev installs both)."""

from __future__ import annotations

from pathlib import Path

CANDIDATES = (Path("/usr/bin/chromium-headless-shell"), Path("/usr/bin/chromium"))
CHROMIUM = next((path for path in CANDIDATES if path.exists()), CANDIDATES[-1])
MISSING = f"needs {' or '.join(map(str, CANDIDATES))} (scripts/setup.sh --dev installs them)"

# What every test's browser runs with: no sandbox (root in a container), nothing fetched from outside.
BASE_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
