"""Shared weights: SD 1.5 img2img in 1, 2 and 4 streams of one checkpoint on the CPU.

The checkpoint is the suite's SD 1.5 layout with seeded random weights (`make-test-checkpoint`,
built once into the test cache); the workers run ComfyUI's own nodes from COMFYUI_PATH (default
../shared/ComfyUI). Prints, each measured in this run:

- memory for 1, 2 and 4 streams with shared weights: the sum of the workers' PSS
  (/proc/PID/smaps_rollup: a page mapped by n processes counts 1/n in each) and the server's
  (this process), and the same with the weight files counted whole (a page of /dev/shm no worker
  has touched is in no PSS); budget: 4 streams <= 1.5 x one stream's total;
- one stream with private weights (shared_weights=False) for comparison;
- per-frame time with shared against private weights: one stream of each, alive together and
  fed one frame at a time in turn, so that both see the same machine (budget: within 5%).

Streams are started one at a time, each after checking there is room in memory for a worker's
own transient copy of the checkpoint (it loads it, then moves onto the shared copy).

    .venv/bin/python bench/shared_weights.py [--size 64] [--frames 8] [--streams 1,2,4]
    .venv/bin/python bench/shared_weights.py --device cuda --size 512   # with a GPU: 1, 2, 4, 8
      streams, each worker's GPU memory and the holder's (nvidia-smi), shared against private
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.real_model import add_checkpoint_arguments, frame, img2img, prepare  # noqa: E402
from workers.shared_weights import RUN_PREFIX, available_memory, mapping_usage, memory_usage  # noqa: E402

MIB = 2**20
GIB = 2**30


async def wait_for_room(need: int, what: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while available_memory() < need:
        if time.monotonic() > deadline:
            raise SystemExit(f"not enough memory for {what}: {available_memory() / GIB:.1f} GiB available")
        print(f"  waiting for memory ({available_memory() / GIB:.1f} GiB available, {need / GIB:.1f} needed)")
        await asyncio.sleep(10)


class Stream:
    def __init__(self, pipeline: Any, seed: int):
        self.pipeline = pipeline
        self.rng = np.random.default_rng(seed)
        self.pts = 0
        self.times_ms: list[float] = []

    @property
    def pid(self) -> int:
        return self.pipeline.worker_status()[0]["pid"]

    async def one_frame(self, size: int) -> float:
        rgb = self.rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        started = time.perf_counter()
        await self.pipeline.put_video_frame(frame(rgb, self.pts))
        out = await asyncio.wait_for(self.pipeline.get_processed_video_frame(), 600)
        assert out.pts == self.pts, (out.pts, self.pts)
        self.pts += 1
        ms = (time.perf_counter() - started) * 1000.0
        self.times_ms.append(ms)
        return ms


async def open_stream(backend: Any, name: str, args: argparse.Namespace, seed: int) -> Stream:
    from comfystream.pipeline import ProcessPoolPipeline

    await wait_for_room(int(args.room_gib * GIB), f"stream {name}")
    pipeline = ProcessPoolPipeline(
        width=args.size,
        height=args.size,
        stream_id=name,
        backend=backend,
        warmup_frames=1,
        max_latency_ms=None,
    )
    started = time.perf_counter()
    await pipeline.initialize([img2img()])
    # Spawn, load the checkpoint, share (publish or compare and map) and one warmup frame.
    print(f"  stream {name} initialized in {time.perf_counter() - started:.1f} s")
    return Stream(pipeline, seed)


def total_memory(streams: list[Stream], weights_root: Path | None) -> dict[str, float]:
    """MiB: the workers' PSS and the server's; and with the weight files counted whole."""
    workers = [memory_usage(s.pid) for s in streams]
    server = memory_usage(os.getpid())
    pss = sum(w["pss"] for w in workers) + server["pss"]
    out = {
        "workers_pss": sum(w["pss"] for w in workers) / MIB,
        "server_pss": server["pss"] / MIB,
        "total_pss": pss / MIB,
        "worker_private": statistics.mean(w["private"] for w in workers) / MIB,
        "worker_shared": statistics.mean(w["shared"] for w in workers) / MIB,
        "files": 0.0,
    }
    if weights_root is not None:
        files = sum(f.stat().st_size for f in weights_root.glob(f"{RUN_PREFIX}*/*.weights"))
        mapped_pss = sum(mapping_usage(s.pid, RUN_PREFIX)["pss"] for s in streams)
        out["files"] = files / MIB
        out["total_files_whole"] = (pss - mapped_pss + files) / MIB
    else:
        out["total_files_whole"] = out["total_pss"]
    return out


async def main_async(args: argparse.Namespace) -> int:
    from workers.backend import ProcessPoolBackend

    counts = sorted(int(n) for n in args.streams.split(","))
    shm_root = Path(tempfile.mkdtemp(prefix="bench-weights-", dir="/dev/shm"))
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench-shared-weights-") as tmp_name:
        yaml, _ = prepare(args.comfyui, Path(args.cache), Path(tmp_name))

        def backend(shared: bool) -> ProcessPoolBackend:
            return ProcessPoolBackend(
                gpus=[], workspace=args.comfyui, torch_threads=args.threads, startup_timeout_s=600.0,
                workspace_settings={"extra_model_paths": [str(yaml)], "load_custom_nodes": False},
                shared_weights=shared, shared_weights_root=str(shm_root),
            )  # fmt: skip

        print(
            f"SD 1.5 img2img (1 step, denoise 0.5), {args.size}x{args.size}, CPU, torch threads {args.threads}"
        )
        shared_backend, private_backend = backend(True), backend(False)
        streams: list[Stream] = []
        try:
            # Per-frame time: one stream of each kind, fed in turn.
            private = await open_stream(private_backend, "private", args, seed=1)
            await private.one_frame(args.size)
            private_memory = total_memory([private], None)
            streams.append(await open_stream(shared_backend, "shared0", args, seed=1))
            await streams[0].one_frame(args.size)
            private.times_ms.clear()
            streams[0].times_ms.clear()
            for _ in range(args.frames):
                await private.one_frame(args.size)
                await streams[0].one_frame(args.size)
            p_ms, s_ms = statistics.median(private.times_ms), statistics.median(streams[0].times_ms)
            p_worker = private.pipeline.stats()["worker_ms_p50"]
            s_worker = streams[0].pipeline.stats()["worker_ms_p50"]
            await private.pipeline.cleanup()
            await private_backend.shutdown()
            print(
                f"per frame, one stream each, in turn (n={args.frames}): private weights p50 {p_ms:.0f} ms "
                f"(worker {p_worker:.0f} ms), shared {s_ms:.0f} ms (worker {s_worker:.0f} ms): "
                f"ratio {s_ms / p_ms:.3f} (budget 0.95..1.05)"
            )
            ok &= 0.95 <= s_ms / p_ms <= 1.05
            print(
                f"1 stream, private weights: total {private_memory['total_pss']:.0f} MiB "
                f"(worker {private_memory['workers_pss']:.0f}, server {private_memory['server_pss']:.0f})"
            )

            results: dict[int, dict[str, float]] = {}
            for n in counts:
                while len(streams) < n:
                    streams.append(
                        await open_stream(
                            shared_backend, f"shared{len(streams)}", args, seed=len(streams) + 1
                        )
                    )
                for s in streams:
                    await s.one_frame(args.size)
                m = results[n] = total_memory(streams, shm_root)
                print(
                    f"{n} stream(s), shared weights: total PSS {m['total_pss']:.0f} MiB (workers "
                    f"{m['workers_pss']:.0f}, server {m['server_pss']:.0f}); files counted whole "
                    f"{m['total_files_whole']:.0f} MiB (weight files {m['files']:.0f} MiB); per worker "
                    f"private {m['worker_private']:.0f} MiB, shared {m['worker_shared']:.0f} MiB"
                )
            if 1 in results and max(counts) > 1:
                top = max(counts)
                one = results[1]
                for key in ("total_pss", "total_files_whole"):
                    ratio = results[top][key] / one[key]
                    print(f"{top} streams / 1 stream ({key}): {ratio:.3f} (budget <= 1.5)")
                    ok &= ratio <= 1.5
                print(
                    f"{top} streams with private weights would hold about "
                    f"{top * private_memory['workers_pss'] + private_memory['server_pss']:.0f} MiB"
                )
        finally:
            left = await close_all(streams, (shared_backend, private_backend), shm_root)
        print(f"left in /dev/shm after stop: {left or 'nothing'}")
        ok &= not left
    return 0 if ok else 1


async def main_cuda(args: argparse.Namespace) -> int:
    """On a GPU: the same streams with the weights shared through the GPU's holder (CUDA IPC)
    against private ones; each worker's GPU memory and the holder's, from nvidia-smi."""
    from bench.gpu import process_gpu_memory
    from workers.backend import ProcessPoolBackend
    from workers.shared_weights import WeightsDirectory

    counts = sorted(int(n) for n in args.streams.split(","))
    shm_root = Path(tempfile.mkdtemp(prefix="bench-weights-", dir="/dev/shm"))
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench-shared-weights-") as tmp_name:
        yaml, _ = prepare(args.comfyui, Path(args.cache), Path(tmp_name))

        def backend(holder: str) -> ProcessPoolBackend:
            return ProcessPoolBackend(
                workspace=args.comfyui, torch_threads=args.threads, startup_timeout_s=600.0,
                workspace_settings={"extra_model_paths": [str(yaml)], "load_custom_nodes": False},
                shared_weights_root=str(shm_root), shared_weights_holder=holder,
            )  # fmt: skip

        def gpu_mib(streams: list[Stream]) -> tuple[list[int], int]:
            usage = process_gpu_memory()
            directory = WeightsDirectory._by_root.get(str(shm_root))
            holders = [h.process.pid for h in directory.holders.values()] if directory else []
            return [usage.get(s.pid, 0) for s in streams], sum(usage.get(pid, 0) for pid in holders)

        print(
            f"SD 1.5 img2img (1 step, denoise 0.5), {args.size}x{args.size}, GPU (holder per GPU, CUDA IPC)"
        )
        shared_backend, private_backend = backend("cuda"), backend("off")
        streams: list[Stream] = []
        try:
            private = await open_stream(private_backend, "private", args, seed=1)
            await private.one_frame(args.size)
            (private_mib,), _ = gpu_mib([private])
            streams.append(await open_stream(shared_backend, "shared0", args, seed=1))
            await streams[0].one_frame(args.size)
            private.times_ms.clear()
            streams[0].times_ms.clear()
            for _ in range(args.frames):
                await private.one_frame(args.size)
                await streams[0].one_frame(args.size)
            p_ms, s_ms = statistics.median(private.times_ms), statistics.median(streams[0].times_ms)
            await private.pipeline.cleanup()
            await private_backend.shutdown()
            print(
                f"per frame, one stream each, in turn (n={args.frames}): private p50 {p_ms:.1f} ms, "
                f"shared {s_ms:.1f} ms: ratio {s_ms / p_ms:.3f} (budget 0.95..1.05)"
            )
            ok &= 0.95 <= s_ms / p_ms <= 1.05
            print(f"1 stream, private weights: worker {private_mib} MiB of GPU memory")
            totals: dict[int, int] = {}
            for n in counts:
                while len(streams) < n:
                    streams.append(
                        await open_stream(shared_backend, f"shared{len(streams)}", args, len(streams) + 1)
                    )
                for st in streams:
                    await st.one_frame(args.size)
                workers, holder = gpu_mib(streams)
                totals[n] = sum(workers) + holder
                print(
                    f"{n} stream(s), shared weights: total {totals[n]} MiB of GPU memory (holder {holder}, "
                    f"workers {workers}); private weights would take about {n * private_mib} MiB"
                )
            if 1 in totals and max(counts) > 1:
                top = max(counts)
                print(f"{top} streams / 1 stream: {totals[top] / totals[1]:.3f}")
        finally:
            left = await close_all(streams, (shared_backend, private_backend), shm_root)
        print(f"left in /dev/shm after stop: {left or 'nothing'}")
        ok &= not left
    return 0 if ok else 1


async def close_all(streams: list[Any], backends: tuple[Any, ...], shm_root: Path) -> list[Path]:
    """Stop the streams and the backends; what they left in `shm_root` (then removed)."""
    for st in streams:
        await st.pipeline.cleanup()
    for backend in backends:
        await backend.shutdown()
    left = list(shm_root.iterdir())
    shutil.rmtree(shm_root, ignore_errors=True)
    return left


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_checkpoint_arguments(parser)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--frames", type=int, default=8, help="frames timed per kind (shared, private)")
    parser.add_argument(
        "--streams", default=None, help="stream counts (default 1,2,4; with --device cuda 1,2,4,8)"
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cuda: workers on the GPU(s), weights shared through a holder per GPU (CUDA IPC)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--room-gib",
        type=float,
        default=6.0,
        help="memory a stream start needs available (its transient copy)",
    )
    args = parser.parse_args(argv)
    if args.device == "cuda":
        args.streams = args.streams or "1,2,4,8"
        return asyncio.run(main_cuda(args))
    args.streams = args.streams or "1,2,4"
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
