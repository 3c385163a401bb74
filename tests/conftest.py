"""Shared fixtures: every test must leave no process, shared-memory segment or temp file behind."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import AsyncIterator
from multiprocessing import resource_tracker
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.browser import BASE_ARGS, CHROMIUM, MISSING
from tests.processes import is_template, live_children, playwright_drivers, session_tools

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


# What the product puts in /dev/shm is named after the process that made it: a frame ring
# (workers/ring.py) after its maker, a shared-weights run (workers/shared_weights.py) after its
# server; the tests' own weight roots after the test process.
PID_PREFIXES = ("comfystream-ring-", "comfystream-weights-", "cs-test-weights-")


def _maker(name: str) -> int | None:
    for prefix in PID_PREFIXES:
        if name.startswith(prefix):
            pid = name[len(prefix) :].split("-", 1)[0]
            return int(pid) if pid.isdigit() else None
    return None


def _foreign(name: str, ours: set[int]) -> bool:
    """Made by a live process that is not this test process or one of its descendants: another
    run on the machine, or another pytest-xdist worker of this run."""
    pid = _maker(name)
    if pid is None or pid in ours:
        return False
    return os.path.exists(f"/proc/{pid}")  # a dead maker's segment is a leak, whoever made it


def _shm_entries() -> set[str]:
    try:
        # (comfystream-tests: the SD 1.5 tests' checkpoint cache, when .ci/run keeps it in memory)
        names = [n for n in os.listdir("/dev/shm") if not n.startswith(("sem.", "lttng", "comfystream-tests"))]
    except FileNotFoundError:
        return set()
    ours = _child_pids() | {os.getpid()}
    return {n for n in names if not _foreign(n, ours)}


def _child_pids() -> set[int]:
    """Live (non-zombie) descendants of this test process, but the worker template: like
    multiprocessing's resource tracker, it lives as long as the process that started it (the
    workers it forked are counted); nor the session's tools (`session_tools`), nor what they
    started."""
    me = os.getpid()
    children = live_children()
    out: set[int] = set()
    stack = [me]
    while stack:
        for child in children.get(stack.pop(), []):
            if child in session_tools:
                continue
            out.add(child)
            stack.append(child)
    return {pid for pid in out if not is_template(pid)}


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


@pytest.fixture
def no_leaks():
    """Fails the test if it leaves child processes or /dev/shm segments behind."""
    # multiprocessing's resource tracker lives as long as this process once anything is spawned
    # or shared; started before the snapshot, it is never counted as the first test's leak.
    resource_tracker.ensure_running()
    shm_before = _shm_entries()
    pids_before = _child_pids()
    yield
    ok = wait_until(lambda: not (_child_pids() - pids_before) and not (_shm_entries() - shm_before), 15.0)
    if not ok:
        left_pids = _child_pids() - pids_before
        left_shm = _shm_entries() - shm_before
        pytest.fail(f"left behind: processes {sorted(left_pids)}, /dev/shm {sorted(left_shm)}")


# -- headless Chromium (tests/dashboard, tests/editor: their `browser` fixture) -------------------
# Their async tests (and so their servers' fixtures) run on the session's event loop, where the
# shared Chromium lives: Playwright's objects belong to the loop they were made on.
SESSION_LOOP_FOLDERS = tuple(Path(__file__).resolve().parent / name for name in ("dashboard", "editor"))

@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def shared_chromium() -> AsyncIterator[Any]:
    """One Chromium for every browser test of this pytest process (an xdist worker), closed as the
    session ends: a launch (its Playwright driver and the browser) costs about 0.7 CPU-s. Defined
    here so that tests/dashboard and tests/editor share it; their tests run on the session's event
    loop, as Playwright's objects belong to the loop they were made on. Its Playwright driver, and
    so Chromium with the helper processes it starts when it first needs them and keeps, is one of
    the `session_tools` that no test's `no_leaks` counts; the `browser` fixture closes what a test
    opened in it."""
    if not CHROMIUM.exists():
        pytest.skip(MISSING)
    from playwright.async_api import async_playwright

    before = playwright_drivers()
    async with async_playwright() as pw:
        driver = playwright_drivers() - before
        session_tools.update(driver)
        try:
            chromium = await pw.chromium.launch(executable_path=str(CHROMIUM), args=[*BASE_ARGS, "--disable-gpu"])
            try:
                yield chromium
            finally:
                await chromium.close()
        finally:
            session_tools.difference_update(driver)


@pytest.fixture
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


# -- pytest-xdist (scripts/test.sh: `-n <cores + 1> --dist loadfile`) ----------------------------
# A test file is one unit of work: its module-scoped fixtures (a probe's outputs, a server) are
# made once, on the worker that runs it. Some units span files: tests/jobs shares one server per
# package, and the SD 1.5 files are one unit, so that one of them runs at a time: each loads a 2 GB
# checkpoint and reads GBs of weights per frame, and two at once slow each other more than anything
# else here (two SD units: 163-167 s and 298-313 CPU-s a run; one: 155-157 s and 286-289 CPU-s).
# (xdist's `xdist_group` mark cannot say this: with pytest >= 9.2 `--dist loadgroup` ignores it,
# pytest-xdist issue 1386.)
XDIST_UNITS = {
    "tests/jobs/": "tests/jobs/",
    "tests/comfyui/test_real_model.py": "sd15",
    "tests/comfyui/test_shared_weights_sd15.py": "sd15",
    "tests/comfyui/test_real_model_commands.py": "sd15",
}
# The longest units go first (wall time of a 3-worker run on 2 cores), so that the workers finish
# together; the others keep their order.
LONGEST_FIRST = [
    "sd15",
    "tests/workers/test_shared_weights_cuda.py",
    "tests/hardening/test_fuzz_openapi.py",
    "tests/dashboard/test_jobs_page.py",
    "tests/pipeline/test_hang_deadline.py",
    "tests/editor/test_editor_parallel.py",
    "tests/engine/test_cli.py",
    "tests/soak/test_soak.py",
    "tests/workers/test_shared_weights.py",
    "tests/server/test_serve_command.py",
    "tests/comfyui/test_comfyui_workspace.py",
    "tests/editor/test_editor_page.py",
    "tests/webrtc/test_peer_streams.py",
    "tests/pipeline/test_pipeline_lifecycle.py",
    "tests/jobs/",
    "tests/server/test_stream_e2e.py",
    "tests/editor/test_editor_streams.py",
]


def xdist_unit(nodeid: str) -> str:
    path = nodeid.split("::", 1)[0]
    for prefix, unit in XDIST_UNITS.items():
        if path.startswith(prefix):
            return unit
    return path


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """`--dist loadfile`, with the units above: each goes to one worker, in the order collected."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class UnitScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_unit(nodeid)

    config.option.loadscopereorder = False  # the workers' order (LONGEST_FIRST), not xdist's (most tests first)
    return UnitScheduling(config, log)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from pytest_asyncio import is_async_test

    for item in items:
        if is_async_test(item) and any(item.path.is_relative_to(folder) for folder in SESSION_LOOP_FOLDERS):
            item.add_marker(pytest.mark.asyncio(loop_scope="session"), append=False)
    if not hasattr(config, "workerinput"):  # not an xdist worker: the usual order
        return
    rank = {unit: i for i, unit in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(xdist_unit(item.nodeid), len(rank)))  # stable: files stay whole
