"""Frame transport cost: what a frame pays for going through a worker process, at 512x512.

Measured in the same run, frame by frame and interleaved (so load on the machine hits both):
  in-process  av.VideoFrame -> RGB array -> IMAGE tensor -> plan.execute_sync (the default
              prompt, LoadTensor -> ImageInvert -> SaveTensor) -> uint8 -> av.VideoFrame,
              all in this process: the baseline, the same work a worker does per frame
  worker      the same frame through a ProcessPoolPipeline: put_video_frame, then
              get_processed_video_frame (shared-memory ring + pipe messages + a process hop)
For each frame, the time beyond the prompt's own execution (total minus the prompt's time, as
measured around plan.execute_sync on each side) is compared: the added latency is the worker's
minus the in-process one (median and p99 of the per-frame differences).
Budget: < 0.5 ms at the median. Then the aggregate frames/s of 1, 2 and 4 streams, each with its
own worker, each kept busy (max_inflight frames always in its worker).

    .venv/bin/python bench/transport.py [--frames 300] [--size 512] [--duration 5] [--streams 1,2,4]
                                        [--torch-threads 1]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import time
from fractions import Fraction

import av
import numpy as np
import torch

from comfystream.engine import ExecutionContext, compile_prompt
from comfystream.media.convert import frame_to_ndarray, ndarray_to_frame
from comfystream.nodes import build_registry
from comfystream.pipeline import ProcessPoolPipeline
from comfystream.prompts import DEFAULT_PROMPT
from workers.backend import ProcessPoolBackend
from workers.tensors import FrameTransfer

BUDGET_MS = 0.5


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def make_frame(i: int, size: int) -> av.VideoFrame:
    rgb = np.random.default_rng(i).integers(0, 256, (size, size, 3), dtype=np.uint8)
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    frame.pts, frame.time_base = i, Fraction(1, 30)
    return frame


class InProcess:
    """The frame through the prompt in this process, with the worker's own conversions."""

    def __init__(self, plan, size: int):
        self.plan, self.size = plan, size
        self.out = np.empty((size, size, 3), dtype=np.uint8)
        self.transfer = FrameTransfer(torch, torch.device("cpu"))

    def __call__(self, frame: av.VideoFrame) -> tuple[av.VideoFrame, float]:
        """Returns (output, ms the prompt itself took)."""
        rgb = frame_to_ndarray(frame, self.size, self.size)
        tensor = self.transfer.upload(rgb)
        started = time.perf_counter()
        result = self.plan.execute_sync(ExecutionContext(prompt_id="bench", frame=tensor))
        prompt_ms = (time.perf_counter() - started) * 1000.0
        self.transfer.download(result.frames[0][0], self.out)
        return ndarray_to_frame(self.out, frame), prompt_ms  # the same conversion the pipeline uses


def line(name: str, values: list[float]) -> str:
    return f"  {name:<34} median {statistics.median(values):7.3f} ms   p99 {pct(values, 0.99):7.3f} ms"


