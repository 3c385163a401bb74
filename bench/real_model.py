"""A real diffusion checkpoint in streams: SD 1.5 img2img through ComfyUI's own nodes.

The checkpoint has SD 1.5's exact layout with seeded random weights (`comfystream
make-test-checkpoint`, built once into the test cache); the workers load the ComfyUI checkout in
COMFYUI_PATH (default ../shared/ComfyUI). Prints, each measured in this run:

- start -> first processed frame, from a warm worker without and with `--preload-prompt`
  (live input at --fps; frames before it pass through raw);
- per-frame time in the worker against ComfyUI's own execution of the same prompt
  (`execution.PromptExecutor`, bench/comfyui_native.py) in one process with the same torch
  threads: the ratio is comfystream's overhead (budget <= 1.05);
- the worker's RSS (and its peak), a text+denoise prompt update's time and the RSS after it
  (budget: no model load, peak within 10%);
- two streams at once: each one's output rate and per-frame time.

    .venv/bin/python bench/real_model.py [--size 64] [--frames 6] [--threads 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.comfyui_native import sd15_img2img  # noqa: E402
from tests.comfyui.torchvision_standin import write_standin  # noqa: E402

CHECKPOINT = "sd15-random.safetensors"


def img2img(text: str = "a watercolor painting", denoise: float = 0.5) -> dict[str, Any]:
    return sd15_img2img(CHECKPOINT, text, denoise)


def rss_mib(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


def prepare(comfyui: str, cache: Path, tmp: Path) -> tuple[Path, dict[str, str]]:
    """The checkpoint (built once), an extra_model_paths.yaml naming it, and the environment."""
    env = dict(os.environ)
    try:
        import torchvision  # noqa: F401
    except Exception:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(write_standin(tmp / "standin")), env.get("PYTHONPATH")) if p
        )
        sys.path.insert(0, str(tmp / "standin"))  # spawned workers take this process's path
    checkpoint = cache / CHECKPOINT
    subprocess.run(
        [sys.executable, "-m", "server.cli", "make-test-checkpoint", "--comfyui", comfyui, str(checkpoint)],
        env=env, check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    models = tmp / "models"
    (models / "checkpoints").mkdir(parents=True)
    (models / "checkpoints" / CHECKPOINT).symlink_to(checkpoint)
    yaml = tmp / "extra_model_paths.yaml"
    yaml.write_text(f"bench:\n  base_path: {models}\n  checkpoints: checkpoints\n")
    return yaml, env


class NativeProcess:
    """ComfyUI's own execution of the same prompt, in a process of its own that stays up, so that
    its frames can be timed in turns with a worker's (this machine's load drifts)."""

    CODE = (
        "import json, sys, numpy as np, torch\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from bench.comfyui_native import NativeRunner, load_comfyui\n"
        "from workers.tensors import rgb_to_image\n"
        "load_comfyui(sys.argv[2], [sys.argv[3]], threads=int(sys.argv[4]))\n"
        "runner = NativeRunner(json.loads(sys.argv[5]))\n"
        "size = int(sys.argv[6])\n"
        "rng = np.random.default_rng(0)\n"
        "run = lambda: runner.run(rgb_to_image(torch, rng.integers(0, 256, (size, size, 3), dtype=np.uint8)))[1]\n"
        "run()\n"  # loads the model
        "print('ready', flush=True)\n"
        "for line in sys.stdin:\n"
        "    print(json.dumps([run() * 1000 for _ in range(int(line))]), flush=True)\n"
    )

    def __init__(self, comfyui: str, yaml: Path, env: dict[str, str], args: argparse.Namespace):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", self.CODE, str(ROOT), comfyui, str(yaml), str(args.threads),
             json.dumps(img2img()), str(args.size)],
            env=env, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None and self.proc.stdin is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError("ComfyUI's own run did not start")

    def frames_ms(self, n: int) -> list[float]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(30)


def frame(rgb: np.ndarray, pts: int) -> av.VideoFrame:
    f = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    f.pts, f.time_base = pts, Fraction(1, 1000)
    return f


async def first_processed(backend: Any, name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Start a stream on `backend` and feed live frames at --fps: seconds from the start to the
    first output that is not its input passed through."""
    from comfystream.pipeline import ProcessPoolPipeline

    rng = np.random.default_rng(1)
    pipeline = ProcessPoolPipeline(
        width=args.size, height=args.size, stream_id=name, backend=backend, warmup_frames=2
    )
    start = time.perf_counter()
    sent: dict[int, np.ndarray] = {}
    result: dict[str, Any] = {}

    async def feed() -> None:
        i = 0
        while "first_processed_s" not in result:
            rgb = rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
            pts = int((time.perf_counter() - start) * 1000)
            sent[pts] = rgb
            if pipeline.state in ("new", "starting", "ready"):
                await pipeline.put_video_frame(frame(rgb, pts))
            i += 1
            await asyncio.sleep(1.0 / args.fps)

    async def read() -> None:
        raw = 0
        while True:
            out = await pipeline.get_processed_video_frame()
            if not np.array_equal(out.to_ndarray(format="rgb24"), sent.get(out.pts)):
                result["first_processed_s"] = time.perf_counter() - start
                result["raw_frames_before"] = raw
                return
            raw += 1

    feeder = asyncio.create_task(feed())
    try:
        await pipeline.initialize([img2img()])
        result["initialize_s"] = time.perf_counter() - start
        await asyncio.wait_for(read(), 600)
        result["model_loads"] = pipeline.stats()["model_loads"]
    finally:
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)
        await pipeline.cleanup()
    return result


