"""Soak: does a long-running server grow? Streams are started, fed and stopped over and over, as an
operator's gateway would, and the server process's RSS, threads, fds, child processes and /dev/shm
entries are printed before (after warm-up), after, and after an idle wait.

Phase 1: `--cycles` cycles of one stream: start -> frames -> DELETE.
Phase 2: `--streams` streams at once, `--rounds` cycles each: start -> frames -> POST
restart-worker and DELETE 0.3 s later (racing); in one cycle of the first stream its worker is
SIGKILLed mid-stream.

The server runs as `comfystream serve --relay --warm-workers 1 --job-workers 0` in a subprocess;
this process is the gateway. Budget (docs/DESIGN.md section 8): after warm-up, RSS within 30 MB, and
threads, fds, children and shared-memory entries back to their baseline. Exit status 1 when not.

    .venv/bin/python bench/soak.py                       # 200 cycles, then 3 streams x 30 cycles
    .venv/bin/python bench/soak.py --cycles 30 --streams 2 --rounds 3 --json   # the suite's scale
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
from e2e import free_port, stop_server, wait_healthy  # bench/ is the script's folder

# Run as a script, bench/ is on the path, not the repo root its `bench.` imports start from.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.trickle_client import PatternPublisher, create_channel  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RSS_BUDGET_MB = 30.0
SIZE = 128


@dataclass
class Resources:
    rss_mb: float
    threads: int
    fds: int
    children: int
    shm: int

    @classmethod
    def of(cls, pid: int) -> Resources:
        with open(f"/proc/{pid}/status") as f:
            status = dict(line.split(":", 1) for line in f if ":" in line)
        children = _descendants(pid)
        return cls(
            rss_mb=int(status["VmRSS"].split()[0]) / 1024,
            threads=int(status["Threads"]),
            fds=len(os.listdir(f"/proc/{pid}/fd")),
            children=len(children),
            shm=len([n for n in os.listdir("/dev/shm") if _maker(n) in children | {pid}]),
        )

    def settled(self, baseline: Resources) -> bool:
        return all(getattr(self, k) <= getattr(baseline, k) for k in ("threads", "fds", "children", "shm"))


def _maker(name: str) -> int | None:
    """The process a /dev/shm entry of comfystream's is named after (`comfystream-ring-PID-...`,
    `comfystream-weights-PID-...`): only the server's own count, not those of other servers on the
    machine (a parallel test run)."""
    kind, _, rest = name.removeprefix("comfystream-").partition("-")
    pid = rest.split("-", 1)[0]
    return int(pid) if name.startswith("comfystream-") and kind and pid.isdigit() else None


def _descendants(pid: int) -> set[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                parents.setdefault(int(fields[1]), []).append(int(entry))
    out, stack = set(), [pid]
    while stack:
        for child in parents.get(stack.pop(), []):
            out.add(child)
            stack.append(child)
    return out


class Gateway:
    def __init__(self, http: aiohttp.ClientSession, base: str, relay: str):
        self.http, self.base, self.relay = http, base, relay
        self.errors: list[str] = []

    async def call(self, method: str, path: str, **kw) -> tuple[int, dict]:
        async with self.http.request(method, f"{self.base}{path}", **kw) as resp:
            body = await resp.json() if "json" in resp.headers.get("Content-Type", "") else {}
            return resp.status, body

    async def cycle(self, name: str, frames: int, race_restart: bool = False, kill: bool = False) -> None:
        """One stream's life: start, frames (a worker SIGKILLed midway with `kill`), then DELETE,
        right after a restart-worker with `race_restart`."""
        await create_channel(f"{self.relay}/{name}")
        body = {
            "subscribe_url": f"{self.relay}/{name}",
            "publish_url": f"{self.relay}/{name}-out",
            "gateway_request_id": name,
            "params": {"width": SIZE, "height": SIZE},
        }
        status, data = await self.call("POST", "/stream/start", json=body)
        if status != 200:
            self.errors.append(f"{name}: start answered {status} {data}")
            return
        publisher = PatternPublisher(f"{self.relay}/{name}", SIZE, SIZE, fps=30, segment_seconds=0.25)
        try:
            await publisher.send_range(0, frames // 2)
            if kill:
                _, workers = await self.call("GET", f"/stream/{name}/worker")
                pid = (workers.get("workers") or [{}])[0].get("pid")
                if pid:
                    os.kill(pid, signal.SIGKILL)
            await publisher.send_range(frames // 2, frames - frames // 2)
            if race_restart:
                restart = asyncio.create_task(self.call("POST", f"/stream/{name}/restart-worker"))
                await asyncio.sleep(0.3)
                status, _ = await self.call("DELETE", f"/stream/{name}")
                await restart  # 200, or refused because the stream went: either is fine
            else:
                status, _ = await self.call("DELETE", f"/stream/{name}")
            if status != 200:
                self.errors.append(f"{name}: DELETE answered {status}")
        finally:
            await publisher.close()


def fd_targets(pid: int) -> dict[str, int]:
    """What the process's descriptors point at, counted by kind (`socket`, `pipe`, `pidfd`, a
    file's path): printed beside a count that did not come back, to say what was left open."""
    counts: dict[str, int] = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        kind = target.split(":", 1)[0] if target.endswith("]") else target
        kind = "pidfd" if "pidfd" in target else kind
        counts[kind] = counts.get(kind, 0) + 1
    return counts


