"""The server caps glibc's malloc arenas unless the operator chose a value."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import os, sys
from server.malloc_arenas import cap_malloc_arenas
print(cap_malloc_arenas())
"""


def _run(env_extra: dict[str, str]) -> str:
    import os

    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | env_extra
    done = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_applied_by_default_on_glibc():
    assert _run({}) == "True"


def test_operator_value_wins():
    assert _run({"MALLOC_ARENA_MAX": "4"}) == "False"
