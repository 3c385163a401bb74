"""One copy of a model's weights per GPU, however many workers run it: the design, and the code up
to the device boundary (no GPU was available where it was written; the device calls are in
`CudaIpcDevice` alone).

Why not the CPU mechanism: a file mapping shares host pages; on a GPU, ComfyUI moves the weights
into device memory to run them, and each process's allocations are its own. CUDA IPC lets one
process open another's device allocation (`cudaIpcGetMemHandle` / `cudaIpcOpenMemHandle`, in
torch `UntypedStorage._share_cuda_()` / `UntypedStorage._new_shared_cuda(...)`), but the memory
lives only as long as the process that allocated it. So:

- **One holder per GPU** (`serve_holder`, a process the server starts, pinned to that GPU and
  dying with the server): it owns every shared allocation on its GPU. It never runs a model.
- **A worker that has its model's weights on the GPU** computes the weights' fingerprint (as on
  the CPU: names, dtypes, shapes and sampled bytes; `SharedWeights._fingerprint`) and asks the
  holder for it (`get`). The holder answers with a handle to its allocation when it has it
  (`ready`), or allocates one and hands it to this worker to fill (`fill`: the worker copies its
  tensors in at their offsets, device to device, then says `filled`); a third worker asking
  meanwhile waits for the filling to end. Every worker then opens the handle and points its
  parameters at views of it (`t.data = view`), comparing each tensor first (one that differs
  keeps its own copy), and frees its own copy.
- **Lifetime**: the holder counts, per allocation, the workers that hold it (one `get` each,
  given back by `release` when the worker lets the model go, or by its connection closing: a
  worker that exits or is SIGKILLed releases everything it held, its CUDA context and its
  mappings go with it). An allocation nobody holds is freed at once. The holder exits with the
  server (and its allocations with it); the server starts a new one per run.
- **No copy-on-write on a GPU**: a worker that wrote into a shared tensor would change it for
  every worker. ComfyUI's weight patches (LoRA, model patches) replace the patched tensors
  (`set_attr_param`) unless told to patch in place (`copy_to_param`); `guard_in_place_patches`
  makes the in-place path give the worker its own copy of the tensor first. A custom node that
  writes into weights by other means is not caught: that is the limit of this design.
- **Device boundary**: `HolderDevice` is what the holder and the workers ask of the device
  (allocate an exportable buffer, export a handle, open one, free). `CudaIpcDevice` does it with
  CUDA IPC; `HostDevice` does it with shared host memory (MAP_SHARED: writes are seen by all, as
  on a GPU), which is how the protocol, the holder, the counting and the lifetimes are tested
  here with real processes (tests/workers/test_shared_weights_cuda.py).

`bench/gpu.py` reports per-worker GPU memory; with a GPU lent, running it with 1, 2, 4, 8 streams
of one checkpoint measures this.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import threading
import uuid
import weakref
from dataclasses import dataclass, field
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any, Protocol

from workers.shared_weights import SharedWeights, find_modules, same_bytes

logger = logging.getLogger(__name__)


class HolderDevice(Protocol):
    """What sharing weights asks of a device (the holder allocates, workers open)."""

    def allocate(self, size: int) -> tuple[Any, Any]:
        """In the holder: a uint8 tensor of `size` bytes and a picklable handle to it."""

    def open(self, handle: Any) -> Any:
        """In a worker: a uint8 tensor over the memory of `handle` (writes are seen by all)."""

    def free(self, buffer: Any, handle: Any) -> None:
        """In the holder: the allocation goes (no worker holds it any more)."""


class CudaIpcDevice:
    """CUDA IPC through torch's own storage sharing (what torch.multiprocessing uses): the
    handle carries the allocation's IPC handle, its offset in the caching allocator's block and
    torch's reference counter, so that the holder's allocator does not reuse the block while a
    worker still has it open."""

    def __init__(self, torch: Any, device: str = "cuda:0"):
        self.torch = torch
        self.device = torch.device(device)

    def allocate(self, size: int) -> tuple[Any, Any]:
        buffer = self.torch.empty(size, dtype=self.torch.uint8, device=self.device)
        return buffer, buffer.untyped_storage()._share_cuda_()

    def open(self, handle: Any) -> Any:
        torch = self.torch
        storage = torch.UntypedStorage._new_shared_cuda(*handle)
        return torch.empty(0, dtype=torch.uint8, device=self.device).set_(storage)

    def free(self, buffer: Any, handle: Any) -> None:
        del buffer
        self.torch.cuda.ipc_collect()  # the blocks whose workers have all let go
        self.torch.cuda.empty_cache()


class HostDevice:
    """The same contract over host shared memory (files in `directory`, mapped MAP_SHARED): the
    device boundary's stand-in where there is no GPU."""

    def __init__(self, torch: Any, directory: str | Path):
        self.torch = torch
        self.directory = Path(directory)

    def _map(self, path: Path, size: int) -> Any:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED)
        finally:
            os.close(fd)
        return self.torch.frombuffer(mm, dtype=self.torch.uint8)

    def allocate(self, size: int) -> tuple[Any, Any]:
        path = self.directory / f"buffer-{uuid.uuid4().hex}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
        return self._map(path, size), (str(path), size)

    def open(self, handle: Any) -> Any:
        path, size = handle
        return self._map(Path(path), size)

    def free(self, buffer: Any, handle: Any) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(handle[0])  # the pages go with the last mapping


