"""How many streams of a model fit on one GPU, at what fps and latency: the stand-in model
(examples/custom_nodes/comfystream_standin_model, a random conv net) behind real workers.

For 1, 2, 4 and 8 streams of 512x512 at 30 fps (an open loop: each stream's frames are put on a
fixed schedule, staggered between streams, whatever comes back), each stream with its own worker
placed by the server's placement, prompt LoadTensor -> StandInModel -> SaveTensor, it prints:
  out fps     frames processed per second, per stream (mean and the slowest stream)
  latency     put_video_frame to get_processed_video_frame, p50 and p99 over every stream's frames
  dropped     frames skipped because the worker was behind (the pipeline's latency-based admission)
  GPU MiB     each worker's memory: torch's peak reserved in the worker, and what nvidia-smi
              counts for its pid (CUDA context included) when it lists it
  vs floor    the floor is the same model in a plain loop in this process (one upload, the model,
              one download per frame, nothing else): aggregate out fps / min(N x fps, floor fps),
              1.00 = everything the floor allows; and latency p50 / the floor's time per frame
With a GPU the floor also counts the host<->device copies per frame (torch.profiler): 1 up and
1 down is the worker's transfer path (workers/tensors.py FrameTransfer).

    .venv/bin/python bench/gpu.py                   # CUDA: sized for < 5 minutes on one GPU
    .venv/bin/python bench/gpu.py --device cpu      # here: scaled down (64x64, 10 fps, a tiny net)
    options: --streams 1,2,4,8 --size 512 --fps 30 --duration 10 --warmup 2 --channels 64
             --layers 8 --precision auto --floor-frames 200
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
NODES_DIR = ROOT / "examples" / "custom_nodes"
PACKAGE = NODES_DIR / "comfystream_standin_model" / "__init__.py"

# What each device runs when not told otherwise; the CPU's is sized for a 2-core CI machine.
DEFAULTS = {
    "cuda": {"streams": "1,2,4,8", "size": 512, "fps": 30.0, "duration": 10.0, "warmup": 2.0,
             "channels": 64, "layers": 8, "floor_frames": 200},
    "cpu": {"streams": "1,2", "size": 64, "fps": 10.0, "duration": 3.0, "warmup": 0.5,
            "channels": 8, "layers": 1, "floor_frames": 20},
}  # fmt: skip


def load_standin() -> Any:
    """The stand-in model's package, imported from its file (bench is not a package)."""
    spec = importlib.util.spec_from_file_location("comfystream_standin_model", PACKAGE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


# -- the floor: the model in a plain loop here ----------------------------------------------------


@dataclass
class Floor:
    ms_per_frame: float  # median
    fps: float  # frames per second of the whole loop (mean)
    copies_up: float | None = None  # host -> device copies per frame (CUDA only)
    copies_down: float | None = None


def measure_floor(args: argparse.Namespace, device_name: str) -> Floor:
    import torch

    from workers.tensors import FrameTransfer

    standin = load_standin()
    device = torch.device(device_name)
    transfer = FrameTransfer(torch, device)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8) for _ in range(8)]
    out = np.empty_like(frames[0])

    def one(i: int) -> None:
        image = transfer.upload(frames[i % len(frames)])
        result = standin.run_model(image, args.channels, args.layers, 0, args.precision)
        transfer.download(result[0], out)  # waits for the device: the frame is done

    for i in range(10):
        one(i)
    times = []
    started = time.perf_counter()
    for i in range(args.floor_frames):
        t0 = time.perf_counter()
        one(i)
        times.append((time.perf_counter() - t0) * 1000.0)
    floor = Floor(statistics.median(times), args.floor_frames / (time.perf_counter() - started))
    if device.type == "cuda":
        try:
            floor.copies_up, floor.copies_down = count_copies(torch, one, 20)
        except Exception as exc:  # the profiler needs CUPTI; the figures above stand without it
            print(f"(host<->device copies not counted: {type(exc).__name__}: {exc})")
    return floor


