"""One physical copy of a model's weights per machine, however many workers load it (CPU).

Each stream keeps its own worker process, and each worker loads its checkpoint its own way
(ComfyUI's loaders, unchanged). Right after a loader node has run, the worker hands the torch
modules in its output to `SharedWeights.share`: the first worker to load those weights writes
their bytes into one file of the run's directory in /dev/shm, and every worker (that first one
included) then points its parameters at a private mapping of that file (MAP_PRIVATE). Pages stay
shared until a worker writes one (a LoRA or model patch applied in place): the kernel then gives
that worker its own copy of just that page (copy-on-write), so a neighbour never sees the patch.
The worker's private copy is freed as its parameters move over.

Which file: the weights' fingerprint (every tensor's name, dtype and shape, and bytes sampled from
each), so that loaders, prompts and node ids do not matter, only the weights. A fingerprint may
collide with weights that differ outside the samples (a patch applied at load time): an adopting
worker compares every tensor with the file's before it takes it, and keeps its own copy of any
that differ (logged), so a mapping never changes what a worker computes.

Lifetime, with file locks (the kernel drops them when a process dies, even on SIGKILL):
- a worker holds a shared lock (flock LOCK_SH) on each weights file for as long as it maps it
  (the lock is on the mapping's own file description, so it goes with the last tensor);
- whoever can take the exclusive lock of a file (nobody maps it) may delete it: the worker after
  it lets a model go, the server after a worker exits (`WeightsDirectory.sweep`);
- the server owns one directory per run, beside an owner file it holds an exclusive lock on
  (`WeightsDirectory`); it deletes both after its last worker, and at start deletes every run
  whose owner lock it can take (a server that was killed), so a kill -9 and a restart leave
  nothing (and a kill -9 before any model was shared leaves nothing at all).
Publishing is serialised by `publish.lock` (two workers loading one checkpoint at once write it
once). Tensors are page-aligned in the file, so a write copies only the pages of what it touches.

On CUDA the weights live in device memory and mapping a file does not apply: see
workers/shared_weights_cuda.py.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import logging
import mmap
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

RUN_PREFIX = "comfystream-weights-"
OWNER_SUFFIX = ".owner"
PUBLISH_LOCK = "publish.lock"
WEIGHTS_SUFFIX = ".weights"
DEFAULT_ROOT = "/dev/shm"

ALIGN = 4096  # a page: a copy-on-write of one tensor never copies a neighbour's page
MIN_TENSOR_BYTES = 4096  # smaller tensors would share less than the page they take
SAMPLES_PER_TENSOR = 8
SAMPLE_BYTES = 64


def same_bytes(torch: Any, a: Any, b: Any) -> bool:
    """Whether two flat uint8 tensors of one length hold the same bytes (NaNs too, being bytes).
    Compared as the widest integers their length allows: torch.equal goes element by element, and
    on bytes it is 4-6x slower than on int64 (SD 1.5's 3.4 GB: about 2.5 s against 0.5 s, on the
    start of every worker that joins a shared copy). Both start at offset 0 of a storage or at a
    page (ALIGN) of the mapping, so any of these views is aligned."""
    n = a.numel()
    for dtype in (torch.int64, torch.int32, torch.int16):
        if n % dtype.itemsize == 0:
            return torch.equal(a.view(dtype), b.view(dtype))
    return torch.equal(a, b)


# -- the server's side: one directory per run -------------------------------------------------


def _try_lock(path: Path, how: int) -> int | None:
    """An fd of `path` holding lock `how` (non-blocking), or None when someone else holds one."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, how | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        raise
    return fd


