"""Engine overhead per frame: LoadTensor -> ImageInvert -> SaveTensor at 512x512.

Measures, in the same run and interleaved frame by frame:
  direct   the three node functions called in a plain loop (the baseline: the nodes' own work)
  engine   plan.execute_sync(ctx) of the compiled default prompt, no event callback
  events   the same with an event callback that appends to a list (ComfyUI's per-node events)
  async    await plan.execute(ctx) inside a running loop
The overhead is engine minus direct (median and p99 over the frames). Budget: < 100 us.

    .venv/bin/python bench/engine.py [--frames 1000] [--size 512]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import torch

from comfystream.engine import ExecutionContext, compile_prompt
from comfystream.engine.context import reset_current_context, set_current_context
from comfystream.nodes import build_registry
from comfystream.nodes.frame_io import LoadTensor, SaveTensor
from comfystream.nodes.image_ops import ImageInvert
from comfystream.prompts import DEFAULT_PROMPT

BUDGET_US = 100.0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--warmup", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one frame at a time, as a worker runs it; keeps the baseline steady

    frame = torch.rand(1, args.size, args.size, 3)
    plan = compile_prompt(DEFAULT_PROMPT, build_registry())
    load, invert, save = LoadTensor(), ImageInvert(), SaveTensor()
    events: list = []

    def on_event(event_type, data):
        events.append(event_type)

    def direct_once() -> float:
        ctx = ExecutionContext(frame=frame)
        token = set_current_context(ctx)
        t0 = time.perf_counter_ns()
        (img,) = load.execute()
        (out,) = invert.invert(img)
        save.execute(out)
        t1 = time.perf_counter_ns()
        reset_current_context(token)
        assert ctx.output_frames[0] is out
        return (t1 - t0) / 1000

    def engine_once(with_events: bool) -> float:
        ctx = ExecutionContext(frame=frame, on_event=on_event if with_events else None)
        t0 = time.perf_counter_ns()
        result = plan.execute_sync(ctx)
        t1 = time.perf_counter_ns()
        assert len(result.frames) == 1
        events.clear()
        return (t1 - t0) / 1000

    async def async_once() -> float:
        ctx = ExecutionContext(frame=frame)
        t0 = time.perf_counter_ns()
        await plan.execute(ctx)
        return (time.perf_counter_ns() - t0) / 1000

    async def run_async(n: int) -> list[float]:
        return [await async_once() for _ in range(n)]

    for _ in range(args.warmup):
        direct_once()
        engine_once(False)
        engine_once(True)
    asyncio.run(run_async(args.warmup))

    direct, engine, with_events = [], [], []
    for _ in range(args.frames):  # interleaved, so drift hits every series alike
        direct.append(direct_once())
        engine.append(engine_once(False))
        with_events.append(engine_once(True))
        direct.append(direct_once())
    async_times = asyncio.run(run_async(args.frames))

    d_med, d_p99 = statistics.median(direct), pct(direct, 0.99)
    print(f"frames={args.frames} size={args.size}x{args.size} torch_threads=1")
    print(
        f"{'series':<10}{'median_us':>12}{'p99_us':>12}{'overhead_median_us':>22}{'overhead_p99_us':>18}{'ratio':>8}"
    )
    rows = [("direct", direct), ("engine", engine), ("events", with_events), ("async", async_times)]
    results = {}
    for name, values in rows:
        med, p99 = statistics.median(values), pct(values, 0.99)
        results[name] = (med - d_med, p99 - d_p99)
        print(
            f"{name:<10}{med:>12.1f}{p99:>12.1f}{med - d_med:>22.1f}{p99 - d_p99:>18.1f}{med / d_med:>8.2f}"
        )
    overhead = results["engine"][0]
    verdict = "within" if overhead < BUDGET_US else "OVER"
    print(f"engine overhead per frame (median): {overhead:.1f} us, {verdict} the {BUDGET_US:.0f} us budget")
    return 0 if overhead < BUDGET_US else 1


if __name__ == "__main__":
    raise SystemExit(main())