async def steady(
    backends: list[Any], args: argparse.Namespace, update: bool, native: NativeProcess | None = None
) -> list[dict[str, Any]]:
    """Streams at once, each fed frames as fast as its worker takes them (max_inflight 2): the
    worker's per-frame time, output rate, RSS; with `update`, a text+denoise update mid-way. With
    `native`, its frames are timed in turns with the stream's (one round of each at a time)."""
    from comfystream.pipeline import ProcessPoolPipeline

    async def one(k: int, backend: Any) -> dict[str, Any]:
        rng = np.random.default_rng(10 + k)
        pipeline = ProcessPoolPipeline(
            width=args.size, height=args.size, stream_id=f"steady{k}", backend=backend, warmup_frames=2,
            max_latency_ms=None,
        )  # fmt: skip
        await pipeline.initialize([img2img()])
        pid = pipeline.worker_status()[0]["pid"]
        out: dict[str, Any] = {"stream": k}
        try:

            async def run(n: int, base: int) -> float:
                t0 = time.perf_counter()
                for i in range(n):
                    await pipeline.put_video_frame(
                        frame(rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8), base + i)
                    )
                for _ in range(n):
                    await asyncio.wait_for(pipeline.get_processed_video_frame(), 600)
                return n / (time.perf_counter() - t0)

            if native is None:
                out["output_fps"] = await run(args.frames, 0)
            else:
                rounds = max(1, args.frames // 2)
                out["native_ms"] = []
                fps = []
                for r in range(rounds):
                    fps.append(await run(2, 100 * r))
                    out["native_ms"] += native.frames_ms(2)
                out["output_fps"] = statistics.median(fps)
            stats = pipeline.stats()
            out["worker_ms_p50"] = stats["worker_ms_p50"]
            out["workflow_ms_p50"] = stats["workflow_ms_p50"]
            out["rss"] = rss_mib(pid)
            if update:
                t0 = time.perf_counter()
                await pipeline.update_prompts([img2img("an oil painting of a harbour", 0.7)])
                out["update_s"] = time.perf_counter() - t0
                out["rss_after_update"] = rss_mib(pid)
                await run(2, 10_000)
            out["model_loads"] = pipeline.stats()["model_loads"]
            out["processed"] = pipeline.stats()["processed"]
        finally:
            await pipeline.cleanup()
        return out

    return list(await asyncio.gather(*(one(k, b) for k, b in enumerate(backends))))


async def main_async(args: argparse.Namespace) -> None:
    from workers.backend import ProcessPoolBackend

    cache = Path(args.cache)
    with tempfile.TemporaryDirectory(prefix="bench-real-model-") as tmp_name:
        tmp = Path(tmp_name)
        yaml, env = prepare(args.comfyui, cache, tmp)

        def backend(**settings: Any) -> ProcessPoolBackend:
            return ProcessPoolBackend(
                gpus=[], workspace=args.comfyui, torch_threads=args.threads, startup_timeout_s=600.0,
                workspace_settings={"extra_model_paths": [str(yaml)], "load_custom_nodes": False}, **settings,
            )  # fmt: skip

        print(f"SD 1.5 img2img (1 step, denoise 0.5), {args.size}x{args.size}, torch threads {args.threads}")
        parts = set(args.parts.split(","))
        native = NativeProcess(args.comfyui, yaml, env, args) if "steady" in parts else None
        try:
            (one,) = await steady([backend()], args, update=True, native=native) if native else (None,)
        finally:
            if native is not None:
                native.close()
        if one is not None:
            report_steady(one)
        if "first" in parts:
            await report_first_frames(backend, args)
        if "two" in parts:
            two = await steady([backend(), backend()], args, update=False)
            for s in two:
                print(
                    f"two streams: stream {s['stream']} {s['output_fps']:.2f} fps, per frame p50 "
                    f"{s['worker_ms_p50']:.0f} ms, RSS {s['rss']['VmRSS']:.0f} MiB"
                )


def report_steady(one: dict[str, Any]) -> None:
    native_p50 = statistics.median(one["native_ms"])
    print(
        f"ComfyUI's own execution (PromptExecutor), in turns with the worker's frames: per frame p50 "
        f"{native_p50:.0f} ms (n={len(one['native_ms'])})"
    )
    ratio = one["worker_ms_p50"] / native_p50
    print(
        f"comfystream worker: per frame p50 {one['worker_ms_p50']:.0f} ms (prompt alone "
        f"{one['workflow_ms_p50']:.0f} ms), ratio to ComfyUI {ratio:.3f} (budget <= 1.05)"
    )
    print(f"worker RSS {one['rss']['VmRSS']:.0f} MiB, peak {one['rss']['VmHWM']:.0f} MiB")
    after = one["rss_after_update"]
    print(
        f"prompt update (text + denoise): {one['update_s']:.2f} s, model loads {one['model_loads']}, "
        f"RSS after {after['VmRSS']:.0f} MiB, peak {after['VmHWM']:.0f} MiB "
        f"({after['VmHWM'] / one['rss']['VmHWM']:.3f} x the peak before)"
    )


async def report_first_frames(backend: Any, args: argparse.Namespace) -> None:
    for preload in (False, True):
        settings: dict[str, Any] = {"warm_workers": 1}
        if preload:
            settings.update(preload_prompts=(img2img(),), preload_size=(args.size, args.size))
        b = backend(**settings)
        await b.start()
        await b.pool.wait_full(600)
        r = await first_processed(b, f"first{int(preload)}", args)
        await b.shutdown()
        print(
            f"start -> first processed frame, warm worker {'with' if preload else 'without'} --preload-prompt: "
            f"{r['first_processed_s']:.2f} s ({r['raw_frames_before']} raw frames before it; "
            f"initialize {r['initialize_s']:.2f} s; model loads {r['model_loads']})"
        )


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """--comfyui (the checkout whose model classes and nodes run) and --cache (the test checkpoint's
    folder), for the benches that run the SD 1.5 test checkpoint."""
    parser.add_argument(
        "--comfyui", default=os.environ.get("COMFYUI_PATH") or str(ROOT.parent / "shared" / "ComfyUI")
    )
    parser.add_argument(
        "--cache",
        default=os.environ.get("COMFYSTREAM_TEST_CACHE") or str(Path.home() / ".cache" / "comfystream-tests"),
        help="where the test checkpoint is kept",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_checkpoint_arguments(parser)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--frames", type=int, default=6, help="frames timed per stream")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads, in the workers and in ComfyUI's run"
    )
    parser.add_argument("--fps", type=float, default=10.0, help="live input rate for the first-frame runs")
    parser.add_argument(
        "--parts", default="steady,first,two", help="what to run: steady, first, two (comma list)"
    )
    asyncio.run(main_async(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
