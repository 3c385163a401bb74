"""A worker dies with its server, even when the server is SIGKILLed, and leaves no segment."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.processes import alive

ROOT = Path(__file__).resolve().parents[2]

SERVER = textwrap.dedent(
    """
    import asyncio, json

    from comfystream.pipeline.backend import ChannelSpec, WorkerSpec
    from comfystream.prompts import DEFAULT_PROMPT
    from workers.backend import ProcessPoolBackend


    class Quiet:
        def on_result(self, *a): pass
        def on_lost(self, *a): pass
        def on_ready(self): pass
        def on_event(self, *a): pass


    async def main():
        backend = ProcessPoolBackend(gpus=[])
        worker = backend.create_worker(WorkerSpec(), "orphan-to-be")
        await worker.start()
        await worker.open_channel(ChannelSpec("c", 64, 48, [DEFAULT_PROMPT], warmup_frames=0), Quiet())
        from multiprocessing import util  # where the worker template's socket is

        info = {"pid": worker.proc.pid, "ring": worker.channels["c"].ring.name, "temp": util.get_temp_dir()}
        print(json.dumps(info), flush=True)
        await asyncio.sleep(120)


    if __name__ == "__main__":
        asyncio.run(main())
    """
)




def _until(predicate, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_worker_dies_when_its_server_is_sigkilled(tmp_path, no_leaks):
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    server = subprocess.Popen(
        [sys.executable, str(script)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        line = server.stdout.readline()
        assert line, "the server script did not start its worker"
        info = json.loads(line)
        worker_pid, ring = info["pid"], info["ring"]
        assert alive(worker_pid) and os.path.exists(f"/dev/shm/{ring}")
        server.send_signal(signal.SIGKILL)
        server.wait(10)
        assert _until(lambda: not alive(worker_pid)), f"worker {worker_pid} outlived its SIGKILLed server"
        # The server could not unlink its ring; multiprocessing's tracker does once all are gone.
        assert _until(lambda: not os.path.exists(f"/dev/shm/{ring}")), f"{ring} left in /dev/shm"
        # Nor remove multiprocessing's temp folder, with the worker template's socket: the template does.
        assert _until(lambda: not os.path.exists(info["temp"])), f"{info['temp']} left behind"
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
        server.stdout.close()