async def latency(backend: ProcessPoolBackend, frames: int, size: int, gap_s: float) -> None:
    in_process = InProcess(compile_prompt(DEFAULT_PROMPT, build_registry()), size)
    pipeline = ProcessPoolPipeline(
        width=size, height=size, stream_id="bench", backend=backend, warmup_frames=5
    )
    await pipeline.initialize([DEFAULT_PROMPT])
    inputs = [make_frame(i, size) for i in range(16)]
    local_ms: list[float] = []
    worker_ms: list[float] = []
    local_beyond: list[float] = []
    worker_beyond: list[float] = []
    try:
        for i in range(frames + 20):
            frame = inputs[i % len(inputs)]
            t0 = time.perf_counter()
            out_local, local_prompt_ms = in_process(frame)
            t1 = time.perf_counter()
            await pipeline.put_video_frame(frame)
            out_worker = await pipeline.get_processed_video_frame()
            t2 = time.perf_counter()
            worker_prompt_ms = pipeline.last_workflow_ms or 0.0
            if i >= 20:  # the first ones warm caches on both sides
                local_ms.append((t1 - t0) * 1000.0)
                worker_ms.append((t2 - t1) * 1000.0)
                local_beyond.append(local_ms[-1] - local_prompt_ms)
                worker_beyond.append(worker_ms[-1] - worker_prompt_ms)
            if i == 20:
                assert np.array_equal(out_local.to_ndarray(), out_worker.to_ndarray()), "outputs differ"
            if gap_s:
                await asyncio.sleep(gap_s)
        stats = pipeline.stats()
    finally:
        await pipeline.cleanup()
    added = [w - loc for w, loc in zip(worker_beyond, local_beyond, strict=True)]
    print(
        f"per-frame latency at {size}x{size}, {frames} frames, default prompt (invert), gap {gap_s * 1000:.0f} ms:"
    )
    print(line("in-process, total", local_ms))
    print(line("worker, total", worker_ms))
    print(line("in-process, beyond the prompt", local_beyond))
    print(line("worker, beyond the prompt", worker_beyond))
    print(line("added by the worker (difference)", added))
    conversions = stats["worker_ms_p50"] - stats["workflow_ms_p50"]
    print(
        f"  of the worker's: its own tensor conversions {conversions:.3f} ms (median), the rest (ring copy in"
        f" and out, pipe, two process wakeups) {statistics.median(worker_beyond) - conversions:.3f} ms;"
        f" mismatched {stats['mismatched']}"
    )
    verdict = "within" if statistics.median(added) < BUDGET_MS else "OVER"
    print(f"  budget < {BUDGET_MS} ms added at the median: {verdict}")


async def throughput(backend: ProcessPoolBackend, streams: int, size: int, duration: float) -> float:
    pipelines = [
        ProcessPoolPipeline(width=size, height=size, stream_id=f"s{k}", backend=backend, warmup_frames=5)
        for k in range(streams)
    ]
    await asyncio.gather(*(p.initialize([DEFAULT_PROMPT]) for p in pipelines))
    inputs = [make_frame(i, size) for i in range(8)]
    done = [0] * streams
    stop_at = 0.0

    async def drive(k: int, p: ProcessPoolPipeline) -> None:
        n = 0
        for _ in range(p.max_inflight):  # keep the worker's slots full: a closed loop
            await p.put_video_frame(inputs[n % len(inputs)])
            n += 1
        while time.perf_counter() < stop_at:
            await p.get_processed_video_frame()
            done[k] += 1
            await p.put_video_frame(inputs[n % len(inputs)])
            n += 1

    try:
        stop_at = time.perf_counter() + duration
        t0 = time.perf_counter()
        await asyncio.gather(*(drive(k, p) for k, p in enumerate(pipelines)))
        elapsed = time.perf_counter() - t0
        assert all(p.stats()["mismatched"] == 0 for p in pipelines)
    finally:
        await asyncio.gather(*(p.cleanup() for p in pipelines))
    return sum(done) / elapsed


async def main_async(args: argparse.Namespace) -> None:
    env = {"OMP_WAIT_POLICY": args.omp_wait_policy} if args.omp_wait_policy else {}
    threads = args.torch_threads or None
    backend = ProcessPoolBackend(gpus=[], custom_node_dirs=[], env=env, torch_threads=threads)
    if threads:
        torch.set_num_threads(threads)  # the in-process side runs as a worker does
    print(f"torch threads: {torch.get_num_threads()} in-process and in each worker")
    try:
        await latency(backend, args.frames, args.size, args.gap_ms / 1000.0)
        print(
            f"aggregate throughput, {args.size}x{args.size}, one worker per stream, {args.duration:.0f} s each:"
        )
        base = None
        for n in [int(s) for s in args.streams.split(",")]:
            fps = await throughput(backend, n, args.size, args.duration)
            base = base or fps
            print(
                f"  {n} stream(s): {fps:8.1f} frames/s total, {fps / n:7.1f} per stream ({fps / base:.2f}x of 1)"
            )
    finally:
        await backend.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--streams", default="1,2,4")
    parser.add_argument(
        "--gap-ms", type=float, default=0.0, help="idle time between frames (a live stream has some)"
    )
    parser.add_argument(
        "--omp-wait-policy",
        default="",
        help="OMP_WAIT_POLICY for the workers (PASSIVE: idle OpenMP threads sleep instead of spinning)",
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch intra-op threads of the workers and of the in-process side (0: torch's default)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
