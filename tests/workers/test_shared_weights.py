"""One copy of a model's weights for every worker that loads it (workers/shared_weights.py).

Real spawned workers run streams whose prompt loads a small model from a safetensors file
(tests/workers/weights_nodes: a loader as ComfyUI's copy the file into the model's own memory).
The weights' directory lives under a root of the test's own in /dev/shm, so that what is left
there is the test's to see.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import torch

from tests.polling import wait_for
from workers.shared_weights import (
    RUN_PREFIX,
    WEIGHTS_SUFFIX,
    SharedWeights,
    mapping_usage,
    memory_usage,
    sweep_stale_runs,
)

pytestmark = pytest.mark.timeout(300)

NODES = Path(__file__).resolve().parent / "weights_nodes"
SIZE = 32
LAYERS = 32  # 32 x 1024 x 1024 float32: 128 MiB of weights, far above a worker's noise


def _nodes_module():
    spec = importlib.util.spec_from_file_location(
        "cs_tiny_weights", NODES / "cs_tiny_weights" / "__init__.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tiny = _nodes_module()


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("tiny") / "tiny.safetensors"
    save_file(tiny.make_weights(LAYERS, seed=5), str(path))
    return path


@pytest.fixture
def shm_root():
    """A root for the run directories, in /dev/shm (tmpfs, as the server's default)."""
    root = Path(tempfile.mkdtemp(prefix=f"cs-test-weights-{os.getpid()}-", dir="/dev/shm"))
    try:
        yield root
    finally:
        import shutil

        shutil.rmtree(root, ignore_errors=True)


def prompt(path: Path, patch: float | None = None) -> dict[str, Any]:
    p: dict[str, Any] = {
        "1": {"class_type": "LoadTensor", "inputs": {}},
        "2": {"class_type": "TinyWeightsLoader", "inputs": {"path": str(path)}},
        "3": {"class_type": "TinyWeightsApply", "inputs": {"model": ["2", 0], "image": ["1", 0]}},
        "4": {"class_type": "SaveTensor", "inputs": {"images": ["3", 0]}},
    }
    if patch is not None:
        p["5"] = {"class_type": "TinyWeightsPatchInPlace", "inputs": {"model": ["2", 0], "amount": patch}}
        p["3"]["inputs"]["model"] = ["5", 0]
    return p


def expected(path: Path, rgb: np.ndarray, patch: float | None = None) -> np.ndarray:
    """What the prompt gives for this frame, computed here from the file."""
    from workers.tensors import image_into_rgb, rgb_to_image

    with torch.inference_mode():
        net = tiny.load(str(path))
        if patch is not None:
            for p in net.parameters():
                p.add_(patch)
        image = net(rgb_to_image(torch, rgb))[0]
        out = np.empty(rgb.shape, dtype=np.uint8)
        image_into_rgb(torch, image, out)
    return out


def make_backend(root: Path, **settings: Any):
    from workers.backend import ProcessPoolBackend

    return ProcessPoolBackend(
        gpus=[], custom_node_dirs=[str(NODES)], shared_weights_root=str(root), **settings
    )


def video_frame(rgb: np.ndarray, pts: int) -> av.VideoFrame:
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    frame.pts, frame.time_base = pts, Fraction(1, 30)
    return frame


async def roundtrip(pipeline, rgb: np.ndarray, pts: int) -> np.ndarray:
    await pipeline.put_video_frame(video_frame(rgb, pts))
    out = await asyncio.wait_for(pipeline.get_processed_video_frame(), 60)
    assert out.pts == pts
    return out.to_ndarray(format="rgb24")


async def open_stream(backend, name: str, p: dict[str, Any]):
    from comfystream.pipeline import ProcessPoolPipeline

    pipeline = ProcessPoolPipeline(width=SIZE, height=SIZE, stream_id=name, backend=backend, warmup_frames=1)
    await pipeline.initialize([p])
    return pipeline


def weights_files(root: Path) -> list[Path]:
    return sorted(root.glob(f"{RUN_PREFIX}*/*{WEIGHTS_SUFFIX}"))


def frames(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(n)]


async def test_workers_map_one_copy_of_the_weights(no_leaks, shm_root, weights_file):
    backend = make_backend(shm_root)
    pipelines = []
    try:
        for name in ("a", "b", "c"):
            pipelines.append(await open_stream(backend, name, prompt(weights_file)))
        inputs = frames(2, seed=1)
        for i, rgb in enumerate(inputs):
            want = expected(weights_file, rgb)
            for pipeline in pipelines:
                np.testing.assert_array_equal(await roundtrip(pipeline, rgb, i), want)

        (file,) = weights_files(shm_root)  # one copy for the three of them
        size = file.stat().st_size
        assert size >= LAYERS * tiny.WIDTH * tiny.WIDTH * 4
        pids = [p.worker_status()[0]["pid"] for p in pipelines]
        usage = [mapping_usage(pid, file.name) for pid in pids]
        for u in usage:
            # Each worker reads every page of it (the forward pass runs through every layer) ...
            assert u["rss"] >= 0.95 * size, usage
            assert u["private"] < 0.02 * size, usage  # ... and owns none of them
        # ... and the kernel charges each a third: together, one copy.
        assert sum(u["pss"] for u in usage) <= 1.02 * size, usage
        for pid in pids:
            # The private copy the loader made is gone too: a worker's own memory holds no
            # second copy of the weights (a worker without a model holds about 250 MiB).
            assert memory_usage(pid)["private"] < 250 * 2**20 + size // 2, memory_usage(pid)

        for pipeline in pipelines:
            # The worker listing tells the weights among its shared memory, not its private.
            memory = pipeline.worker_status()[0]["memory"]
            assert memory["shared"] >= 0.95 * size and memory["private"] < 250 * 2**20 + size // 2, memory
    finally:
        for pipeline in pipelines:
            await pipeline.cleanup()
        await backend.shutdown()
    assert not list(shm_root.iterdir())  # the run's directory went with its last worker


async def test_a_patch_in_place_in_one_worker_changes_no_other_workers_output(
    no_leaks, shm_root, weights_file
):
    backend = make_backend(shm_root)
    pipelines = []
    try:
        plain = await open_stream(backend, "plain", prompt(weights_file))
        pipelines.append(plain)
        (file,) = weights_files(shm_root)
        before = file.read_bytes()
        # The patch adds to every weight, in place, in memory the loader's weights were mapped to.
        patched = await open_stream(backend, "patched", prompt(weights_file, patch=0.01))
        pipelines.append(patched)
        assert weights_files(shm_root) == [file]  # the patched worker mapped the same copy
        for i, rgb in enumerate(frames(3, seed=2)):
            np.testing.assert_array_equal(await roundtrip(patched, rgb, i), expected(weights_file, rgb, 0.01))
            np.testing.assert_array_equal(await roundtrip(plain, rgb, i), expected(weights_file, rgb))
        assert file.read_bytes() == before  # the file never saw the patch
        size = file.stat().st_size
        patched_pid = patched.worker_status()[0]["pid"]
        # The patch wrote every page: the patched worker holds its own copy of them (copy-on-
        # write); the plain one wrote none, it reads the file's.
        assert mapping_usage(patched_pid, file.name)["written"] >= 0.95 * size
        plain_usage = mapping_usage(plain.worker_status()[0]["pid"], file.name)
        assert plain_usage["written"] == 0 and plain_usage["rss"] >= 0.95 * size
        # A new stream without the patch still gets the file's weights.
        late = await open_stream(backend, "late", prompt(weights_file))
        pipelines.append(late)
        rgb = frames(1, seed=3)[0]
        np.testing.assert_array_equal(await roundtrip(late, rgb, 10), expected(weights_file, rgb))
    finally:
        for pipeline in pipelines:
            await pipeline.cleanup()
        await backend.shutdown()
    assert not list(shm_root.iterdir())


async def test_sigkill_of_the_first_worker_leaves_the_others_running(no_leaks, shm_root, weights_file):
    backend = make_backend(shm_root)
    pipelines = []
    try:
        first = await open_stream(backend, "first", prompt(weights_file))  # publishes the file
        pipelines.append(first)
        second = await open_stream(backend, "second", prompt(weights_file))  # maps it
        pipelines.append(second)
        (file,) = weights_files(shm_root)
        first_pid = first.worker_status()[0]["pid"]
        os.kill(first_pid, signal.SIGKILL)

        inputs = frames(4, seed=4)
        for i, rgb in enumerate(inputs):
            np.testing.assert_array_equal(await roundtrip(second, rgb, i), expected(weights_file, rgb))

        async def replaced() -> bool:
            status = first.worker_status()[0]
            return status["pid"] not in (None, first_pid) and status["state"] == "ready"

        await wait_for(replaced, timeout=120, what="the first stream's new worker")
        # Its new worker mapped the very file the second one kept alive: still one copy.
        assert weights_files(shm_root) == [file]
        rgb = inputs[0]
        want = expected(weights_file, rgb)  # once: it loads the 128 MiB file

        async def processed() -> bool:
            # Frames pass through raw until the new worker has loaded the prompt.
            await first.put_video_frame(video_frame(rgb, 100))
            out = await asyncio.wait_for(first.get_processed_video_frame(), 60)
            return np.array_equal(out.to_ndarray(format="rgb24"), want)

        await wait_for(processed, timeout=120, what="a processed frame from the new worker")
        assert mapping_usage(first.worker_status()[0]["pid"], file.name)["rss"] > 0
        # The second stream went on with its worker all along.
        assert second.worker_status()[0]["restarts"] == 0
    finally:
        for pipeline in pipelines:
            await pipeline.cleanup()
        await backend.shutdown()
    assert not list(shm_root.iterdir())


async def test_the_last_worker_to_let_a_model_go_removes_its_file(no_leaks, shm_root, weights_file, tmp_path):
    """A prompt update to another model: the old file goes once no worker maps it."""
    other = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    save_file(tiny.make_weights(4, seed=6), str(other))
    backend = make_backend(shm_root)
    pipeline = await open_stream(backend, "a", prompt(weights_file))
    try:
        (old,) = weights_files(shm_root)
        await pipeline.update_prompts([prompt(other)])
        rgb = frames(1, seed=7)[0]
        np.testing.assert_array_equal(await roundtrip(pipeline, rgb, 0), expected(other, rgb))
        (new,) = weights_files(shm_root)
        assert new != old and not old.exists()
    finally:
        await pipeline.cleanup()
        await backend.shutdown()
    assert not list(shm_root.iterdir())


async def test_a_model_loaded_its_own_way_stays_private_and_says_so(no_leaks, shm_root, weights_file, capfd):
    backend = make_backend(shm_root)
    own = {
        "1": {"class_type": "LoadTensor", "inputs": {}},
        "2": {"class_type": "TinyWeightsOwnWay", "inputs": {"path": str(weights_file)}},
        "3": {"class_type": "TinyWeightsApplyOwn", "inputs": {"name": ["2", 0], "image": ["1", 0]}},
        "4": {"class_type": "SaveTensor", "inputs": {"images": ["3", 0]}},
    }
    pipeline = await open_stream(backend, "own", own)
    try:
        assert weights_files(shm_root) == []
        # The worker's log (its stderr is ours) names the node.
        assert "node 2 (TinyWeightsOwnWay) loads its model its own way" in capfd.readouterr().err
        rgb = frames(1, seed=8)[0]
        np.testing.assert_array_equal(await roundtrip(pipeline, rgb, 0), expected(weights_file, rgb))
    finally:
        await pipeline.cleanup()
        await backend.shutdown()


SERVER_SCRIPT = """
import asyncio, sys
sys.path.insert(0, {repo!r})
from tests.workers.test_shared_weights import make_backend, open_stream, prompt, roundtrip, frames
from pathlib import Path

async def main():
    backend = make_backend(Path({root!r}))
    pipeline = await open_stream(backend, "s", prompt(Path({weights!r})))
    await roundtrip(pipeline, frames(1, seed=1)[0], 0)
    print("streaming", pipeline.worker_status()[0]["pid"], flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_nothing_is_left_after_a_kill_of_the_server_and_a_restart(no_leaks, shm_root, weights_file):
    repo = str(Path(__file__).resolve().parents[2])
    script = SERVER_SCRIPT.format(repo=repo, root=str(shm_root), weights=str(weights_file))
    server = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": repo},
    )
    try:
        line = await asyncio.wait_for(asyncio.to_thread(server.stdout.readline), 120)
        assert line.startswith("streaming"), line
        worker_pid = int(line.split()[1])
        (file,) = weights_files(shm_root)
        server.kill()  # SIGKILL: no shutdown ran
        server.wait(10)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
        server.stdout.close()

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    await wait_for(lambda: asyncio.sleep(0, gone(worker_pid)), timeout=30, what="the worker to die with it")
    assert file.exists()  # what the killed server left ...
    backend = make_backend(shm_root)
    await backend.start()  # ... the next server's start removes
    try:
        assert list(shm_root.iterdir()) == []
    finally:
        await backend.shutdown()


def test_a_live_servers_directory_is_not_swept(shm_root):
    from workers.shared_weights import WeightsDirectory

    live = WeightsDirectory.create(shm_root)
    try:
        assert sweep_stale_runs(shm_root) == []
        assert live.owner.exists()
    finally:
        live.close()
    assert list(shm_root.iterdir()) == []


def test_a_tensor_that_differs_from_the_shared_copy_stays_private(shm_root):
    """Weights with the same fingerprint but other bytes (a patch at load time, outside the
    sampled bytes): the adopting worker keeps its own copy of what differs."""
    directory = shm_root / "run"
    directory.mkdir()
    with torch.inference_mode():
        first = torch.nn.Linear(1024, 1024)
        second = torch.nn.Linear(1024, 1024)
        second.load_state_dict(first.state_dict())
        second.weight[100, 3] += 1.0  # one value, away from the sampled bytes
    publisher = SharedWeights(directory, torch)
    adopter = SharedWeights(directory, torch)
    a = publisher.share_module(first)
    b = adopter.share_module(second)
    assert a.published and not b.published and a.file == b.file
    assert (b.tensors, b.private_tensors) == (1, 1)  # the bias mapped, the weight kept
    assert not torch.equal(first.weight, second.weight)
    assert torch.equal(first.bias, second.bias)


async def test_workers_of_two_backends_in_one_server_map_one_copy(no_leaks, shm_root, weights_file):
    """The server's streams and its jobs have a backend each: their workers share one copy too."""
    streams, jobs = make_backend(shm_root), make_backend(shm_root)
    pipelines = []
    try:
        for backend, name in ((streams, "s"), (jobs, "j")):
            pipelines.append(await open_stream(backend, name, prompt(weights_file)))
        (file,) = weights_files(shm_root)
        for pipeline in pipelines:
            assert mapping_usage(pipeline.worker_status()[0]["pid"], file.name)["rss"] > 0
        await pipelines[0].cleanup()
        await streams.shutdown()
        assert file.exists()  # the other backend's worker still maps it
    finally:
        for pipeline in pipelines:
            await pipeline.cleanup()
        await streams.shutdown()
        await jobs.shutdown()
    assert not list(shm_root.iterdir())


async def test_without_shared_weights_a_worker_keeps_its_own_copy(no_leaks, shm_root, weights_file):
    backend = make_backend(shm_root, shared_weights=False)
    pipeline = await open_stream(backend, "own", prompt(weights_file))
    try:
        rgb = frames(1, seed=9)[0]
        np.testing.assert_array_equal(await roundtrip(pipeline, rgb, 0), expected(weights_file, rgb))
        assert list(shm_root.iterdir()) == []
        pid = pipeline.worker_status()[0]["pid"]
        assert mapping_usage(pid, RUN_PREFIX)["mappings"] == 0
    finally:
        await pipeline.cleanup()
        await backend.shutdown()


def test_a_sweep_removes_only_weights_nobody_maps(shm_root):
    import fcntl
    import socket

    from workers.shared_weights import PUBLISH_LOCK, remove_unmapped

    for name in ("free.weights", "held.weights", "abc.weights.tmp-123", PUBLISH_LOCK, "other"):
        (shm_root / name).write_bytes(b"x")
    (shm_root / "device-host").mkdir()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(shm_root / "holder-host.sock"))
        fd = os.open(shm_root / "held.weights", os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # a worker maps it
            assert sorted(remove_unmapped(shm_root)) == ["abc.weights.tmp-123", "free.weights"]
        finally:
            os.close(fd)
        left = sorted(p.name for p in shm_root.iterdir())
        assert left == sorted(["held.weights", PUBLISH_LOCK, "other", "device-host", "holder-host.sock"])
        assert remove_unmapped(shm_root) == ["held.weights"]  # its worker let go


def test_a_start_removes_what_dead_servers_left(shm_root):
    """A killed server's owner file (its lock free now) and its directory; a directory whose
    owner file the resource tracker already removed. A live server's run stays."""
    from workers.shared_weights import OWNER_SUFFIX, WeightsDirectory

    dead = shm_root / f"{RUN_PREFIX}1-dead"
    (dead / "x.weights").parent.mkdir()
    (dead / "x.weights").write_bytes(b"w")
    (shm_root / f"{RUN_PREFIX}1-dead{OWNER_SUFFIX}").write_bytes(b"")
    orphan = shm_root / f"{RUN_PREFIX}2-orphan"
    orphan.mkdir()
    (orphan / "y.weights").write_bytes(b"w")
    live = WeightsDirectory.create(shm_root)  # its start sweeps
    try:
        live.path.mkdir()
        assert sorted(p.name for p in shm_root.iterdir()) == sorted([live.path.name, live.owner.name])
        assert sweep_stale_runs(shm_root) == []
    finally:
        live.close()
    assert list(shm_root.iterdir()) == []


def test_a_loader_of_an_already_shared_model_is_not_taken_for_one_loading_its_own_way(shm_root, caplog):
    """A LoRA loader's output is a clone of a model already shared: nothing new, no warning."""
    directory = shm_root / "run"
    with torch.inference_mode():
        model = torch.nn.Linear(1024, 1024)
    shared = SharedWeights(directory, torch)
    assert len(shared.share_output("node 1 (Loader)", [[model]], loader=True)) == 1
    caplog.clear()  # an earlier test may have left INFO on: what the first share said is not looked at
    with caplog.at_level("WARNING", logger="workers.shared_weights"):
        assert shared.share_output("node 2 (LoraLoader)", [[{"model": model}]], loader=True) == []
        assert shared.share_output("node 3 (OwnWay)", [["a name"]], loader=True) == []
    assert [r.getMessage().split(" loads")[0] for r in caplog.records] == ["node 3 (OwnWay)"]
    assert shared.stats.unshared_loaders == ["node 3 (OwnWay)"]
    del model
    import gc

    gc.collect()
    assert shared.sweep() != []  # nothing maps it any more


@pytest.mark.parametrize("length", [4096, 4098, 4099, 12, 6, 1])
def test_same_bytes_sees_a_change_of_any_byte_at_any_length(length):
    """The joining worker's comparison with the shared copy (compared as wide integers where the
    length allows): a single flipped byte anywhere differs; NaN payloads compare as bytes."""
    from workers.shared_weights import same_bytes

    a = torch.from_numpy(np.random.default_rng(length).integers(0, 256, length, dtype=np.uint8))
    assert same_bytes(torch, a, a.clone())
    for at in {0, length // 2, length - 1}:
        b = a.clone()
        b[at] ^= 1
        assert not same_bytes(torch, a, b)
    nan = torch.full((4,), float("nan")).view(torch.uint8)
    assert same_bytes(torch, nan, nan.clone())