def count_copies(torch: Any, one: Any, frames: int) -> tuple[float, float]:
    """Host -> device and device -> host copies per frame, as the CUDA profiler records them."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for i in range(frames):
            one(i)
        torch.cuda.synchronize()
    names = [e.name for e in prof.events()]
    up = sum(1 for n in names if "Memcpy HtoD" in n)
    down = sum(1 for n in names if "Memcpy DtoH" in n)
    return up / frames, down / frames


# -- the streams ----------------------------------------------------------------------------------


@dataclass
class StreamResult:
    out_fps: float
    dropped: int
    sent: int
    latencies_ms: list[float] = field(default_factory=list)
    torch_reserved_mib: float | None = None
    smi_mib: float | None = None


def process_gpu_memory() -> dict[int, int]:
    """MiB each process uses on the GPUs, by pid, from nvidia-smi (none listed: {})."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return {}
    usage: dict[int, int] = {}
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            usage[int(parts[0])] = usage.get(int(parts[0]), 0) + int(parts[1])
    return usage


async def worker_memory(pipeline: Any) -> tuple[int | None, float | None]:
    """(the worker's pid, torch's peak reserved MiB in it) from its own status."""
    from workers import messages as m

    client = pipeline._clients()[0]
    proc = getattr(client, "proc", None)
    if proc is None:
        return None, None
    reply = await proc.request(lambda rid: m.StatusRequest(rid), timeout=30.0)
    memory = (reply.data or {}).get("gpu_memory") or {}
    return proc.pid, memory.get("max_reserved_mib")


async def run_streams(backend: Any, prompt: dict, n: int, args: argparse.Namespace) -> list[StreamResult]:
    from comfystream.pipeline import ProcessPoolPipeline

    pipelines = [
        ProcessPoolPipeline(
            width=args.size, height=args.size, stream_id=f"gpu{n}-{k}", backend=backend, warmup_frames=5
        )
        for k in range(n)
    ]
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8) for _ in range(4)]
    period = 1.0 / args.fps
    try:
        await asyncio.gather(*(p.initialize([prompt]) for p in pipelines))
        devices = {str(p.worker_status()[0].get("device")) for p in pipelines}
        if args.device == "cuda" and not all(d.startswith("cuda") for d in devices):
            raise SystemExit(f"bench/gpu.py: the workers run on {sorted(devices)}, not on a GPU")
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.1
        measure_from = start + args.warmup
        stop_at = measure_from + args.duration
        sent_at: list[dict[int, float]] = [{} for _ in range(n)]
        latencies: list[list[float]] = [[] for _ in range(n)]
        counts: list[dict[str, int]] = [{} for _ in range(n)]

        async def drive(k: int) -> None:
            p = pipelines[k]
            t_next = start + period * k / n  # staggered: the streams' frames do not all come at once
            i = 0
            while t_next < stop_at:
                await asyncio.sleep(max(0.0, t_next - loop.time()))
                if counts[k] == {} and loop.time() >= measure_from:
                    counts[k].update(p.stats(), sent=i)
                frame = av.VideoFrame.from_ndarray(images[i % len(images)], format="rgb24")
                frame.pts, frame.time_base = i, Fraction(1, 90000)
                sent_at[k][i] = loop.time()
                await p.put_video_frame(frame)
                i += 1
                t_next += period

        async def read(k: int) -> None:
            p = pipelines[k]
            while True:
                out = await p.get_processed_video_frame()
                put = sent_at[k].pop(out.pts, None)
                if put is not None and put >= measure_from:
                    latencies[k].append((loop.time() - put) * 1000.0)

        readers = [loop.create_task(read(k)) for k in range(n)]
        await asyncio.gather(*(drive(k) for k in range(n)))
        ends = [dict(p.stats()) for p in pipelines]
        await asyncio.sleep(min(2.0, 0.5 + 10 * period))  # the last frames in flight come back
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        results = []
        usage = process_gpu_memory()
        for k, p in enumerate(pipelines):
            before, end = counts[k], ends[k]
            pid, reserved = await worker_memory(p)
            results.append(
                StreamResult(
                    out_fps=(end["processed"] - before.get("processed", 0)) / args.duration,
                    dropped=end["dropped"] - before.get("dropped", 0),
                    sent=end["received"] - before.get("received", 0),
                    latencies_ms=latencies[k],
                    torch_reserved_mib=reserved,
                    smi_mib=usage.get(pid) if pid is not None else None,
                )
            )
            assert end["mismatched"] == 0, f"stream {k}: outputs paired with the wrong inputs"
        return results
    finally:
        await asyncio.gather(*(p.cleanup() for p in pipelines))


def fmt(value: float | None, spec: str = ".0f") -> str:
    return "n/a" if value is None else format(value, spec)


