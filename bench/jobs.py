"""Job throughput: 20 small one-shot prompts through POST /prompt with 1 and with 2 job workers.

In one run, against a real server on 127.0.0.1 each time (the same app as `comfystream serve
--job-workers N`): the workers start and are warmed with one prompt, then all the prompts are
queued at once by one /ws client, and the clock runs until the last one's `executing` with
`node: null`. Every prompt differs (its color) so none is served from the cache. Prints jobs/s
and the per-job latency (queued -> done) median / p99 for each worker count, and the throughput
ratio against the 1-worker baseline of the same run.

    .venv/bin/python bench/jobs.py [--jobs 20] [--workers 1,2] [--size 512] [--threads-per-worker 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer

from server.app import create_app
from server.config import ServerConfig
from server.jobs import JOB_BACKEND_KEY, JOB_SETTINGS_KEY
from server.jobs.scheduler import JOB_SCHEDULER_KEY
from workers.backend import ProcessPoolBackend


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def prompt(color: int, size: int) -> dict:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": size, "height": size, "batch_size": 1, "color": color},
        },
        "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 6, "sigma": 2.0}},
        "3": {
            "class_type": "ImageSharpen",
            "inputs": {"image": ["2", 0], "sharpen_radius": 3, "sigma": 1.0, "alpha": 1.0},
        },
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "bench"}},
    }


async def run(workers: int, jobs: int, size: int, threads: int, root: Path, first_color: int) -> dict:
    config = ServerConfig(job_workers=workers, input_dir=root / "input", output_dir=root / "output")
    app = create_app(config)
    app[JOB_SETTINGS_KEY] = replace(app[JOB_SETTINGS_KEY], job_workers=workers)
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    app[JOB_BACKEND_KEY] = ProcessPoolBackend(gpus=None, env=env)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    base = str(server.make_url("")).rstrip("/")
    try:
        await app[JOB_SCHEDULER_KEY].wait_ready(300)
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(f"{base}/ws?clientId=bench")
            done: dict[str, float] = {}

            async def read() -> None:
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        data = json.loads(msg.data)
                        if data["type"] == "executing" and data["data"].get("node") is None:
                            done[data["data"]["prompt_id"]] = time.perf_counter()

            reader = asyncio.create_task(read())

            async def queue(color: int) -> tuple[str, float]:
                sent = time.perf_counter()
                async with http.post(
                    f"{base}/prompt", json={"prompt": prompt(color, size), "client_id": "bench"}
                ) as r:
                    body = await r.json()
                    assert r.status == 200, body
                return body["prompt_id"], sent

            async def wait(ids: list[str]) -> None:
                while not all(i in done for i in ids):
                    await asyncio.sleep(0.002)

            for w in range(2):  # warm every worker (first-run costs: imports, allocations), twice over
                ids = [(await queue(first_color + 100000 + w * 7 + k))[0] for k in range(workers)]
                await wait(ids)
            start = time.perf_counter()
            sent = [await queue(first_color + i) for i in range(jobs)]
            await wait([pid for pid, _ in sent])
            elapsed = time.perf_counter() - start
            latencies = [(done[pid] - t0) * 1000.0 for pid, t0 in sent]
            reader.cancel()
            await ws.close()
    finally:
        await server.close()
    return {
        "workers": workers,
        "jobs": jobs,
        "elapsed_s": elapsed,
        "jobs_per_s": jobs / elapsed,
        "latency_ms_p50": statistics.median(latencies),
        "latency_ms_p99": pct(latencies, 0.99),
    }


async def main_async(args: argparse.Namespace) -> int:
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-jobs-") as tmp:
        for i, workers in enumerate(args.workers):
            results.append(
                await run(workers, args.jobs, args.size, args.threads_per_worker, Path(tmp), i * 1000)
            )
    base = results[0]
    print(
        f"{args.jobs} jobs (EmptyImage -> ImageBlur -> ImageSharpen -> SaveImage at {args.size}x{args.size}), "
        f"{args.threads_per_worker} torch thread(s) per worker"
    )
    for r in results:
        print(
            f"  {r['workers']} worker(s): {r['jobs_per_s']:.2f} jobs/s ({r['elapsed_s']:.2f} s), "
            f"latency median {r['latency_ms_p50']:.0f} ms, p99 {r['latency_ms_p99']:.0f} ms, "
            f"throughput x{r['jobs_per_s'] / base['jobs_per_s']:.2f} vs {base['workers']} worker(s)"
        )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--workers", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads-per-worker", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
