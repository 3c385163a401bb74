"""Real camera input: 1080p30 H.264 with AAC audio, as an encoder publishes it (FFmpeg's MPEG-TS
muxing: video PES without a length; a keyframe starting each 1 s segment; a noisy picture so that
keyframes are as big as a camera's), through `comfystream serve --relay` with a pass-through-cost prompt.

Per bitrate (4, 10 and 20 Mbit/s): video frames in / out, audio packets in / out, latency
(publish of a frame's bytes to its decode from the output channel) p50 / p99, the largest keyframe,
and the stream's own `dropped` count. Then an encoder restart mid-run (pts back to 0, the new
encoder's first bytes in the same segment as the old one's last): frames lost and the time from
the restart to the first frame out of the new encoder.

The input is encoded before the run (so the publisher costs this machine nothing while it runs)
and its bytes are written frame by frame in real time, one segment per second.

    .venv/bin/python bench/camera.py [--seconds 10] [--bitrates 4,10,20] [--size 640x360]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import aiohttp
import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for `bench.` imports

from e2e import free_port, pct, stop_server, wait_healthy, wait_running  # noqa: E402

from bench.trickle_client import OutputReader, create_channel  # noqa: E402
from comfystream.media import SegmentEncoder, make_index_frame  # noqa: E402
from comfystream.trickle import FrameSubscriber, TricklePublisher  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FPS = 30
WIDTH, HEIGHT = 1920, 1080
AUDIO_RATE = 48_000
# The prompt does nothing but hand the frame back: what is measured is the frame path.
PASS_THROUGH = {
    "1": {"class_type": "LoadTensor", "inputs": {}},
    "2": {"class_type": "SaveTensor", "inputs": {"images": ["1", 0]}},
}


@dataclass
class Encoded:
    """The input: per segment, per frame, the bytes written once that frame is encoded."""

    segments: list[list[tuple[int, bytes]]] = field(default_factory=list)  # [(index, bytes)]
    audio_packets: int = 0
    largest_keyframe: int = 0


def _camera_encoder(bitrate: int) -> SegmentEncoder:
    # FFmpeg's own muxing (video PES without a length, as cameras' and gateways' TS have it), but
    # no interleaving, so that a frame's bytes leave with it and its latency is its own (an
    # interleaving muxer holds video until the audio catches up, which would count here)
    options = {"flush_packets": "1", "max_interleave_delta": "1"}
    return SegmentEncoder(
        WIDTH, HEIGHT, bitrate=bitrate, preset="ultrafast", segment_seconds=1.0, mux_options=options
    )


def encode_input(seconds: float, bitrate: int, restart_at: int | None = None) -> Encoded:
    """`seconds` of 1080p30 video (index pattern over noise: keyframes as big as a camera's) and a
    440 Hz AAC tone; with `restart_at`, a new encoder (pts from 0, its own TS counters) takes over
    at that frame, its first bytes in the segment the old one was writing."""
    rng = np.random.default_rng(0)
    noise = rng.integers(-40, 40, (HEIGHT, WIDTH, 3), dtype=np.int16)
    out = Encoded()
    encoder = _camera_encoder(bitrate)
    current: tuple[int, int] | None = None  # (encoder, its segment) being written
    generation = 0
    first = 0  # the index the current encoder started at
    samples = 0

    def add(index: int, chunks) -> None:
        nonlocal current
        for chunk in chunks:
            key = (generation, chunk.segment)
            if key != current:
                if not (generation and chunk.segment == 0 and current and current[0] == generation - 1):
                    out.segments.append([])  # (the new encoder's first segment joins the old's last)
                current = key
            out.segments[-1].append((index, chunk.data))

    for index in range(int(seconds * FPS)):
        if index == restart_at:
            add(index - 1, encoder.flush())
            out.audio_packets += encoder.audio_packets_out
            encoder.close()
            encoder, first, samples = _camera_encoder(bitrate), index, 0
            generation += 1
        local = index - first
        image = np.clip(make_index_frame(index, WIDTH, HEIGHT).astype(np.int16) + noise, 0, 255)
        frame = av.VideoFrame.from_ndarray(image.astype(np.uint8), format="rgb24")
        frame.pts, frame.time_base = local, Fraction(1, FPS)
        chunks = encoder.encode(frame)
        if local % FPS == 0 and chunks:
            out.largest_keyframe = max(out.largest_keyframe, sum(len(c.data) for c in chunks))
        while samples < (local + 1) * AUDIO_RATE // FPS:
            t = (np.arange(1024) + samples) / AUDIO_RATE
            tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            a = av.AudioFrame.from_ndarray(np.stack([tone, tone]), format="fltp", layout="stereo")
            a.sample_rate, a.pts, a.time_base = AUDIO_RATE, samples, Fraction(1, AUDIO_RATE)
            samples += 1024
            chunks += encoder.encode(a)
        add(index, chunks)
    add(index, encoder.flush())
    out.audio_packets += encoder.audio_packets_out
    encoder.close()
    return out


async def publish(url: str, encoded: Encoded, sent_at: dict[int, float]) -> None:
    """Each frame's bytes at its time, one trickle segment per input segment."""
    publisher = TricklePublisher(url, "video/mp2t")
    start = time.monotonic()
    try:
        for segment in encoded.segments:
            async with publisher.segment() as writer:
                for index, data in segment:
                    await asyncio.sleep(max(0.0, start + index / FPS - time.monotonic()))
                    if data:
                        await writer.write(data)
                    sent_at.setdefault(index, time.monotonic())
    finally:
        await publisher.close()


async def run_case(
    http: aiohttp.ClientSession, base: str, relay: str, name: str, encoded: Encoded, size: tuple[int, int]
) -> dict:
    await create_channel(f"{relay}/{name}")
    body = {
        "subscribe_url": f"{relay}/{name}",
        "publish_url": f"{relay}/{name}-out",
        "gateway_request_id": name,
        "params": {"width": size[0], "height": size[1], "prompts": [PASS_THROUGH]},
    }
    async with http.post(f"{base}/stream/start", json=body) as resp:
        assert resp.status == 200, await resp.text()
    await wait_running(http, base, name)
    reader = OutputReader(f"{relay}/{name}-out")
    reading = asyncio.create_task(reader.run())
    sent_at: dict[int, float] = {}
    await publish(f"{relay}/{name}", encoded, sent_at)
    await asyncio.wait_for(reading, 60)
    while True:
        async with http.get(f"{base}/stream/{name}") as resp:
            info = await resp.json()
        if info["state"] in ("stopped", "error"):
            break
        await asyncio.sleep(0.05)
    latency = [(f.received_at - sent_at[f.index]) * 1000 for f in reader.frames if f.index in sent_at]
    return {
        "frames_in": len(sent_at),
        "frames_out": len({f.index for f in reader.frames}),
        "audio_in": encoded.audio_packets,
        "audio_out": len(reader.audio_pts),
        "p50": pct(latency, 0.5),
        "p99": pct(latency, 0.99),
        "reader": reader,
        "sent_at": sent_at,
        "stats": info.get("stats") or {},
        "error": info.get("error"),
    }


async def run_relay_only(relay: str, encoded: Encoded) -> tuple[float, float]:
    """The baseline: the same input published to the relay and read straight back (decoded at
    1080p, frames matched by their order: nothing is lost on this path), no server."""
    name = f"baseline-{time.monotonic_ns()}"
    await create_channel(f"{relay}/{name}")
    received: list[float] = []

    async def read() -> None:
        async with FrameSubscriber(f"{relay}/{name}", start_seq=0, max_queued=0, stream_id="baseline") as frames:
            async for frame in frames:
                if isinstance(frame, av.VideoFrame):
                    received.append(time.monotonic())

    reading = asyncio.create_task(read())
    sent_at: dict[int, float] = {}
    await publish(f"{relay}/{name}", encoded, sent_at)
    await asyncio.wait_for(reading, 60)
    latency = [(at - sent_at[i]) * 1000 for i, at in enumerate(received) if i in sent_at]
    return pct(latency, 0.5), pct(latency, 0.99)


async def main_async(args: argparse.Namespace) -> int:
    size = tuple(int(x) for x in args.size.split("x"))
    bitrates = [int(x) for x in args.bitrates.split(",")]
    port = free_port()
    base, relay = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/trickle"
    cmd = [sys.executable, "-m", "server.cli", "--log-level", args.log_level, "serve", "--relay"]
    cmd += ["--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    print(
        f"camera bench: {WIDTH}x{HEIGHT}@{FPS} H.264 + AAC 48 kHz stereo, {args.seconds:g} s per case, "
        f"processed at {size[0]}x{size[1]}, {os.cpu_count()} CPU(s)"
    )
    try:
        async with aiohttp.ClientSession() as http:
            await wait_healthy(http, base, proc)
            for mbps in bitrates:
                encoded = await asyncio.to_thread(encode_input, args.seconds, mbps * 1_000_000)
                p50, p99 = await run_relay_only(relay, encoded)
                print(f"{mbps:3d} Mbit/s, relay only (baseline: publish, relay, 1080p decode): p50 {p50:.0f} ms p99 {p99:.0f} ms")
                r = await run_case(http, base, relay, f"cam-{mbps}-{time.monotonic_ns()}", encoded, size)
                print(
                    f"{mbps:3d} Mbit/s: frames {r['frames_out']}/{r['frames_in']}, audio packets "
                    f"{r['audio_out']}/{r['audio_in']}, latency p50 {r['p50']:.0f} ms p99 {r['p99']:.0f} ms, "
                    f"largest keyframe {encoded.largest_keyframe} B, server dropped {r['stats'].get('dropped')}"
                    + (f", error {r['error']}" if r["error"] else "")
                )
                print(f"    {_server_side(r['stats'])}")
            mbps = args.restart_mbps or bitrates[len(bitrates) // 2]
            restart_at = int(args.seconds * FPS) // 2 + FPS // 3  # mid-segment
            encoded = await asyncio.to_thread(encode_input, args.seconds, mbps * 1_000_000, restart_at)
            r = await run_case(http, base, relay, f"restart-{time.monotonic_ns()}", encoded, size)
            after = [f for f in r["reader"].frames if f.index >= restart_at]
            resume_ms = (after[0].received_at - r["sent_at"][restart_at]) * 1000 if after else float("nan")
            lost_after = len({i for i in r["sent_at"] if i >= restart_at} - {f.index for f in after})
            around = {f.index: (f.received_at - r["sent_at"][f.index]) * 1000 for f in r["reader"].frames}
            print(
                "    latency (ms) of frames around the restart: "
                + ", ".join(f"{i}: {around[i]:.0f}" for i in range(restart_at - 3, restart_at + 12) if i in around)
            )
            print(
                f"restart at frame {restart_at} ({mbps} Mbit/s, pts back to 0): frames "
                f"{r['frames_out']}/{r['frames_in']} ({lost_after} lost from the restart on), "
                f"first frame of the new encoder out {resume_ms:.0f} ms after it was sent, "
                f"audio packets {r['audio_out']}/{r['audio_in']}, latency p50 {r['p50']:.0f} ms "
                f"p99 {r['p99']:.0f} ms, server dropped {r['stats'].get('dropped')}"
            )
            print(f"    {_server_side(r['stats'])}, timeline discontinuities {r['stats'].get('timeline_discontinuities')}")
    finally:
        stop_server(proc)
    return 0


def _server_side(stats: dict) -> str:
    """The stream's own view: its latency (ingest to publish) and what it dropped, by cause."""
    causes = ("skipped_late", "skipped_overload", "skipped_error", "lost_input", "lost_decode", "lost_output")
    dropped = ", ".join(f"{c} {stats[c]}" for c in causes if stats.get(c))
    lat = stats.get("latency_ms") or {}
    audio = (
        f"audio received {stats.get('audio_received')}, published {stats.get('audio_published')}, "
        f"dropped {stats.get('audio_dropped_by_reason') or 0}"
    )
    return f"server-side latency p50 {lat.get('p50')} p99 {lat.get('p99')} ms; dropped: {dropped or 'none'}; {audio}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--bitrates", default="4,10,20", help="Mbit/s, comma-separated")
    parser.add_argument("--size", default="640x360", help="the stream's processing size")
    parser.add_argument("--restart-mbps", type=int, default=0, help="the restart case's bitrate (default: the middle one)")
    parser.add_argument("--log-level", default="WARNING")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