# -- the holder ---------------------------------------------------------------------------------


@dataclass
class _Allocation:
    size: int
    buffer: Any
    handle: Any
    filled: bool = False
    filler: int | None = None  # the client filling it
    holders: set[int] = field(default_factory=set)
    waiting: list[tuple[int, Connection]] = field(default_factory=list)


class Holder:
    """The holder's state: allocations by fingerprint, and which clients hold each. Called from
    one thread per client connection, under one lock."""

    def __init__(self, device: HolderDevice):
        self.device = device
        self.allocations: dict[str, _Allocation] = {}
        self._lock = threading.Lock()

    def handle(self, client: int, conn: Connection, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        with self._lock:
            if kind == "get":
                self._get(client, conn, msg[1], msg[2])
            elif kind == "filled":
                self._filled(msg[1], client)
            elif kind == "release":
                self._release(client, msg[1])
            elif kind == "status":
                conn.send(
                    ("status", {k: (a.size, len(a.holders), a.filled) for k, a in self.allocations.items()})
                )
            else:
                conn.send(("error", f"unknown message {kind!r}"))

    def _get(self, client: int, conn: Connection, key: str, size: int) -> None:
        a = self.allocations.get(key)
        if a is not None and a.size != size:
            conn.send(("error", f"{key} is {a.size} bytes, asked for {size}"))
            return
        if a is None:
            buffer, handle = self.device.allocate(size)
            a = self.allocations[key] = _Allocation(size, buffer, handle, filler=client)
            a.holders.add(client)
            conn.send(("fill", handle))
        elif a.filled:
            a.holders.add(client)
            conn.send(("ready", a.handle))
        else:
            a.waiting.append((client, conn))  # answered when the filler is done (or gone)

    def _filled(self, key: str, client: int) -> None:
        a = self.allocations.get(key)
        if a is None or a.filler != client:
            return
        a.filled, a.filler = True, None
        for waiter, conn in a.waiting:
            a.holders.add(waiter)
            with contextlib.suppress(OSError):
                conn.send(("ready", a.handle))
        a.waiting.clear()

    def _release(self, client: int, key: str) -> None:
        a = self.allocations.get(key)
        if a is None:
            return
        a.holders.discard(client)
        a.waiting = [(c, conn) for c, conn in a.waiting if c != client]
        if a.filler == client:
            # Gone while filling: the contents are partial. The next one waiting fills it anew.
            a.filler = None
            if a.waiting:
                waiter, conn = a.waiting.pop(0)
                a.filler = waiter
                a.holders.add(waiter)
                with contextlib.suppress(OSError):
                    conn.send(("fill", a.handle))
        if not a.holders and not a.waiting and a.filler is None:
            del self.allocations[key]
            self.device.free(a.buffer, a.handle)
            logger.info("weights %s freed (no worker holds them)", key)

    def disconnected(self, client: int) -> None:
        """A worker's connection closed (it exited, or was killed): all it held is released."""
        with self._lock:
            for key in list(self.allocations):
                a = self.allocations[key]
                if client in a.holders or a.filler == client or any(c == client for c, _ in a.waiting):
                    self._release(client, key)


def serve_holder(address: str, device: HolderDevice, ready: Any = None) -> None:
    """The holder process's loop: accepts workers on `address` (a Unix socket path), one thread
    each. Runs until the process is killed (it dies with the server)."""
    holder = Holder(device)
    with Listener(address, family="AF_UNIX") as listener:
        if ready is not None:
            ready.set()
        client_ids = iter(range(1, 1 << 62))
        while True:
            conn = listener.accept()
            client = next(client_ids)
            threading.Thread(target=_serve_client, args=(holder, client, conn), daemon=True).start()


def _serve_client(holder: Holder, client: int, conn: Connection) -> None:
    try:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                return
            holder.handle(client, conn, msg)
    finally:
        holder.disconnected(client)
        conn.close()


def holder_main(address: str, mode: str, gpu: str | None, directory: str, parent_pid: int) -> None:
    """The holder process (spawned by the server, one per GPU): pinned to its GPU before torch
    is imported, dies with the server."""
    from workers.lifecycle import die_with_parent

    die_with_parent(parent_pid)
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
        os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s %(levelname)s holder[{os.getpid()}] %(message)s"
    )
    import torch

    device: HolderDevice = CudaIpcDevice(torch) if mode == "cuda" else HostDevice(torch, directory)
    serve_holder(address, device)