def remove_unmapped(directory: str | Path) -> list[str]:
    """Deletes the weights files (and unfinished ones) of `directory` that no process maps:
    those whose exclusive lock can be taken. Returns their names."""
    removed = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return removed
    for name in names:
        # Weights files and unfinished ones only (the directory also holds its locks, and the
        # GPU holders' sockets and folders).
        if not (name.endswith(WEIGHTS_SUFFIX) or f"{WEIGHTS_SUFFIX}.tmp-" in name):
            continue
        path = Path(directory) / name
        try:
            fd = _try_lock(path, fcntl.LOCK_EX)
        except OSError as exc:  # never let a sweep fail a worker's stop
            logger.warning("shared weights: cannot sweep %s: %s", path, exc)
            continue
        if fd is None:
            continue
        try:
            # Still the file we locked (not one renamed into its place meanwhile)?
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                os.unlink(path)
                removed.append(name)
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.warning("shared weights: cannot remove %s: %s", path, exc)
        finally:
            os.close(fd)
    if removed:
        logger.info("shared weights: removed %s (no worker maps them any more)", ", ".join(removed))
    return removed


def sweep_stale_runs(root: str | Path) -> list[str]:
    """Deletes what the servers that are gone left under `root`: each run's owner file whose lock
    is free, and its directory; a run directory without its owner file (the owner file is made
    first and removed last, so its server is gone)."""
    removed = []
    try:
        entries = [e for e in os.scandir(root) if e.name.startswith(RUN_PREFIX)]
    except FileNotFoundError:
        return removed
    names = {e.name for e in entries}
    for entry in entries:
        if entry.name.endswith(OWNER_SUFFIX):
            fd = _try_lock(Path(entry.path), fcntl.LOCK_EX)
            if fd is None:
                continue  # a live server's
            try:
                shutil.rmtree(Path(root) / entry.name[: -len(OWNER_SUFFIX)], ignore_errors=True)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
            finally:
                os.close(fd)
            removed.append(entry.name)
        elif entry.is_dir() and entry.name + OWNER_SUFFIX not in names:
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.name)
    if removed:
        logger.info("shared weights: removed what servers that are gone left: %s", ", ".join(removed))
    return removed


def _tracker_name(path: Path) -> str | None:
    """The name multiprocessing's resource tracker unlinks `path` by (shm_unlink), when it is
    directly in /dev/shm."""
    return f"/{path.name}" if path.parent.resolve() == Path("/dev/shm") else None