async def settle(pid: int, baseline: Resources, idle_s: float) -> Resources:
    """Wait (at most `idle_s`) until the counts are back to the baseline; the last sample. The
    first sample is taken a second after the last stop: a stop's housekeeping (the C heap's trim)
    runs just after its answer."""
    deadline = time.monotonic() + idle_s
    await asyncio.sleep(min(1.0, idle_s))
    sample = Resources.of(pid)
    while time.monotonic() < deadline and not sample.settled(baseline):
        await asyncio.sleep(0.5)
        sample = Resources.of(pid)
    return sample


async def soak(args: argparse.Namespace) -> dict:
    port = free_port()
    base, relay = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/trickle"
    cmd = [
        sys.executable, "-m", "server.cli", "--log-level", "WARNING",
        "serve", "--relay", "--port", str(port), "--warm-workers", "1", "--job-workers", "0",
        "--max-streams", str(max(args.streams, 1)),
    ]  # fmt: skip
    server = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL)
    report: dict = {}
    try:
        async with aiohttp.ClientSession() as http:
            await wait_healthy(http, base, server)
            gw = Gateway(http, base, relay)
            for i in range(args.warmup):  # warm-up: single cycles, then one round of the races
                await gw.cycle(f"warm-{i}", args.frames)
            # (The racing rounds also bring the loop's default executor to the size concurrency
            # needs; it is bounded, min(32, cores + 4) threads, and stays.)
            await asyncio.gather(*(_rounds(gw, f"warm-{s}", 2, args.frames, -1) for s in range(args.streams)))
            baseline = await settle(server.pid, Resources.of(server.pid), args.idle)
            baseline_fds = fd_targets(server.pid)
            started = time.monotonic()
            for i in range(args.cycles):
                await gw.cycle(f"soak-{i}", args.frames)
            phase1 = Resources.of(server.pid)
            await asyncio.gather(
                *(
                    _rounds(gw, str(s), args.rounds, args.frames, kill_at=args.rounds // 2 if s == 0 else -1)
                    for s in range(args.streams)
                )
            )
            after = Resources.of(server.pid)
            settling = time.monotonic()
            idle = await settle(server.pid, baseline, args.idle)
            settled_s = time.monotonic() - settling
            report = {
                "cycles": args.cycles,
                "streams": args.streams,
                "rounds": args.rounds,
                "seconds": round(time.monotonic() - started, 1),
                "baseline": asdict(baseline),
                "after_cycles": asdict(phase1),
                "after_races": asdict(after),
                "after_idle": asdict(idle),
                "rss_growth_mb": round(idle.rss_mb - baseline.rss_mb, 1),
                "settle_s": round(settled_s, 1),
                "errors": gw.errors,
            }
            if idle.fds > baseline.fds:
                report["fds_left"] = _difference(fd_targets(server.pid), baseline_fds)
            report["within_budget"] = (
                report["rss_growth_mb"] <= RSS_BUDGET_MB and idle.settled(baseline) and not gw.errors
            )
    finally:
        stop_server(server, timeout=60)
    return report


def _difference(now: dict[str, int], then: dict[str, int]) -> dict[str, int]:
    return {kind: n - then.get(kind, 0) for kind, n in now.items() if n > then.get(kind, 0)}


async def _rounds(gw: Gateway, stream: str, rounds: int, frames: int, kill_at: int) -> None:
    for r in range(rounds):
        await gw.cycle(f"race-{stream}-{r}", frames, race_restart=True, kill=r == kill_at)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--streams", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--frames", type=int, default=10, help="frames published per cycle")
    parser.add_argument(
        "--warmup", type=int, default=3, help="single cycles before the baseline (then one racing round)"
    )
    parser.add_argument("--idle", type=float, default=120.0, help="longest wait for the counts to settle")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON line")
    args = parser.parse_args()
    report = asyncio.run(soak(args))
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"{args.cycles} cycles, then {args.streams} streams x {args.rounds} racing cycles: {report['seconds']} s"
        )
        print(f"{'':14}{'RSS MB':>8}{'threads':>9}{'fds':>6}{'children':>10}{'shm':>5}")
        for key in ("baseline", "after_cycles", "after_races", "after_idle"):
            r = report[key]
            print(f"{key:14}{r['rss_mb']:8.1f}{r['threads']:9d}{r['fds']:6d}{r['children']:10d}{r['shm']:5d}")
        print(
            f"RSS growth {report['rss_growth_mb']} MB (budget {RSS_BUDGET_MB}); errors: {report['errors'] or 'none'}"
        )
        print("within budget" if report["within_budget"] else "OVER BUDGET")
    return 0 if report.get("within_budget") else 1


if __name__ == "__main__":
    sys.exit(main())
