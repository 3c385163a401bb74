"""The soak of bench/soak.py at a scale the suite affords: a real server process (with its relay and
a warm worker) runs 30 stream cycles, then two streams race restart-worker against DELETE, one of
their workers SIGKILLed mid-stream. Afterwards its threads, fds, child processes and /dev/shm
entries are back to their baseline and its RSS is within the budget."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(900)  # a real server and ~40 stream cycles: minutes on a loaded machine
def test_a_server_that_ran_many_streams_holds_what_it_held_after_warm_up(no_leaks):
    run = subprocess.run(
        [sys.executable, "bench/soak.py", "--cycles", "30", "--streams", "2", "--rounds", "2",
         "--frames", "6", "--warmup", "2", "--idle", "90", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert run.stdout.strip(), run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    baseline, idle = report["baseline"], report["after_idle"]
    assert report["errors"] == []
    for key in ("threads", "fds", "children", "shm"):
        assert idle[key] <= baseline[key], f"{key}: {baseline[key]} -> {idle[key]} ({report})"
    assert report["rss_growth_mb"] <= 30.0, report
    assert run.returncode == 0, run.stderr[-3000:]
