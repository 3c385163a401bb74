"""The server's handle on one worker process: spawn, pipe, heartbeats, requests, stop.

The process is a `ProcessPoolExecutor(max_workers=1)` whose initializer loads the engine and whose
one task is the worker's loop (`workers.child.serve`); it is forked from the template or spawned
(workers/launch.py). The executor is used through its public API alone: its readiness comes over
our own pipe (`Started`, `Ready`), its process through the context we give it, and its death shows
as the pipe's EOF or as the long-running future's `BrokenProcessPool`. Every
message goes over the pipe, read with `loop.add_reader` (no thread hop per frame). Stop is: ask
(`Stop`), SIGTERM, SIGKILL, each with its timeout, then `executor.shutdown(wait=True)`, which
joins the executor's thread and process. This class never restarts anything; `workers.supervisor`
does that.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import Connection
from typing import Any

from comfystream.pipeline.backend import WorkerError, WorkerLost, WorkerStartError
from workers import child
from workers import messages as m
from workers.child_state import WorkerConfig, pinned_environment
from workers.launch import FORKSERVER, SPAWN, TEMPLATE, Inheritance, RecordingContext
from workers.shared_weights import memory_counts

logger = logging.getLogger(__name__)

# Every worker is spawned from this one long-lived thread: PR_SET_PDEATHSIG fires when the
# *thread* that forked the child exits, and spawning here also keeps fork+exec off the event loop.
_spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="worker-spawner")

# How long a stop waits for the executor to join a process that is already gone, and how long a
# stop of a process that has not said its pid yet waits for it.
REAP_TIMEOUT_S = 5.0
PID_TIMEOUT_S = 30.0


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """`values` in os.environ while a child is spawned, so it has them from exec on. Only the
    spawner thread calls this; the server itself never reads these variables."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