def report(n: int, results: list[StreamResult], floor: Floor, fps: float) -> dict[str, Any]:
    lat = [ms for r in results for ms in r.latencies_ms]
    fps_each = [r.out_fps for r in results]
    aggregate = sum(fps_each)
    ideal = min(n * fps, floor.fps)
    reserved = [r.torch_reserved_mib for r in results if r.torch_reserved_mib is not None]
    smi = [r.smi_mib for r in results if r.smi_mib is not None]
    row = {
        "streams": n,
        "fps_mean": statistics.mean(fps_each),
        "fps_min": min(fps_each),
        "latency_p50_ms": pct(lat, 0.5) if lat else None,
        "latency_p99_ms": pct(lat, 0.99) if lat else None,
        "dropped": sum(r.dropped for r in results),
        "sent": sum(r.sent for r in results),
        "torch_reserved_mib": statistics.mean(reserved) if reserved else None,
        "smi_mib": statistics.mean(smi) if smi else None,
        "vs_floor_throughput": aggregate / ideal if ideal else None,
        "vs_floor_latency": (pct(lat, 0.5) / floor.ms_per_frame) if lat and floor.ms_per_frame else None,
    }
    print(
        f"  {n:>2} stream(s): out {row['fps_mean']:6.1f} fps/stream (slowest {row['fps_min']:5.1f}),"
        f" latency p50 {fmt(row['latency_p50_ms'], '6.1f')} ms p99 {fmt(row['latency_p99_ms'], '6.1f')} ms,"
        f" dropped {row['dropped']}/{row['sent']},"
        f" GPU MiB/worker torch {fmt(row['torch_reserved_mib'])} smi {fmt(row['smi_mib'])},"
        f" vs floor: throughput {fmt(row['vs_floor_throughput'], '.2f')}x"
        f" latency {fmt(row['vs_floor_latency'], '.1f')}x"
    )
    return row


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from workers.backend import ProcessPoolBackend

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py: no CUDA device here; use --device cpu")
    if args.device == "cpu":
        torch.set_num_threads(1)  # as each worker runs (torch_threads=1)
    standin = load_standin()
    prompt = standin.prompt(args.channels, args.layers, 0, args.precision)
    print(
        f"stand-in model: {args.channels} channels, {args.layers} layers, precision {args.precision};"
        f" {args.size}x{args.size} at {args.fps:g} fps per stream; {args.duration:g} s measured"
        f" after {args.warmup:g} s; device {args.device}"
    )
    floor = measure_floor(args, args.device)
    copies = (
        f"; host<->device copies per frame: {floor.copies_up:.2f} up, {floor.copies_down:.2f} down"
        if floor.copies_up is not None
        else ""
    )
    print(f"floor (plain loop, this process): {floor.ms_per_frame:.2f} ms/frame, {floor.fps:.1f} fps{copies}")
    if args.device == "cuda":
        torch.cuda.empty_cache()  # what the floor held goes back before the workers are placed
    backend = ProcessPoolBackend(
        gpus=[] if args.device == "cpu" else None,
        custom_node_dirs=[str(NODES_DIR)],
        startup_timeout_s=300.0,
    )
    if args.device == "cuda" and not backend.placer.gpus:
        raise SystemExit("bench/gpu.py: nvidia-smi lists no GPU, so workers would be placed on the CPU")
    rows = []
    try:
        for n in [int(s) for s in args.streams.split(",")]:
            rows.append(report(n, await run_streams(backend, prompt, n, args), floor, args.fps))
    finally:
        await backend.shutdown()
    return {"floor": floor.__dict__, "rows": rows}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--streams", help="stream counts, e.g. 1,2,4,8")
    parser.add_argument("--size", type=int, help="frame width and height")
    parser.add_argument("--fps", type=float, help="input frame rate of each stream")
    parser.add_argument("--duration", type=float, help="seconds measured per stream count")
    parser.add_argument("--warmup", type=float, help="seconds of frames before measuring")
    parser.add_argument("--channels", type=int, help="the stand-in model's width")
    parser.add_argument("--layers", type=int, help="the stand-in model's depth")
    parser.add_argument("--precision", choices=("auto", "fp32", "fp16"), default="auto")
    parser.add_argument("--floor-frames", type=int, help="frames timed in the plain loop")
    args = parser.parse_args(argv)
    for key, value in DEFAULTS[args.device].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    sys.path.insert(0, str(ROOT))
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
