"""How a worker process comes to be: forked from the template, or spawned afresh.

`import torch` is most of a worker's start: about 1.1 of 1.3 CPU-seconds on a CPU build, paid again
by every stream's worker, every restart after a crash and every warm-pool refill. The template is
multiprocessing's forkserver with torch and the worker's own modules imported once; a worker forks
from it and goes on from there (`workers.child.initialize`).

A fork of the template is what a spawn would have given only when everything read while those
modules were imported is the same. So the template is keyed by the import-time part of the
environment (`import_time`): a worker whose environment differs there is spawned afresh, as every
worker was before. CUDA reads CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER when it initialises, which
the template never does (it imports torch, and runs nothing on a device), so the worker sets those
itself before anything touches CUDA; PYTORCH_CUDA_ALLOC_CONF picks torch's allocator when its CUDA
library loads, at import, so it is part of the key. A forked worker is handed what a spawned one
inherits at exec, the whole environment and the server's stdout and stderr as they are now
(`Inheritance`), and takes it on before anything else.

Only workers that run on the CPU fork from the template; a worker pinned to a GPU is spawned, with
its pinning in its environment from exec on. A CUDA context made in the template before a fork
(one `torch.cuda.is_available()` at import in anything the template imports would make one) leaves
every forked worker unable to use CUDA at all, and nothing here has a GPU to prove the template
never makes one; a GPU worker's start is mostly CUDA's and its models' anyway.

There is one template per server process (the standard library keeps one forkserver per process);
it ends with the server (see `workers.lifecycle.leave_template`).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from multiprocessing import reduction
from multiprocessing.context import BaseContext
from typing import Any

# What the template imports once for all its workers: torch, and what a worker imports next
# (its loop and handlers, and the built-in nodes, whose registry each worker still builds itself);
# and its own exit hook, which removes its socket's file after a SIGKILLed server.
PRELOAD = ["torch", "numpy", "workers.child", "comfystream.nodes", "workers.template_exit"]

# Read by CUDA at its initialisation, not at import: a forked worker sets them itself.
LAZY_KEYS = frozenset({"CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER"})
# The families of variables that the interpreter, the C runtime and torch's libraries (OpenMP,
# MKL, OpenBLAS, CUDA, NCCL) read when they load.
IMPORT_TIME_PREFIXES = (
    "PYTHON",
    "LD_",
    "MALLOC_",
    "GLIBC_",
    "OMP_",
    "GOMP_",
    "KMP_",
    "MKL_",
    "OPENBLAS_",
    "NUMPY_",
    "TORCH",
    "PYTORCH_",
    "CUDA_",
    "CUBLAS",
    "CUDNN",
    "NCCL_",
    "NVIDIA_",
)

# Read by torch's CUDA libraries alone: a torch built without CUDA has none to read them.
CUDA_PREFIXES = ("PYTORCH_CUDA_", "CUDA_", "CUBLAS", "CUDNN", "NCCL_", "NVIDIA_")

SPAWN = multiprocessing.get_context("spawn")
FORKSERVER = multiprocessing.get_context("forkserver")
FORKSERVER.set_forkserver_preload(PRELOAD)  # read when the template starts, at the first fork


def import_time(environ: Mapping[str, str]) -> dict[str, str]:
    """The part of an environment that the template's imports may have read."""
    cuda = _torch_has_cuda()
    return {
        key: value
        for key, value in environ.items()
        if key.startswith(IMPORT_TIME_PREFIXES)
        and key not in LAZY_KEYS
        and (cuda or not key.startswith(CUDA_PREFIXES))
    }


def _torch_has_cuda() -> bool:
    """Whether the torch here is built with CUDA (or ROCm); True when this process has not
    imported torch (the server may not have), the cautious answer."""
    torch = sys.modules.get("torch")
    version = getattr(torch, "version", None)
    if version is None:
        return True
    return getattr(version, "cuda", None) is not None or getattr(version, "hip", None) is not None


class Template:
    """Which workers may fork from the template: those whose import-time environment is the one
    the template was started with (fixed by the first worker that forked from it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: dict[str, str] | None = None

    def fits(self, environ: Mapping[str, str]) -> bool:
        key = import_time(environ)
        with self._lock:
            if self._key is None:
                self._key = key
            return self._key == key


TEMPLATE = Template()


class RecordingContext:
    """A multiprocessing context that hands each process it makes to `on_process`: the executor
    keeps its processes to itself, and a stop needs the one it started (its pid at once, its exit
    code whoever reaped it)."""

    def __init__(self, base: BaseContext, on_process: Callable[[Any], None]):
        self._base = base
        self._on_process = on_process

    def __getattr__(self, name: str) -> Any:
        return getattr(self._base, name)

    def Process(self, *args: Any, **kwargs: Any) -> Any:  # noqa: N802 (multiprocessing's name)
        process = self._base.Process(*args, **kwargs)
        self._on_process(process)
        return process


class InheritedFd:
    """A file descriptor of the server's that the worker gets its own copy of, however it starts
    (pickled while multiprocessing starts the process: a spawn dups it into the exec, the template
    receives it over its socket)."""

    def __init__(self, fd: int):
        self.fd = fd

    def __reduce__(self) -> tuple[Any, ...]:
        return (_received, (reduction.DupFd(self.fd),))


def _received(dup: Any) -> int:
    return dup.detach()


@dataclass
class Inheritance:
    """What a spawned worker inherits from the server at exec, handed to one forked from the
    template: the environment it would have started with, and the server's stdout and stderr."""

    environ: dict[str, str]
    stdout: Any = None  # InheritedFd in the server, an fd in the worker; None: closed in the server
    stderr: Any = None

    @classmethod
    def of_server(cls, environ: dict[str, str]) -> Inheritance:
        return cls(environ, _inherited(1), _inherited(2))

    def take_on(self) -> None:
        """In the worker, first thing."""
        os.environ.clear()
        os.environ.update(self.environ)
        for fd, target in ((self.stdout, 1), (self.stderr, 2)):
            if isinstance(fd, int):
                os.dup2(fd, target)
                os.close(fd)


def _inherited(fd: int) -> InheritedFd | None:
    with contextlib.suppress(OSError):
        os.fstat(fd)
        return InheritedFd(fd)
    return None
