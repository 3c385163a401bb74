"""End-to-end stream benchmark: per-stream fps and publish-to-receive latency (median, p99) at
512x512 for 1, 2 and 4 concurrent streams, through a trickle relay.

The server runs as `comfystream serve --relay` in a subprocess (its workers are its children); this
process is the gateway: it publishes index-pattern frames at a fixed rate and reads the processed
output back. Latency is from the moment a frame's encoded bytes were written to the input channel to
the moment the same frame (matched by the index in its pixels) is decoded from the output channel.
The baseline, measured in the same run, is the relay alone: publish -> relay -> read, no server.

    .venv/bin/python bench/e2e.py [--frames 120] [--fps 30] [--size 512] [--streams 1,2,4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

# Run as a script, bench/ is on the path, not the repo root its `bench.` imports start from.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.trickle_client import OutputReader, PatternPublisher, create_channel  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_server(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM (the server's own orderly shutdown), SIGKILL if it is still there after `timeout`."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def fps_of(reader: OutputReader) -> float:
    frames = reader.frames
    if len(frames) < 2:
        return 0.0
    return (len(frames) - 1) / (frames[-1].received_at - frames[0].received_at)


def latencies(reader: OutputReader, publisher: PatternPublisher, skip_s: float = 0.0) -> list[float]:
    """Publish-to-receive latency (ms) of every frame received; with `skip_s`, of the frames sent
    after the first `skip_s` seconds of the run only (the start: connections, codecs, warm-up)."""
    if not publisher.sent_at:
        return []
    start = min(publisher.sent_at.values())
    return [
        (f.received_at - publisher.sent_at[f.index]) * 1000
        for f in reader.frames
        if f.index in publisher.sent_at and publisher.sent_at[f.index] - start >= skip_s
    ]


def quantiles(values: list[float]) -> str:
    return f"p50 {pct(values, 0.5):6.1f} p95 {pct(values, 0.95):6.1f} p99 {pct(values, 0.99):6.1f} ms"


async def run_relay_only(relay: str, size: int, frames: int, fps: int) -> tuple[float, list[float]]:
    name = f"baseline-{time.monotonic_ns()}"
    await create_channel(f"{relay}/{name}")
    reader = OutputReader(f"{relay}/{name}")
    reading = asyncio.create_task(reader.run())
    publisher = PatternPublisher(f"{relay}/{name}", size, size, fps=fps)
    await publisher.prepare()
    await asyncio.sleep(0.2)
    await publisher.send_range(0, frames)
    await publisher.close()
    await asyncio.wait_for(reading, 30)
    return fps_of(reader), latencies(reader, publisher)


async def run_streams(
    http: aiohttp.ClientSession, base: str, relay: str, n: int, size: int, frames: int, fps: int
):
    names = [f"bench-{n}-{i}-{time.monotonic_ns()}" for i in range(n)]
    for name in names:
        await create_channel(f"{relay}/{name}")
        body = {
            "subscribe_url": f"{relay}/{name}",
            "publish_url": f"{relay}/{name}-out",
            "gateway_request_id": name,
            "params": {"width": size, "height": size},
        }
        async with http.post(f"{base}/stream/start", json=body) as resp:
            assert resp.status == 200, await resp.text()
    for name in names:
        await wait_running(http, base, name)
    readers = [OutputReader(f"{relay}/{name}-out") for name in names]
    reading = [asyncio.create_task(r.run()) for r in readers]
    publishers = [PatternPublisher(f"{relay}/{name}", size, size, fps=fps) for name in names]
    # (their encoders and first POSTs up before the first frame: not counted as its latency)
    await asyncio.gather(*(p.prepare() for p in publishers))

    async def feed(p: PatternPublisher) -> None:
        await p.send_range(0, frames)
        await p.close()

    await asyncio.gather(*(feed(p) for p in publishers))
    await asyncio.wait_for(asyncio.gather(*reading), 60)
    dropped = 0
    for name in names:
        # The output ends before the stream has freed its worker: wait for that, or the next
        # round's starts may find the server still at --max-streams (503).
        while True:
            async with http.get(f"{base}/stream/{name}") as resp:
                info = await resp.json()
            if info["state"] in ("stopped", "error"):
                break
            await asyncio.sleep(0.05)
        stats = info["stats"]
        dropped += stats["dropped"]
        server_side = {
            k: stats.get(k) for k in ("latency_ms", "worker_fps", "skipped_late", "skipped_overload")
        }
        print(f"    server-side (ingest to publish): {server_side}")
    per_stream_fps = [fps_of(r) for r in readers]
    lat = [x for r, p in zip(readers, publishers, strict=True) for x in latencies(r, p)]
    settled = [x for r, p in zip(readers, publishers, strict=True) for x in latencies(r, p, 1.0)]
    received = sum(len(r.frames) for r in readers)
    worst = sorted(
        ((f.received_at - p.sent_at[f.index]) * 1000, f.index)
        for r, p in zip(readers, publishers, strict=True)
        for f in r.frames
        if f.index in p.sent_at
    )[-4:]
    print("    slowest frames (index: ms): " + ", ".join(f"{i}: {ms:.0f}" for ms, i in reversed(worst)))
    return per_stream_fps, lat, settled, received, dropped


async def wait_running(http: aiohttp.ClientSession, base: str, name: str) -> None:
    """Until stream `name` runs (its worker is up); raises when it ended first."""
    while True:
        async with http.get(f"{base}/stream/{name}") as resp:
            state = (await resp.json())["state"]
        if state == "running":
            return
        if state in ("stopped", "error"):
            raise RuntimeError(f"stream {name} ended before running")
        await asyncio.sleep(0.05)


async def wait_healthy(
    http: aiohttp.ClientSession, base: str, proc: subprocess.Popen, timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            async with http.get(f"{base}/health") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError("server did not come up")


async def main_async(args: argparse.Namespace) -> int:
    port = free_port()
    base, relay = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/trickle"
    counts = [int(x) for x in args.streams.split(",")]
    cmd = [
        sys.executable,
        "-m",
        "server.cli",
        "--log-level",
        "WARNING",
        "serve",
        "--relay",
        "--port",
        str(port),
        "--max-streams",
        str(max(counts)),
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        async with aiohttp.ClientSession() as http:
            await wait_healthy(http, base, proc)
            print(
                f"e2e bench: {args.size}x{args.size}, {args.frames} frames per stream at {args.fps} fps, "
                f"{os.cpu_count()} CPU(s)"
            )
            await run_relay_only(relay, args.size, 30, args.fps)  # warm-up (codecs, connections): discarded
            base_fps, base_lat = await run_relay_only(relay, args.size, args.frames, args.fps)
            base_med = statistics.median(base_lat)
            print(
                f"baseline relay only : fps {base_fps:6.1f}   latency median {base_med:7.1f} ms"
                f"   p99 {pct(base_lat, 0.99):7.1f} ms"
            )
            ref_fps = None
            for n in counts:
                fps_list, lat, settled, received, dropped = await run_streams(
                    http, base, relay, n, args.size, args.frames, args.fps
                )
                med = statistics.median(lat) if lat else float("nan")
                mean_fps = statistics.mean(fps_list)
                ref_fps = ref_fps or mean_fps
                print(
                    f"{n} stream(s)         : fps/stream {mean_fps:6.1f} (min {min(fps_list):5.1f})"
                    f"   latency median {med:7.1f} ms   p99 {pct(lat, 0.99):7.1f} ms"
                    f"   received {received}/{n * args.frames}, dropped {dropped}"
                    f"   | latency x{med / base_med:5.2f} baseline, fps x{mean_fps / ref_fps:4.2f} of 1 stream"
                )
                print(f"    latency, whole run     : {quantiles(lat)}")
                print(f"    latency, after 1st s   : {quantiles(settled)}")
            # The machine may have changed under us: the baseline again, after.
            after_fps, after_lat = await run_relay_only(relay, args.size, args.frames, args.fps)
            print(
                f"baseline relay only (after): fps {after_fps:6.1f}   latency median {statistics.median(after_lat):7.1f} ms"
                f"   p99 {pct(after_lat, 0.99):7.1f} ms   (load average {os.getloadavg()[0]:.1f})"
            )
    finally:
        stop_server(proc)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--streams", default="1,2,4")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
