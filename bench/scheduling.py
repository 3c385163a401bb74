"""Frame scheduling under real input, side by side with pytrickle: burst, overload and live, for 1,
2 and 4 streams at once, 128x128, through one trickle relay (its own process).

- burst: whole 0.5 s segments (15 frames) written at once every 0.5 s, fast prompt (invert);
- overload: 30 fps frame by frame in real time, a node that waits 50 ms per frame (a worker at
  20 fps, a stand-in for a GPU-bound model);
- live: 30 fps frame by frame, fast prompt; the relay alone is the floor.

Each stream first gets a pre-roll of live frames until its first processed frame arrives (the time
from /stream/start to it is reported: the warm worker's effect); the scenario's frames follow, and
only they are measured: loss (scenario frames never received), the longest run of consecutive
frames not received, output fps against the worker's rate, unprocessed frames among processed ones,
and latency from the publisher's write to the reader's decode (p50/p95/p99).

With PYTRICKLE_PYTHON naming a python that has pytrickle, the same runs go against pytrickle's own
in-process worker (`StreamProcessor`, bench/pytrickle_worker.py: the same invert, the same 50 ms
wait), one process per stream, through the same relay, in the same run.

    .venv/bin/python bench/scheduling.py [--streams 1,2,4] [--scenarios burst,overload,live] [--frames 90]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from e2e import free_port, pct, run_relay_only, stop_server, wait_healthy

# Run as a script, bench/ is on the path, not the repo root its `bench.` imports start from.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.trickle_client import OutputReader, PatternPublisher, create_channel  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NODES = ROOT / "bench" / "nodes"
SIZE, FPS, SEGMENT = 128, 30, 15
DELAY_MS = {"burst": 0.0, "overload": 50.0, "live": 0.0}


def sleep_prompt(delay_ms: float) -> dict:
    return {
        "1": {"class_type": "LoadTensor", "inputs": {}},
        "2": {"class_type": "SleepInvert", "inputs": {"images": ["1", 0], "delay_ms": delay_ms}},
        "3": {"class_type": "SaveTensor", "inputs": {"images": ["2", 0]}},
    }


@dataclass
class StreamResult:
    sent: int = 0
    received: int = 0
    raw_after_processed: int = 0
    longest_gap: int = 0
    out_fps: float = 0.0
    latencies: list[float] = field(default_factory=list)
    first_processed_s: float | None = None
    stats: dict = field(default_factory=dict)


class System:
    """How to start and stop a stream on one of the two servers."""

    name = ""

    async def start(
        self, http: aiohttp.ClientSession, i: int, name: str, urls: dict, delay_ms: float
    ) -> None:
        raise NotImplementedError

    async def finish(self, http: aiohttp.ClientSession, i: int, name: str) -> dict:
        raise NotImplementedError


class Comfystream(System):
    name = "comfystream"

    def __init__(self, base: str):
        self.base = base

    async def start(self, http, i, name, urls, delay_ms):
        params: dict = {"width": SIZE, "height": SIZE}
        if delay_ms:
            params["prompt"] = json.dumps(sleep_prompt(delay_ms))
        body = {**urls, "gateway_request_id": name, "params": params}
        async with http.post(f"{self.base}/stream/start", json=body) as resp:
            assert resp.status == 200, await resp.text()

    async def finish(self, http, i, name):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the input ended: the stream stops by itself
            async with http.get(f"{self.base}/stream/{name}") as resp:
                info = await resp.json()
            if info["state"] in ("stopped", "error"):
                return info["stats"]
            await asyncio.sleep(0.1)
        return info["stats"]


class Pytrickle(System):
    name = "pytrickle"

    def __init__(self, ports: list[int]):
        self.ports = ports

    async def start(self, http, i, name, urls, delay_ms):
        body = {
            **urls,
            "gateway_request_id": name,
            "params": {"width": SIZE, "height": SIZE, "delay_ms": delay_ms},
        }
        async with http.post(f"http://127.0.0.1:{self.ports[i]}/stream/start", json=body) as resp:
            assert resp.status == 200, await resp.text()

    async def finish(self, http, i, name):
        await asyncio.sleep(1.0)  # (it does not end the stream when its input ends: stop it)
        async with http.post(f"http://127.0.0.1:{self.ports[i]}/stream/stop", json={}) as resp:
            await resp.read()
        await asyncio.sleep(0.5)
        return {}


async def one_stream(
    http: aiohttp.ClientSession, system: System, relay: str, i: int, scenario: str, frames: int
) -> StreamResult:
    name = f"{scenario}-{system.name}-{i}-{time.monotonic_ns()}"
    urls = {"subscribe_url": f"{relay}/{name}", "publish_url": f"{relay}/{name}-out"}
    await create_channel(urls["subscribe_url"])
    result = StreamResult()
    started = time.monotonic()
    await system.start(http, i, name, urls, DELAY_MS[scenario])
    reader = OutputReader(urls["publish_url"])
    reading = asyncio.create_task(reader.run())
    publisher = PatternPublisher(urls["subscribe_url"], SIZE, SIZE, fps=FPS)
    index = 0
    while not any(f.inverted for f in reader.frames):  # pre-roll until the first processed frame
        await publisher.send_range(index, 1)
        index += 1
        if time.monotonic() - started > 90:
            raise RuntimeError(f"{system.name}: no processed frame 90 s after start")
    first = next(f for f in reader.frames if f.inverted)
    result.first_processed_s = first.received_at - started
    await publisher.send_range(index, 15)  # settle
    index += 15
    first_measured = index
    t0 = time.monotonic()
    if scenario == "burst":
        for b in range(frames // SEGMENT):
            await publisher.send_range(first_measured + b * SEGMENT, SEGMENT, realtime=False)
            await asyncio.sleep(max(0.0, t0 + (b + 1) * SEGMENT / FPS - time.monotonic()))
        count = frames // SEGMENT * SEGMENT
    else:
        await publisher.send_range(first_measured, frames)
        count = frames
    span = time.monotonic() - t0
    await publisher.send_range(first_measured + count, 5)  # a tail, so no measured frame is the last
    await publisher.close()
    result.stats = await system.finish(http, i, name)
    try:
        await asyncio.wait_for(asyncio.shield(reading), 10)
    except TimeoutError:
        reading.cancel()
    measured = range(first_measured, first_measured + count)
    got = [f for f in reader.frames if f.index in measured]
    result.sent, result.received = count, len(got)
    result.raw_after_processed = sum(1 for f in reader.frames if f.index >= first.index and not f.inverted)
    indices = sorted({f.index for f in got})
    edges = [first_measured - 1, *indices, first_measured + count]
    result.longest_gap = max(b - a - 1 for a, b in zip(edges, edges[1:], strict=False))
    result.out_fps = len(got) / span if span > 0 else 0.0
    result.latencies = [(f.received_at - publisher.sent_at[f.index]) * 1000 for f in got]
    return result


async def run(http, system, relay, scenario, n, frames) -> list[StreamResult]:
    return list(
        await asyncio.gather(*(one_stream(http, system, relay, i, scenario, frames) for i in range(n)))
    )


def report(scenario: str, n: int, system: str, results: list[StreamResult]) -> str:
    lat = [x for r in results for x in r.latencies]
    sent = sum(r.sent for r in results)
    received = sum(r.received for r in results)
    fps = statistics.mean(r.out_fps for r in results)
    first = max(r.first_processed_s or 0 for r in results)
    worker = 1000 / DELAY_MS[scenario] if DELAY_MS[scenario] else None
    line = (
        f"{scenario:8s} {n} stream(s) {system:11s}: loss {sent - received:4d}/{sent:<4d}"
        f" ({100 * (sent - received) / max(sent, 1):5.1f}%)  longest skip run {max(r.longest_gap for r in results):2d}"
        f"  out fps/stream {fps:5.1f}"
        + (f" (worker {worker:.0f})" if worker else "")
        + f"  latency p50 {pct(lat, 0.5):6.1f} p95 {pct(lat, 0.95):6.1f} p99 {pct(lat, 0.99):6.1f} ms"
        f"  raw after processed {sum(r.raw_after_processed for r in results)}"
        f"  first processed {first:4.2f} s"
    )
    stats = [r.stats for r in results if r.stats]
    if stats:
        line += "  | server: skipped late {} overload {}, worker fps {}".format(
            sum(s.get("skipped_late", 0) for s in stats),
            sum(s.get("skipped_overload", 0) for s in stats),
            "/".join(f"{s.get('worker_fps') or 0:.0f}" for s in stats),
        )
    return line


def spawn(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


async def main_async(args: argparse.Namespace) -> int:
    counts = [int(x) for x in args.streams.split(",")]
    scenarios = args.scenarios.split(",")
    relay_port, server_port = free_port(), free_port()
    relay = f"http://127.0.0.1:{relay_port}"
    base = f"http://127.0.0.1:{server_port}"
    procs = [
        spawn(
            [sys.executable, "-m", "server.cli", "--log-level", "WARNING", "relay", "--port", str(relay_port)]
        )
    ]
    procs.append(
        spawn(
            [
                sys.executable,
                "-m",
                "server.cli",
                "--log-level",
                "WARNING",
                "serve",
                "--port",
                str(server_port),
                "--max-streams",
                str(max(counts)),
                "--custom-nodes",
                str(NODES),
                "--job-workers",
                "0",
            ]
        )
    )
    systems: list[System] = [Comfystream(base)]
    pytrickle = os.environ.get("PYTRICKLE_PYTHON")
    try:
        async with aiohttp.ClientSession() as http:
            await wait_healthy(http, base, procs[1])
            if pytrickle:
                ports = [free_port() for _ in range(max(counts))]
                for port in ports:
                    procs.append(spawn([pytrickle, str(ROOT / "bench" / "pytrickle_worker.py"), str(port)]))
                for proc, port in zip(procs[2:], ports, strict=True):
                    await wait_healthy(http, f"http://127.0.0.1:{port}", proc)
                systems.append(Pytrickle(ports))
            print(
                f"scheduling bench: {SIZE}x{SIZE} at {FPS} fps, {args.frames} measured frames per stream, "
                f"{os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f}"
                + ("" if pytrickle else "  (PYTRICKLE_PYTHON not set: comfystream only)"),
                flush=True,
            )
            await run_relay_only(relay, SIZE, 30, FPS)  # warm-up: discarded
            _, base_lat = await run_relay_only(relay, SIZE, args.frames, FPS)
            print(
                f"relay alone           : latency p50 {pct(base_lat, 0.5):6.1f} p95 {pct(base_lat, 0.95):6.1f}"
                f" p99 {pct(base_lat, 0.99):6.1f} ms",
                flush=True,
            )
            for scenario in scenarios:
                for n in counts:
                    for system in systems:
                        results = await run(http, system, relay, scenario, n, args.frames)
                        print(report(scenario, n, system.name, results), flush=True)
            print(f"(load average at the end {os.getloadavg()[0]:.1f})")
    finally:
        for proc in reversed(procs):
            stop_server(proc)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", default="1,2,4")
    parser.add_argument("--scenarios", default="burst,overload,live")
    parser.add_argument("--frames", type=int, default=90, help="measured frames per stream (default 90)")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