class WeightsDirectory:
    """The server's directory of shared weights for this run. One per server process and root,
    whichever backend (streams, jobs) spawned the workers, so that they all map one copy: made
    with the first worker (`attach`), removed after the last one (`detach`).

    The run is `ROOT/comfystream-weights-PID-TOKEN.owner`, a file the server holds an exclusive
    lock on for its life, and the directory of the same name without the suffix, which the first
    worker to share weights creates. The owner file is registered with multiprocessing's resource
    tracker (the process that also unlinks the frame rings of a server killed with SIGKILL, once
    its workers are gone): a server killed before any model was shared leaves nothing at all; one
    killed with shared weights leaves their directory, which the next server's start removes."""

    _by_root: dict[str, WeightsDirectory] = {}

    def __init__(self, path: Path, owner: Path, owner_fd: int, root: str = ""):
        self.path = path
        self.owner = owner
        self.root = root
        self.workers = 0
        self._owner_fd: int | None = owner_fd
        # Device weights: one holder process per GPU (workers/shared_weights_cuda.py).
        self.holders: dict[str, Any] = {}
        self._holders_lock = threading.Lock()

    def holder(
        self, gpu: str | None, mode: str, holder_process: Callable[[str, str, str | None, str], Any]
    ) -> Any:
        """Blocking: the holder of `gpu`'s shared weights (`mode` "cuda"; "host": the same over
        host memory), started if there is none: `holder_process(address, mode, gpu, directory)`
        makes its handle (workers.shared_weights_cuda.HolderProcess, which uses this module's
        layout: it is the caller's to name)."""
        key = gpu if gpu is not None else "host"
        with self._holders_lock:
            holder = self.holders.get(key)
            if holder is None or not holder.process.is_alive():
                device_dir = self.path / f"device-{key}"
                device_dir.mkdir(parents=True, exist_ok=True)
                holder = holder_process(str(self.path / f"holder-{key}.sock"), mode, gpu, str(device_dir))
                holder.start()
                self.holders[key] = holder
                logger.info("weights holder for %s started (pid %s)", key, holder.process.pid)
            return holder

    @classmethod
    def create(cls, root: str | Path = DEFAULT_ROOT) -> WeightsDirectory:
        sweep_stale_runs(root)
        name = f"{RUN_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        owner = Path(root) / f"{name}{OWNER_SUFFIX}"
        fd = os.open(owner, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)  # held for the life of this process (the kernel drops it)
        tracked = _tracker_name(owner)
        if tracked is not None:
            from multiprocessing import resource_tracker

            resource_tracker.register(tracked, "shared_memory")
        logger.info("shared weights in %s", Path(root) / name)
        return cls(Path(root) / name, owner, fd, str(root))

    @classmethod
    def attach(cls, root: str | Path = DEFAULT_ROOT) -> WeightsDirectory:
        """For a worker about to start: this process's directory under `root` (made if none)."""
        key = str(root)
        directory = cls._by_root.get(key)
        if directory is None:
            directory = cls._by_root[key] = cls.create(key)
        directory.workers += 1
        return directory

    def detach(self) -> None:
        """A worker attached here is gone (its locks with it): what no worker maps any more goes,
        and the whole directory after the last worker."""
        self.workers -= 1
        if self.workers > 0:
            self.sweep()
            return
        if self._by_root.get(self.root) is self:
            del self._by_root[self.root]
        self.close()

    def sweep(self) -> list[str]:
        """After a worker exited: its files no other worker maps go (their memory with them)."""
        return remove_unmapped(self.path)

    def close(self) -> None:
        """Once every worker is gone."""
        if self._owner_fd is None:
            return
        with self._holders_lock:
            holders, self.holders = list(self.holders.values()), {}
        for holder in holders:
            try:
                holder.stop()
            except Exception:  # the directory must go all the same
                logger.exception("stopping the weights holder (pid %s) failed", holder.process.pid)
        shutil.rmtree(self.path, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.owner)
        tracked = _tracker_name(self.owner)
        if tracked is not None:
            from multiprocessing import resource_tracker

            resource_tracker.unregister(tracked, "shared_memory")
        os.close(self._owner_fd)
        self._owner_fd = None


# -- memory as the kernel counts it -----------------------------------------------------------


def available_memory() -> int:
    """Bytes the kernel could give a new allocation now (/proc/meminfo's MemAvailable; 0 unknown):
    a worker about to load its own copy of a model before it maps the shared one needs that much."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def memory_usage(pid: int | str = "self") -> dict[str, int] | None:
    """A process's memory from /proc/PID/smaps_rollup, in bytes: `rss`, `pss` (its share of every
    page it maps: a page mapped by 4 processes counts a quarter in each), `private` (pages only it
    maps) and `shared` (pages others map too). None when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    kib: dict[str, int] = {}
    for line in text.splitlines()[1:]:
        key, _, value = line.partition(":")
        parts = value.split()
        if parts and parts[0].isdigit():
            kib[key.strip()] = int(parts[0])
    return {
        "rss": kib.get("Rss", 0) * 1024,
        "pss": kib.get("Pss", 0) * 1024,
        "private": (kib.get("Private_Clean", 0) + kib.get("Private_Dirty", 0)) * 1024,
        "shared": (kib.get("Shared_Clean", 0) + kib.get("Shared_Dirty", 0)) * 1024,
    }