class _Signaller:
    """Signals the process, never another that took its pid after it was reaped: through a pidfd,
    which names that very process whoever reaps it (the executor reaps a spawned worker, the
    template a forked one). Without pidfds, by pid, and never after the executor may have reaped
    it: the executor marks the long-running future broken before it joins the process, and that
    marking, seen here under the lock, ends our right to signal."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.pid: int | None = None
        self.process: Any = None  # the multiprocessing Process, once started
        self._pidfd: int | None = None
        self.reaped = False
        self.exitcode: int | None = None
        self.sent: int | None = None  # the last signal sent

    def on_process(self, process: Any) -> None:
        """In the spawner thread, as the executor makes its process (not started yet)."""
        self.process = process

    def on_started(self) -> None:
        """In the spawner thread, right after the process started (alive: nobody has reaped it)."""
        with self._lock:
            if self.process is None or self.process.pid is None:
                return
            self.pid = self.process.pid
            with contextlib.suppress(AttributeError, OSError):
                self._pidfd = os.pidfd_open(self.pid)

    def on_loop_done(self, future: Future[Any]) -> None:
        """In the executor's thread, when the worker's loop task ends."""
        if future.cancelled() or not isinstance(future.exception(), BrokenProcessPool):
            return  # the loop raised, the process lives on: the stop that follows kills it
        with self._lock:
            self.reaped = True
            process = self.process
        # Its pipe to the executor closes a moment before its exit status is there to read.
        if process is not None:
            process.join(1.0)
            with self._lock:
                self.exitcode = process.exitcode

    def send(self, sig: int) -> None:
        with self._lock:
            if self._pidfd is not None:
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(self._pidfd, sig)
                    self.sent = sig
                return
            if self.pid is None or self.reaped:
                return
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
                self.sent = sig

    def close(self) -> None:
        """Once the process is reaped: nothing is signalled from here on, and the process's own
        descriptors (its sentinel) are closed now rather than whenever it is collected."""
        with self._lock:
            self.reaped = True
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
            process, self.process = self.process, None
        if process is not None:
            with contextlib.suppress(ValueError):  # still running: a stop that could not reap it
                process.close()


class WorkerProcess:
    """One spawned worker. Loop-bound: create and use it on one event loop."""

    _ids = itertools.count(1)

    def __init__(
        self,
        config: WorkerConfig,
        name: str = "worker",
        heartbeat_interval: float = 1.0,
        heartbeat_timeout: float = 20.0,
        on_release: Callable[[WorkerProcess], None] | None = None,
    ):
        self.config = config
        self.name = f"{name}#{next(self._ids)}"
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.state = "new"  # new -> starting -> ready -> (lost | stopping) -> stopped
        self.ready: m.Ready | None = None
        self.started_at = 0.0
        self.lost_reason: str | None = None
        # Set by the owner: the work's messages (FrameDone, Progress, JobEvent, ...) and the loss.
        self.on_message: Callable[[Any], None] | None = None
        self.on_lost: Callable[[WorkerProcess, str], None] | None = None
        # Set by the owner: seconds of silence allowed beyond `heartbeat_timeout` now (a worker
        # busy with one long frame answers no ping until it is done; the frame has its own deadline).
        self.heartbeat_grace: Callable[[], float] = lambda: 0.0
        self._on_release = on_release
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: Connection | None = None
        self._executor: ProcessPoolExecutor | None = None
        self._signaller = _Signaller()
        self._requests: dict[int, asyncio.Future[m.Reply]] = {}
        self._request_ids = itertools.count(1)
        self._started: asyncio.Future[None] | None = None  # the pid is known
        self._ready_future: asyncio.Future[m.Ready] | None = None
        self._gone: asyncio.Future[None] | None = None  # pipe EOF or the loop task's end
        self._stopped: asyncio.Future[None] | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._stop_task: asyncio.Task[None] | None = None  # referenced: the loop keeps tasks weakly
        self._ping_seq = 0
        self._ping_sent_at: float | None = None  # of the ping not answered yet
        self.last_heard = 0.0
        self.rtt_ms: float | None = None
        self.frames_processed = 0

    @property
    def pid(self) -> int | None:
        return self._signaller.pid

    @property
    def exitcode(self) -> int | None:
        """The exit code once it is gone (negative: the signal); None while unknown."""
        return self._signaller.exitcode

    @property
    def alive(self) -> bool:
        return self.state in ("starting", "ready")

    # -- start -------------------------------------------------------------------------------

    async def start(self, timeout: float = 120.0) -> m.Ready:
        if self.state != "new":
            raise WorkerError(f"{self.name} already started")
        self.state = "starting"
        loop = self._loop = asyncio.get_running_loop()
        parent_conn, child_conn = SPAWN.Pipe(duplex=True)
        self._conn = parent_conn
        self._started = loop.create_future()
        self._ready_future = loop.create_future()
        self._gone = loop.create_future()
        with _live_lock:
            _live.add(self)

        def spawn() -> ProcessPoolExecutor:
            pinned = pinned_environment(self.config)
            environ = {**os.environ, **pinned}
            # A GPU-pinned worker is spawned: see workers/launch.py.
            forked = self.config.gpu is None and TEMPLATE.fits(environ)
            executor = ProcessPoolExecutor(
                max_workers=1,
                mp_context=RecordingContext(FORKSERVER if forked else SPAWN, self._signaller.on_process),
                initializer=child.initialize,
                # A forked worker takes on what a spawned one inherits at exec.
                initargs=(self.config, child_conn, Inheritance.of_server(environ) if forked else None),
            )
            # Spawned, it has these from exec on; they are also the template's own when this
            # starts it (with the import-time part, its key, fixed by the first worker to fork).
            with _environment(pinned):
                future = executor.submit(child.serve)  # the process starts here
            self._signaller.on_started()
            future.add_done_callback(self._signaller.on_loop_done)
            future.add_done_callback(lambda _: self._call_soon(self._on_gone, "process exited"))
            return executor

        try:
            # The spawn goes on in its thread whatever happens here, and its executor is ours to
            # shut down: so it is waited for to the end, however often this start is cancelled
            # meanwhile (a cancel is raised once it is held).
            spawning = loop.run_in_executor(_spawner, spawn)
            try:
                cancelled = await _outlast(spawning)
            finally:
                child_conn.close()  # the child has its own copy; ours would hide its EOF
            try:
                self._executor = spawning.result()
            except Exception:
                if cancelled:  # the cancel is what the caller asked about
                    raise asyncio.CancelledError from None
                raise
            # Read the pipe from here on, even when this start was cancelled: the stop that
            # follows waits for the pid the worker says first.
            self.started_at = self.last_heard = time.monotonic()
            loop.add_reader(parent_conn.fileno(), self._on_readable)
            if cancelled:
                raise asyncio.CancelledError
            ready = await asyncio.wait_for(asyncio.shield(self._ready_future), timeout)
        except BaseException as exc:
            reason = "did not start in time" if isinstance(exc, TimeoutError) else f"start failed: {exc!r}"
            self._stop_task = loop.create_task(self.stop(graceful_timeout=0.0, reason=reason))
            await asyncio.shield(self._stop_task)
            if isinstance(exc, TimeoutError):
                raise WorkerStartError(f"{self.name} {reason} ({timeout:.0f} s)") from None
            raise
        self.ready = ready
        self.state = "ready"
        self._heartbeat_task = loop.create_task(self._heartbeat(), name=f"{self.name}-heartbeat")
        logger.debug(
            "%s ready in %.2f s (pid %s, %s)",
            self.name,
            time.monotonic() - self.started_at,
            self.pid,
            ready.device,
        )
        return ready

    def _call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """From another thread: `fn(*args)` on our loop (nothing when the loop is closed)."""
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(fn, *args)

    # -- messages ----------------------------------------------------------------------------

    def send(self, msg: Any) -> None:
        if self.state not in ("starting", "ready") or self._conn is None:
            raise WorkerLost(f"{self.name} is {self.state}")
        try:
            self._conn.send(msg)
        except (BrokenPipeError, ConnectionResetError, OSError) as exc:
            self._lost(f"pipe broken: {exc}")
            raise WorkerLost(f"{self.name}: {exc}") from None

    async def request(self, make: Callable[[int], Any], timeout: float | None = None) -> m.Reply:
        """Send `make(request_id)` and wait for its Reply."""
        if self._loop is None:
            raise WorkerLost(f"{self.name} is not started")
        request_id = next(self._request_ids)
        future = self._loop.create_future()
        self._requests[request_id] = future
        try:
            self.send(make(request_id))
            return await asyncio.wait_for(future, timeout)
        finally:
            self._requests.pop(request_id, None)

    def _on_readable(self) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            # One message per call: the loop calls again while the pipe stays readable.
            msg = conn.recv()
        except (EOFError, OSError):
            self._on_gone("process exited")
            return
        self._dispatch(msg)

    def _dispatch(self, msg: Any) -> None:
        self.last_heard = time.monotonic()
        if isinstance(msg, m.FrameDone):
            self.frames_processed += 1
        if isinstance(msg, m.Reply):
            future = self._requests.get(msg.request_id)
            if future is not None and not future.done():
                future.set_result(msg)
        elif isinstance(msg, m.Pong):
            self.rtt_ms = (time.monotonic() - msg.sent) * 1000.0
        elif isinstance(msg, m.Started):
            self._signaller.pid = msg.pid
            logger.debug("%s spawned (pid %s, gpu %s)", self.name, msg.pid, self.config.gpu)
            _resolve(self._started, None)
        elif isinstance(msg, m.Ready):
            _resolve(self._ready_future, msg)
        elif isinstance(msg, m.StartupFailed):
            _fail(self._ready_future, WorkerStartError(f"{self.name} failed to start:\n{msg.error}"))
        elif self.on_message is not None:
            self.on_message(msg)

    def _on_gone(self, how: str) -> None:
        """The pipe's EOF or the end of the loop task, whichever comes first."""
        if self._gone is None or self._gone.done():
            return
        self._gone.set_result(None)
        conn = self._conn
        if conn is not None and self._loop is not None:
            self._loop.remove_reader(conn.fileno())
            # What the worker said last (a StartupFailed, a final FrameDone) before calling it lost.
            with contextlib.suppress(EOFError, OSError):
                while conn.poll():
                    self._dispatch(conn.recv())
        _fail(self._started, WorkerLost(f"{self.name}: {how}"))
        self._lost(how)

    async def _heartbeat(self) -> None:
        """A ping when none is unanswered; lost when one stays unanswered `heartbeat_timeout`.
        Timed from the ping, not from the last message, so that a pause of the server's own
        loop is not taken for the worker's silence."""
        while self.state == "ready":
            await asyncio.sleep(self.heartbeat_interval)
            if self.state != "ready":
                return
            now = time.monotonic()
            if self._ping_sent_at is None or self.last_heard >= self._ping_sent_at:
                self._ping_seq += 1
                self._ping_sent_at = now
                try:
                    self.send(m.Ping(self._ping_seq, now))
                except WorkerLost:
                    return
            elif now - self._ping_sent_at > self.heartbeat_timeout + self.heartbeat_grace():
                silent = now - self._ping_sent_at
                logger.error("%s: no answer for %.1f s, killing it", self.name, silent)
                self.kill()
                self._lost(f"not answering for {silent:.1f} s")
                return

    # -- loss and stop -------------------------------------------------------------------------

    def _lost(self, reason: str) -> None:
        if self.state not in ("starting", "ready"):
            return
        logger.warning("%s lost: %s", self.name, reason)
        self.state = "lost"
        self.lost_reason = reason
        _fail(self._ready_future, WorkerLost(f"{self.name}: {reason}"))
        self._fail_requests(reason)
        if self.on_lost is not None:
            self.on_lost(self, reason)
        # The process may still be alive (hung, or its pipe broke): make sure it goes.
        assert self._loop is not None
        self._stop_task = self._loop.create_task(self.stop(graceful_timeout=0.0, reason=reason))

    def _fail_requests(self, reason: str) -> None:
        for future in self._requests.values():
            _fail(future, WorkerLost(f"{self.name}: {reason}"))

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self._signaller.send(sig)

    async def _wait_gone(self, timeout: float) -> bool:
        if self._gone is None or self._gone.done():
            return True
        with contextlib.suppress(TimeoutError):
            if timeout <= 0:
                await asyncio.sleep(0)  # what has already arrived is seen
                return self._gone.done()
            await asyncio.wait_for(asyncio.shield(self._gone), timeout)
        return self._gone.done()

    async def stop(
        self,
        graceful_timeout: float = 3.0,
        terminate_timeout: float = 2.0,
        kill_timeout: float = 5.0,
        reason: str = "stop",
    ) -> None:
        """Graceful (Stop message), then SIGTERM, then SIGKILL, each with its timeout; then reap.
        Cancelled half-way, it still kills the process before it returns."""
        if self._stopped is not None:
            await asyncio.shield(self._stopped)
            return
        if self.state == "new":
            self.state = "stopped"
            return
        graceful = self.state == "ready" and graceful_timeout > 0
        if self.state != "lost":
            self.lost_reason = reason
        self.state = "stopping"
        assert self._loop is not None
        self._stopped = self._loop.create_future()
        try:
            if self._heartbeat_task is not None and self._heartbeat_task is not asyncio.current_task():
                self._heartbeat_task.cancel()
            self._fail_requests(reason)
            if self.pid is None and self._started is not None and self._executor is not None:
                # It has not said its pid yet: it will within moments (or go).
                with contextlib.suppress(TimeoutError, WorkerError):
                    await asyncio.wait_for(asyncio.shield(self._started), PID_TIMEOUT_S)
            if graceful and self._conn is not None:
                with contextlib.suppress(OSError):
                    self._conn.send(m.Stop(reason))
            gone = self._executor is None or await self._wait_gone(graceful_timeout if graceful else 0.0)
            for sig, timeout in ((signal.SIGTERM, terminate_timeout), (signal.SIGKILL, kill_timeout)):
                if gone:
                    break
                if graceful or sig == signal.SIGKILL:
                    logger.warning("%s did not stop: sending %s", self.name, signal.Signals(sig).name)
                self.kill(sig)
                gone = await self._wait_gone(timeout)
            if not gone:
                logger.error("%s (pid %s) survived SIGKILL", self.name, self.pid)
            await self._reap()
        finally:
            if self._executor is not None:
                # Cancelled part-way: the process must not outlive its handle, and what holds it
                # (the executor's thread and pipes, the pidfd) is released once it is gone.
                self.kill()
                self._start_reaper()
            self._finish(reason)
            self._stopped.set_result(None)

    def _start_reaper(self, then: Callable[[], None] | None = None) -> threading.Thread | None:
        """`executor.shutdown(wait=True)` on a thread of its own (not the loop's default executor,
        which may be busy when many streams stop at once): it joins the executor's thread, which
        joins the process and closes its queues; then the process's own descriptors are closed,
        and `then` runs. The thread does all of it, so none of it is skipped when the stop that
        waits for it is cancelled."""
        executor, self._executor = self._executor, None
        if executor is None:
            return None
        signaller = self._signaller

        def shutdown() -> None:
            executor.shutdown(wait=True, cancel_futures=True)
            signaller.close()  # the executor joined its process: nothing left to signal
            if then is not None:
                then()

        reaper = threading.Thread(target=shutdown, name=f"{self.name}-reap", daemon=True)
        reaper.start()
        return reaper

    async def _reap(self) -> None:
        """Reap the process (it is gone) and wait for that, `REAP_TIMEOUT_S` at most."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(_resolve, done, None)

        reaper = self._start_reaper(then=wake)
        if reaper is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(done), REAP_TIMEOUT_S)
            # Its last act was to wake us: joining it is immediate, and no thread outlives the stop.
            reaper.join()
        except TimeoutError:
            logger.warning("%s: executor still running after %.0f s", self.name, REAP_TIMEOUT_S)
            self.kill()

    def _finish(self, reason: str) -> None:
        if self._conn is not None:
            if self._loop is not None:
                with contextlib.suppress(ValueError, OSError):
                    self._loop.remove_reader(self._conn.fileno())
            self._conn.close()
            self._conn = None
        if self.exitcode is None and self._signaller.sent is not None and self._signaller.reaped:
            self._signaller.exitcode = -self._signaller.sent
        self.state = "stopped"
        with _live_lock:
            _live.discard(self)
        if self._on_release is not None:
            release, self._on_release = self._on_release, None
            release(self)
        logger.debug("%s stopped (%s, exit code %s)", self.name, reason, self.exitcode)

    # -- status ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        ready = self.ready
        return {
            "name": self.name,
            "pid": self.pid,
            "state": self.state,
            "device": ready.device if ready else None,
            "gpu": self.config.gpu,
            "cuda_visible_devices": ready.cuda_visible_devices if ready else None,
            "cwd": ready.cwd if ready else self.config.cwd,
            "uptime_s": round(time.monotonic() - self.started_at, 3) if self.started_at else 0.0,
            "frames_processed": self.frames_processed,
            "heartbeat_rtt_ms": None if self.rtt_ms is None else round(self.rtt_ms, 3),
            "node_count": ready.node_count if ready else None,
            "load_errors": ready.load_errors if ready else {},
            # Resident bytes, `private` (its own heap) and `shared` (shared memory and files it
            # maps: weights shared with other workers among them); workers.shared_weights.
            "memory": memory_counts(self.pid) if self.pid is not None and self.state != "stopped" else None,
        }


async def _outlast(future: asyncio.Future[Any]) -> bool:
    """Wait until `future` is done, through any cancel of this wait (asyncio.wait cancels
    nothing): whether this wait was cancelled meanwhile."""
    cancelled = False
    while not future.done():
        try:
            await asyncio.wait({future})
        except asyncio.CancelledError:
            cancelled = True
    return cancelled


def _resolve(future: asyncio.Future[Any] | None, value: Any) -> None:
    if future is not None and not future.done():
        future.set_result(value)


def _fail(future: asyncio.Future[Any] | None, exc: BaseException) -> None:
    if future is not None and not future.done():
        future.set_exception(exc)
        future.exception()  # retrieved: nobody may be waiting for it any more


# -- no worker outlives the server --------------------------------------------------------------


_live: set[WorkerProcess] = set()  # not stopped yet; touched by the loop, read by the watcher
_live_lock = threading.Lock()


def _kill_live_workers_when_the_main_thread_ends() -> None:
    """At interpreter exit, concurrent.futures joins its executors' threads, and an executor whose
    task runs for ever (our loop) would keep it waiting for ever. The main thread counts as ended
    as soon as interpreter shutdown begins, before those joins; this watcher then kills what is
    left (a server that stopped its workers has nothing left)."""
    threading.main_thread().join()
    with _live_lock:
        procs = list(_live)
    for proc in procs:
        proc.kill()


threading.Thread(
    target=_kill_live_workers_when_the_main_thread_ends, name="worker-reaper", daemon=True
).start()