class HolderProcess:
    """The server's handle of one holder: started with the first worker of its GPU that shares
    weights, stopped with the run's directory (after the last worker)."""

    START_TIMEOUT_S = 60.0

    def __init__(self, address: str, mode: str, gpu: str | None, directory: str):
        import multiprocessing

        self.address = address
        self.mode = mode
        self.directory = directory
        self.process = multiprocessing.get_context("spawn").Process(
            target=holder_main,
            args=(address, mode, gpu, directory, os.getpid()),
            name=f"weights-holder-{gpu or 'host'}",
            daemon=True,
        )

    def start(self) -> None:
        """Blocking (run it in a thread): spawns the holder and waits for its socket."""
        import time

        self.process.start()
        deadline = time.monotonic() + self.START_TIMEOUT_S
        while not os.path.exists(self.address):
            if not self.process.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise OSError(f"the weights holder did not start (exit code {self.process.exitcode})")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process.pid is None:
            return
        self.process.kill()  # it holds nothing that needs an orderly exit: its memory goes with it
        self.process.join(10)
        self.process.close()


# -- the worker's side --------------------------------------------------------------------------


@dataclass
class DeviceShareResult:
    key: str
    filled: bool
    tensors: int
    shared_bytes: int
    private_tensors: int = 0


class DeviceSharedWeights:
    """A worker's client of its GPU's holder."""

    def __init__(self, torch: Any, address: str, device: HolderDevice, device_type: str = "cuda"):
        self.torch = torch
        self.device = device
        self.device_type = device_type
        self.conn = Client(address, family="AF_UNIX")
        self._layout = SharedWeights(os.devnull, torch)  # its entries and fingerprint, reused
        self.held: set[str] = set()
        # Per key: the byte range of the opened allocation in this process, and the tensors that
        # were pointed into it (weakly: the model owns them).
        self._ranges: dict[str, tuple[int, int, list[Any]]] = {}
        self.stats = {"modules": 0, "tensors": 0, "shared_bytes": 0, "filled": 0, "private_tensors": 0}
        # One exchange with the holder at a time (the loop's thread and the background thread
        # both share), and a whole share at a time: a thread waiting for weights this worker is
        # filling on its other thread would otherwise hold the connection the filler needs.
        self._lock = threading.Lock()

    def share_module(self, module: Any, device_type: str = "cuda") -> DeviceShareResult | None:
        with self._lock:
            return self._share_module(module, device_type)

    def _share_module(self, module: Any, device_type: str) -> DeviceShareResult | None:
        torch = self.torch
        entries = self._layout._entries(module, device_type)
        if not entries:
            return None
        key, size = self._layout._fingerprint(entries, device_type)
        self.conn.send(("get", key, size))
        kind, handle = self.conn.recv()
        if kind == "error":
            raise OSError(handle)
        self.held.add(key)
        base = self.device.open(handle)
        filled = kind == "fill"
        if filled:
            for e in entries:
                nbytes = e.tensor.numel() * e.tensor.element_size()
                base[e.offset : e.offset + nbytes].copy_(e.tensor.detach().reshape(-1).view(torch.uint8))
            if device_type == "cuda":
                torch.cuda.synchronize()  # the copies are queued: done before anyone reads them
            self.conn.send(("filled", key))
        result = DeviceShareResult(key, filled, 0, 0)
        start = base.data_ptr()
        self._ranges[key] = (start, start + size, [weakref.ref(e.tensor) for e in entries])
        with torch.inference_mode():
            for e in entries:
                t = e.tensor
                nbytes = t.numel() * t.element_size()
                raw = base[e.offset : e.offset + nbytes]
                if not filled and not same_bytes(torch, raw, t.detach().reshape(-1).view(torch.uint8)):
                    result.private_tensors += 1
                    continue
                t.data = raw.view(t.dtype).view(t.shape)
                result.tensors += 1
                result.shared_bytes += nbytes
        del base, raw  # only the tensors keep the allocation open now
        st = self.stats
        st["modules"] += 1
        st["tensors"] += result.tensors
        st["shared_bytes"] += result.shared_bytes
        st["filled"] += int(filled)
        st["private_tensors"] += result.private_tensors
        if result.tensors == 0:
            self._release(key)
        return result

    def share_outputs(self, label: str, outputs: list[Any], device_type: str) -> list[DeviceShareResult]:
        """The modules in `outputs` (node outputs) whose weights are on `device_type` and not
        shared yet: after ComfyUI moved a model to the GPU to run it, its weights move onto the
        holder's copy."""
        results = []
        for module in find_modules(outputs, self.torch):
            result = self.share_module(module, device_type)
            if result is not None:
                results.append(result)
        if results:
            logger.info(
                "%s: %d MiB of weights shared on the device (%s)",
                label,
                sum(r.shared_bytes for r in results) >> 20,
                ", ".join(f"{r.key}: {'filled' if r.filled else 'opened'}" for r in results),
            )
        return results

    def is_shared(self, tensor: Any) -> bool:
        ptr = tensor.data_ptr()
        return any(lo <= ptr < hi for lo, hi, _ in self._ranges.values())

    def release_unused(self) -> list[str]:
        """Gives back the allocations none of whose tensors points into them any more (the model
        was freed, or ComfyUI moved it off the device)."""
        gone = []
        with self._lock:
            for key, (lo, hi, refs) in list(self._ranges.items()):
                live = [t for t in (r() for r in refs) if t is not None]
                if not any(lo <= t.data_ptr() < hi for t in live):
                    del self._ranges[key]
                    self._release(key)
                    gone.append(key)
        return gone

    def sweep(self) -> list[str]:
        """After the worker let models go (the loop's release_unused)."""
        return self.release_unused()

    def after_run(self, cache: Any) -> None:
        """After a prompt ran (its first run, a warmup): ComfyUI has moved the models it used
        onto the device; their weights move onto the holder's copy, and the device memory of
        the private copy goes back to the driver for the other workers."""
        if (
            self.share_outputs("after a run", cache.outputs(), self.device_type)
            and self.device_type == "cuda"
        ):
            self.torch.cuda.empty_cache()

    def status(self) -> dict[str, Any]:
        return {"kind": "holder", "held": len(self.held), **self.stats}

    def release(self, key: str) -> None:
        with self._lock:
            self._release(key)

    def _release(self, key: str) -> None:
        if key in self.held:
            self.held.discard(key)
            self.conn.send(("release", key))

    def holder_status(self) -> dict[str, Any]:
        """The holder's allocations: {key: (size, holders, filled)}."""
        with self._lock:
            self.conn.send(("status",))
            return self.conn.recv()[1]

    def close(self) -> None:
        self.conn.close()


def guard_in_place_patches(torch: Any, is_shared: Any) -> Any:
    """Makes ComfyUI's in-place weight patching (`comfy.utils.copy_to_param`, used when a
    patch is applied with `inplace_update`) give the worker its own copy of a shared tensor
    before writing, instead of writing into memory other workers read. `is_shared(tensor)` tells
    the tensors mapped from the holder. Returns the previous function (to restore), or None
    without ComfyUI."""
    import sys

    utils = sys.modules.get("comfy.utils")
    if utils is None or not hasattr(utils, "copy_to_param"):
        return None
    original = utils.copy_to_param

    def copy_to_param(obj: Any, attr: str, value: Any) -> None:
        *path, last = attr.split(".")
        owner = obj
        for part in path:
            owner = getattr(owner, part)
        prev = getattr(owner, last)
        if is_shared(prev):
            prev.data = prev.data.clone()  # this worker's own copy, then the in-place write
        original(obj, attr, value)

    utils.copy_to_param = copy_to_param
    return original