def memory_counts(pid: int | str = "self") -> dict[str, int] | None:
    """A process's resident memory from /proc/PID/status, in bytes: cheap at any size (the
    kernel keeps these counters; smaps_rollup walks every page: ~100 ms for a 4 GiB worker, too
    slow for a status on the server's loop). `private`: its anonymous pages (its heap, its own
    copies of pages it wrote); `shared`: pages of shared memory and files it maps (weights
    shared with other workers, frame rings, libraries); `rss` is the two together."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    kib: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
            kib[key] = int(value.split()[0])
    if "VmRSS" not in kib:
        return None  # a zombie
    return {
        "rss": kib["VmRSS"] * 1024,
        "private": kib.get("RssAnon", 0) * 1024,
        "shared": (kib.get("RssFile", 0) + kib.get("RssShmem", 0)) * 1024,
    }


def mapping_usage(pid: int | str, path_part: str) -> dict[str, int]:
    """Rss / Pss / private bytes of the mappings of `pid` whose file path contains `path_part`
    (from /proc/PID/smaps). `private`: pages no other process maps; `written`: pages this process
    wrote (its own copy-on-write copies, which smaps counts as `Anonymous`: a tmpfs file's own
    pages are all dirty, so Private_Dirty cannot tell them apart)."""
    totals = {"rss": 0, "pss": 0, "private": 0, "written": 0, "mappings": 0}
    inside = False
    try:
        lines = Path(f"/proc/{pid}/smaps").read_text().splitlines()
    except (FileNotFoundError, ProcessLookupError):
        return totals
    for line in lines:
        head = line.split(maxsplit=5)
        if head and "-" in head[0] and len(head) >= 5 and not line.endswith(" kB"):
            inside = len(head) == 6 and path_part in head[5]
            totals["mappings"] += int(inside)
            continue
        if not inside:
            continue
        key, _, value = line.partition(":")
        parts = value.split()
        if not parts or not parts[0].isdigit():
            continue
        n = int(parts[0]) * 1024
        if key == "Rss":
            totals["rss"] += n
        elif key == "Pss":
            totals["pss"] += n
        elif key in ("Private_Clean", "Private_Dirty"):
            totals["private"] += n
        elif key == "Anonymous":
            totals["written"] += n
    return totals


def trim_heap() -> None:
    """Give the C heap's free pages back (glibc): the private copies just let go are mostly
    chunks below malloc's mmap threshold, which free() keeps resident otherwise."""
    # The process's own symbols (libc among them): find_library would run ldconfig each time.
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)


# -- the worker's side --------------------------------------------------------------------------


@dataclass
class _Entry:
    name: str
    tensor: Any
    offset: int = 0


@dataclass
class ShareResult:
    """What one module's sharing did."""

    file: str
    published: bool  # this worker wrote the file (it was the first to load these weights)
    tensors: int  # tensors now mapped from the file
    shared_bytes: int
    private_tensors: int = 0  # tensors that differed from the file's: kept private
    private_bytes: int = 0


@dataclass
class SharingStats:
    files: set[str] = field(default_factory=set)
    modules: int = 0
    tensors: int = 0
    shared_bytes: int = 0
    published: int = 0
    private_tensors: int = 0
    private_bytes: int = 0
    unshared_loaders: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "files": len(self.files),
            "modules": self.modules,
            "tensors": self.tensors,
            "shared_bytes": self.shared_bytes,
            "published": self.published,
            "private_tensors": self.private_tensors,
            "private_bytes": self.private_bytes,
            "unshared_loaders": list(self.unshared_loaders),
        }


def find_modules(value: Any, torch: Any, depth: int = 4) -> list[Any]:
    """The top torch modules reachable from a node's output: in tuples, lists, dicts and the
    attributes of plain objects (ComfyUI's ModelPatcher.model, CLIP.cond_stage_model,
    VAE.first_stage_model ...), at most `depth` steps down."""
    found: dict[int, Any] = {}
    seen: set[int] = set()

    def walk(obj: Any, level: int) -> None:
        if level > depth or id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, torch.nn.Module):
            found.setdefault(id(obj), obj)
            return
        if isinstance(obj, (str, bytes, int, float, bool, type(None), torch.Tensor, type)):
            return
        if isinstance(obj, (list, tuple)):
            items: Iterable[Any] = obj
        elif isinstance(obj, dict):
            items = obj.values()
        elif hasattr(obj, "__dict__"):
            items = vars(obj).values()
        else:
            return
        for item in items:
            walk(item, level + 1)

    walk(value, 0)
    # A module inside another found module is shared with it (its parent's walk covers it).
    inner = {id(sub) for m in found.values() for sub in m.modules() if sub is not m}
    return [m for key, m in found.items() if key not in inner]


