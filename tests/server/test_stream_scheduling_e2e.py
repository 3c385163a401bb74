"""Frame scheduling end to end (real relay, server and spawned workers), asserting only what holds
however slow the machine: a burst loses nothing, no unprocessed frame follows a processed one,
every output carries its input's pts, and every skip is counted."""

from __future__ import annotations

import asyncio
import json
from fractions import Fraction
from pathlib import Path

import pytest
from stream_stack import Stack

from bench.trickle_client import OutputReader, PatternPublisher, pts_of

BENCH_NODES = Path(__file__).resolve().parents[2] / "bench" / "nodes"
SIZE = 128


def check_outputs(reader: OutputReader, fps: int) -> list[int]:
    indices = [f.index for f in reader.frames]
    assert indices == sorted(set(indices)), f"out of order or repeated: {indices}"
    for f in reader.frames:
        assert f.pts * f.time_base == Fraction(pts_of(f.index, fps), 90_000), f"frame {f.index}: pts {f.pts}"
    first = next((i for i, f in enumerate(reader.frames) if f.inverted), None)
    assert first is not None, "no processed frame at all"
    raw = [f.index for f in reader.frames[first:] if not f.inverted]
    assert raw == [], f"unprocessed frames after the first processed one: {raw}"
    return indices


async def _run(s: Stack, name: str, params: dict, publish) -> tuple[OutputReader, dict]:
    await s.start(name, {"width": SIZE, "height": SIZE, **params})
    reader = OutputReader(s.urls(name)["publish_url"])
    reading = asyncio.create_task(reader.run())
    await publish(s.urls(name)["subscribe_url"])
    info = await s.wait_state(name, {"stopped", "error"}, timeout=60)
    await asyncio.wait_for(reading, 20)
    assert info["state"] == "stopped" and not reader.errors, (info, reader.errors)
    return reader, info["stats"]


async def test_bursts_lose_nothing(stack: Stack) -> None:
    # Whole segments at once, as read from a relay's buffer; published from the start, while the
    # worker still comes up (those frames pass through). Media at 10 fps: the worker keeps up on
    # any machine, and the budget is out of reach, so any skip would be the scheduler's fault.
    fps = 10

    async def publish(url: str) -> None:
        publisher = PatternPublisher(url, SIZE, SIZE, fps=fps)
        await publisher.send_range(0, 15, realtime=False)
        await stack.wait_state("burst", {"running"})  # its worker is up
        for burst in range(1, 5):
            await publisher.send_range(burst * 15, 15, realtime=False)
            await asyncio.sleep(0.5)
        await publisher.close()

    reader, stats = await _run(stack, "burst", {"max_latency_ms": 60_000}, publish)
    assert check_outputs(reader, fps) == list(range(75)), json.dumps(stats)
    assert stats["received"] == stats["published"] == 75
    assert stats["dropped"] == stats["skipped_late"] == stats["skipped_overload"] == 0
    assert stats["processed"] + stats["passed_through"] == 75 and stats["processed"] >= 60


@pytest.mark.server_config(custom_nodes=[BENCH_NODES])
async def test_overload_skips_are_counted_and_never_replaced_by_raw_frames(stack: Stack) -> None:
    # A worker at 150 ms a frame under a 30 fps input: it cannot keep up on any machine.
    fps = 30
    seen: dict = {}

    async def publish(url: str) -> None:
        publisher = PatternPublisher(url, SIZE, SIZE, fps=fps)
        await publisher.send_range(0, 5)
        await stack.wait_state("overload", {"running"})
        await publisher.send_range(5, 60)
        status, seen["info"] = await stack.call("GET", "/stream/overload")
        status, seen["metrics"] = await stack.call("GET", "/metrics")
        await publisher.close()

    prompt = {
        "1": {"class_type": "LoadTensor", "inputs": {}},
        "2": {"class_type": "SleepInvert", "inputs": {"images": ["1", 0], "delay_ms": 150.0}},
        "3": {"class_type": "SaveTensor", "inputs": {"images": ["2", 0]}},
    }
    params = {"prompt": json.dumps(prompt)}
    reader, stats = await _run(stack, "overload", params, publish)
    indices = check_outputs(reader, fps)
    skipped = stats["skipped_late"] + stats["skipped_overload"]
    assert skipped > 0 and stats["dropped"] == skipped + stats["skipped_error"]
    assert stats["received"] == 65 == len(indices) + stats["dropped"]
    assert stats["published"] == len(indices) == stats["processed"] + stats["passed_through"]
    live = seen["info"]["stats"]
    assert {"input_fps", "worker_fps", "output_fps", "skip_ratio", "passed_through"} <= set(live)
    assert set(live["latency_ms"]) == {"p50", "p95", "p99"}
    assert 'comfystream_stream_frames_skipped_overload_total{stream_id="overload"}' in seen["metrics"]
    assert 'comfystream_stream_latency_ms{quantile="0.95",stream_id="overload"}' in seen["metrics"]
