"""`comfystream serve --relay` with two streams flowing: a stream stopped by DELETE and then SIGTERM
leave no ERROR, no traceback, no HTTP 500 from the relay and no unretrieved task or unclosed
session in the server's log, and the server exits 0. (The time it takes is measured by
bench/chaos.py, not asserted here.)"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from bench.trickle_client import OutputReader, PatternPublisher, create_channel

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 90.0  # bounds against hangs on a loaded machine, not timings
BAD_LINES = re.compile(r" ERROR |Traceback|never retrieved|Unclosed|\" 500 ")


async def _wait_health(http: aiohttp.ClientSession, base: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + WAIT_S
    while True:
        assert proc.poll() is None, "server exited early"
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(f"{base}/health") as resp:
                if resp.status == 200:
                    return
        assert time.monotonic() < deadline, "server did not come up"
        await asyncio.sleep(0.1)


async def test_sigterm_with_streams_is_clean(no_leaks, free_port: int, tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{free_port}"
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--port", str(free_port), "--relay",
             "--job-workers", "0", "--log-level", "INFO"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    publishers: list[PatternPublisher] = []
    tasks: list[asyncio.Task] = []
    try:
        async with aiohttp.ClientSession() as http:
            await _wait_health(http, base, proc)
            readers = []
            for name in ("one", "two"):
                await create_channel(f"{base}/trickle/{name}")
                body = {
                    "subscribe_url": f"{base}/trickle/{name}",
                    "publish_url": f"{base}/trickle/{name}-out",
                    "gateway_request_id": name,
                    "params": {"width": 64, "height": 64},
                }
                async with http.post(f"{base}/stream/start", json=body) as resp:
                    assert resp.status == 200, await resp.text()
                publisher = PatternPublisher(f"{base}/trickle/{name}", 64, 64, fps=30, segment_seconds=0.25)
                reader = OutputReader(f"{base}/trickle/{name}-out")
                publishers.append(publisher)
                readers.append(reader)
                tasks.append(asyncio.create_task(publisher.send_range(0, 1_000_000)))
                tasks.append(asyncio.create_task(reader.run()))
            deadline = time.monotonic() + WAIT_S
            while not all(len(r.frames) >= 5 for r in readers):
                assert time.monotonic() < deadline, [len(r.frames) for r in readers]
                assert not any(t.done() and t.exception() for t in tasks), [t for t in tasks if t.done()]
                await asyncio.sleep(0.1)
            # A normal stop while its input still flows.
            async with http.delete(f"{base}/stream/one") as resp:
                assert resp.status == 200, await resp.text()
            seen = len(readers[1].frames)
            while len(readers[1].frames) < seen + 5:  # the other one goes on
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, WAIT_S) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for publisher in publishers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(publisher.close(), 5)
    text = log_path.read_text()
    bad = [line for line in text.splitlines() if BAD_LINES.search(line)]
    assert not bad, "\n".join(bad[:20])
    assert "stream one: stopped" in text and "stream two: stopped (server shutting down)" in text, text[
        -3000:
    ]