class SharedWeights:
    """A worker's side: moves the weights of loaded modules onto shared, copy-on-write mappings."""

    def __init__(self, directory: str | Path, torch: Any):
        self.directory = Path(directory)
        self.torch = torch
        self.stats = SharingStats()

    # -- the engine's hook ---------------------------------------------------------------------

    def share_output(self, label: str, output: Any, loader: bool) -> list[ShareResult]:
        """After a frame-independent node ran: share the CPU weights of the modules in its output.
        A loader whose output holds no module we can see loads its model its own way (kept in
        the node, or in a type of its own): it keeps a private copy, and we say so."""
        modules = find_modules(output, self.torch)
        results = []
        for module in modules:
            try:
                result = self.share_module(module)
            except OSError as exc:  # /dev/shm full, a directory removed under us: stay private
                logger.warning("%s: weights stay private to this worker (%s)", label, exc)
                continue
            if result is not None:
                results.append(result)
        if results:
            trim_heap()
            logger.info(
                "%s: %d MiB of weights shared (%s)",
                label,
                sum(r.shared_bytes for r in results) >> 20,
                ", ".join(f"{r.file}: {'published' if r.published else 'mapped'}" for r in results),
            )
        elif loader and not modules:
            # (A loader whose modules are all shared already, a LoRA loader's clone of a shared
            # model, has nothing new to share and nothing to say.)
            self.stats.unshared_loaders.append(label)
            logger.warning(
                "%s loads its model its own way (no CPU weights in its output): they stay private "
                "to this worker",
                label,
            )
        return results

    # -- one module ----------------------------------------------------------------------------

    def _entries(self, module: Any, device_type: str = "cpu") -> list[_Entry]:
        """The module's tensors on `device_type` that can move to a mapping: dense, contiguous,
        each the whole of its own storage (a view into another tensor, or one already mapped,
        stays as it is)."""
        torch = self.torch
        entries: list[_Entry] = []
        seen: set[int] = set()
        named = list(module.named_parameters(remove_duplicate=True)) + list(
            module.named_buffers(remove_duplicate=True)
        )
        for name, t in named:
            if id(t) in seen or t is None:
                continue
            seen.add(id(t))
            if (
                t.device.type != device_type
                or t.layout != torch.strided
                or t.is_quantized
                or not t.is_contiguous()
                or t.storage_offset() != 0
            ):
                continue
            nbytes = t.numel() * t.element_size()
            if nbytes < MIN_TENSOR_BYTES or t.untyped_storage().nbytes() != nbytes:
                continue
            entries.append(_Entry(name, t))
        return entries

    def _fingerprint(self, entries: list[_Entry], device_type: str = "cpu") -> tuple[str, int]:
        """The weights' key and the file's size (laying each entry out at its offset)."""
        torch = self.torch
        h = hashlib.sha256(f"comfystream-weights-v1\0{device_type}\0".encode())
        offset = 0
        for e in entries:
            t = e.tensor
            nbytes = t.numel() * t.element_size()
            e.offset = offset
            offset += -(-nbytes // ALIGN) * ALIGN
            h.update(f"{e.name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
            flat = t.detach().reshape(-1).view(torch.uint8)
            last = nbytes - SAMPLE_BYTES
            starts = torch.tensor([last * i // (SAMPLES_PER_TENSOR - 1) for i in range(SAMPLES_PER_TENSOR)])
            idx = (starts[:, None] + torch.arange(SAMPLE_BYTES)[None, :]).reshape(-1).to(flat.device)
            h.update(flat[idx].cpu().numpy().tobytes())
        return h.hexdigest()[:40], offset

    def share_module(self, module: Any) -> ShareResult | None:
        torch = self.torch
        entries = self._entries(module)
        if not entries:
            return None
        key, size = self._fingerprint(entries)
        name = key + WEIGHTS_SUFFIX
        path = self.directory / name
        # The server names the run's directory; the first worker with weights to share makes it.
        self.directory.mkdir(exist_ok=True)
        with self._publish_lock():
            mm, published = self._open_existing(path, size), False
            if mm is None:
                mm, published = self._publish(path, entries, size), True
        with torch.inference_mode():
            base = torch.frombuffer(mm, dtype=torch.uint8)
            del mm  # the tensors keep the mapping (and with it the file's shared lock) alive
            result = ShareResult(name, published, 0, 0)
            for e in entries:
                t = e.tensor
                nbytes = t.numel() * t.element_size()
                raw = base[e.offset : e.offset + nbytes]
                # The publisher copied these very bytes; any other worker compares them all (as
                # bytes: NaNs too): a tensor that differs (patched at load time) keeps its copy.
                if not published and not same_bytes(torch, raw, t.detach().reshape(-1).view(torch.uint8)):
                    result.private_tensors += 1
                    result.private_bytes += nbytes
                    continue
                # In place, so that every holder of this tensor object (the module, ComfyUI's
                # model patcher) sees the mapped storage; the private storage is freed here.
                t.data = raw.view(t.dtype).view(t.shape)
                result.tensors += 1
                result.shared_bytes += nbytes
        if result.private_tensors:
            logger.warning(
                "%d tensors (%d MiB) differ from the shared copy of the same weights (%s): kept "
                "private to this worker",
                result.private_tensors,
                result.private_bytes >> 20,
                name,
            )
        s = self.stats
        s.files.add(name)
        s.modules += 1
        s.tensors += result.tensors
        s.shared_bytes += result.shared_bytes
        s.published += int(published)
        s.private_tensors += result.private_tensors
        s.private_bytes += result.private_bytes
        return result

    @contextlib.contextmanager
    def _publish_lock(self) -> Iterator[None]:
        fd = os.open(self.directory / PUBLISH_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    @staticmethod
    def _map(fd: int, size: int) -> mmap.mmap:
        # MAP_PRIVATE: reads share the file's pages, a write gets a private page (copy-on-write).
        # The mapping keeps its own duplicate of `fd`, so the shared lock lasts as long as it.
        # No MAP_POPULATE: on a writable private mapping it copies every page up front (measured
        # on SD 1.5: every page private, and sharing 1.8 -> 9 s).
        return mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)

    def _open_existing(self, path: Path, size: int) -> mmap.mmap | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            st = os.fstat(fd)
            if st.st_nlink == 0:
                return None  # deleted between our open and our lock: publish it again
            if st.st_size != size:
                raise OSError(f"{path.name} has {st.st_size} bytes, expected {size}")
            return self._map(fd, size)
        finally:
            os.close(fd)

    def _publish(self, path: Path, entries: list[_Entry], size: int) -> mmap.mmap:
        torch = self.torch
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            # Locked before anyone can see it: a sweep never takes a file being written or mapped.
            fcntl.flock(fd, fcntl.LOCK_SH)
            os.ftruncate(fd, size)
            for e in entries:
                flat = e.tensor.detach().reshape(-1).view(torch.uint8).numpy()
                view, done = memoryview(flat), 0
                while done < len(view):
                    done += os.pwrite(fd, view[done : done + (64 << 20)], e.offset + done)
            os.rename(tmp, path)
            return self._map(fd, size)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        finally:
            os.close(fd)

    def sweep(self) -> list[str]:
        """After this worker let models go: the files nobody maps any more are deleted."""
        return remove_unmapped(self.directory)

    def after_run(self, cache: Any) -> None:
        """After a prompt ran: nothing to do on the CPU (loaders' outputs were shared as they
        came); the device's kind shares what the run moved onto the device."""

    def status(self) -> dict[str, Any]:
        return {"kind": "file", **self.stats.as_dict()}
