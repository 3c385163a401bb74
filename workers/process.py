"""The server's handle on one worker process: spawn, pipe, heartbeats, requests, stop.

The process is a `ProcessPoolExecutor(max_workers=1, mp_context=spawn)` whose initializer
loads the engine and whose one task is the frame loop. The executor is only the vehicle: every
message goes over our own pipe, read with `loop.add_reader` (no thread hop per frame). This
class never restarts anything; `workers.supervisor` does that.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

from workers import child
from workers import messages as m

logger = logging.getLogger(__name__)

_SPAWN = multiprocessing.get_context("spawn")

# Every worker is spawned from this one long-lived thread: PR_SET_PDEATHSIG fires when the
# *thread* that forked the child exits, and spawning here also keeps fork+exec off the event loop.
_spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="worker-spawner")

# How long a stop waits for the executor's manager thread to reap a process that is already gone.
REAP_TIMEOUT_S = 5.0

_live: set[WorkerProcess] = set()
_live_lock = threading.Lock()


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """`values` in os.environ while a child is spawned, so it has them from exec on.

    Only the spawner thread calls this, so spawns never see each other's values; the server
    itself never reads these variables (it does not use CUDA).
    """
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


class WorkerError(RuntimeError):
    """The worker could not do what was asked (it is gone, or it failed to start)."""


class WorkerLost(WorkerError):
    """The worker process died, stopped answering, or was stopped."""


class WorkerStartError(WorkerError):
    """The worker failed while loading the engine or its custom nodes."""


class RequestFailed(WorkerError):
    """A request the worker answered with an error that is not a prompt error."""


class WorkerProcess:
    """One spawned worker. Loop-bound: create and use it on one event loop."""

    _ids = itertools.count(1)
    # What the process runs after the initializer: a module-level function (spawn pickles it by
    # name). A subclass may run another loop on the same pipe (workers/job_worker.py).
    loop_target: Callable[[], Any] = staticmethod(child.run_frame_loop)

    def __init__(
        self,
        config: child.WorkerConfig,
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
        # Set by the owner: frames, warmup progress, and loss go to it.
        self.on_frame: Callable[[m.FrameDone], None] | None = None
        self.on_progress: Callable[[m.Progress], None] | None = None
        self.on_lost: Callable[[WorkerProcess, str], None] | None = None
        self._on_release = on_release
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: Connection | None = None
        self._executor: ProcessPoolExecutor | None = None
        self._loop_future: Future[Any] | None = None
        self._proc: Any = None
        self._requests: dict[int, asyncio.Future[m.Reply]] = {}
        self._request_ids = itertools.count(1)
        self._ready_future: asyncio.Future[m.Ready] | None = None
        self._exited: asyncio.Future[None] | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._stop_task: asyncio.Task[None] | None = None  # referenced: the loop keeps tasks weakly
        self._ping_seq = 0
        self.last_heard = 0.0
        self.rtt_ms: float | None = None
        self.frames_processed = 0
        self.exitcode: int | None = None
        self._pid: int | None = None
        self._manager: Any = None  # the executor's manager thread
        self._result_queue: Any = None  # and the queue it reads (closed once it is done)
        self._released = False

    # -- start -------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def alive(self) -> bool:
        return self.state in ("starting", "ready")

    async def start(self, timeout: float = 120.0) -> m.Ready:
        if self.state != "new":
            raise WorkerError(f"{self.name} already started")
        self.state = "starting"
        loop = self._loop = asyncio.get_running_loop()
        parent_conn, child_conn = _SPAWN.Pipe(duplex=True)
        self._conn = parent_conn
        self._ready_future = loop.create_future()
        self._exited = loop.create_future()
        with _live_lock:
            _live.add(self)

        def spawn() -> tuple[ProcessPoolExecutor, Future[Any], Any]:
            executor = ProcessPoolExecutor(
                max_workers=1,
                mp_context=_SPAWN,
                initializer=child.initialize,
                initargs=(self.config, child_conn),
            )
            with _environment(child.pinned_environment(self.config)):
                future = executor.submit(self.loop_target)
            # With spawn, submit() starts the process synchronously; the executor keeps it here.
            (proc,) = executor._processes.values()
            # Kept for the join at stop: shutdown(wait=False) forgets it.
            self._manager = executor._executor_manager_thread
            self._result_queue = executor._result_queue
            return executor, future, proc

        spawning = loop.run_in_executor(_spawner, spawn)
        try:
            self._executor, self._loop_future, self._proc = await asyncio.shield(spawning)
        except asyncio.CancelledError:
            # The spawn goes on in its thread whatever we do: let it finish, then take it down.
            try:
                self._executor, self._loop_future, self._proc = await spawning
            except Exception:
                pass
            child_conn.close()
            if self._proc is None:
                self._finish("cancelled")
            else:
                self._pid = self._proc.pid
                loop.add_reader(self._proc.sentinel, self._on_exit)
                await self.stop(graceful_timeout=0.0, reason="cancelled while starting")
            raise
        except BaseException:
            child_conn.close()
            self._finish("spawn failed")
            raise
        child_conn.close()  # the child has its own copy now; ours would hide its EOF
        self._pid = self._proc.pid
        self.started_at = time.monotonic()
        self.last_heard = time.monotonic()
        loop.add_reader(parent_conn.fileno(), self._on_readable)
        loop.add_reader(self._proc.sentinel, self._on_exit)
        logger.info("%s spawned (pid %s, gpu %s)", self.name, self._proc.pid, self.config.gpu)
        try:
            ready = await asyncio.wait_for(asyncio.shield(self._ready_future), timeout)
        except BaseException as exc:
            reason = "did not start in time" if isinstance(exc, TimeoutError) else f"start failed: {exc}"
            await self.stop(graceful_timeout=0.0, reason=reason)
            if isinstance(exc, TimeoutError):
                raise WorkerStartError(f"{self.name} {reason} ({timeout:.0f} s)") from None
            raise
        self.ready = ready
        self.state = "ready"
        self._heartbeat_task = loop.create_task(self._heartbeat(), name=f"{self.name}-heartbeat")
        logger.info("%s ready in %.2f s on %s", self.name, time.monotonic() - self.started_at, ready.device)
        return ready

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
            # One message per call: the loop calls again while the pipe stays readable. (Looping
            # on conn.poll() would build a selector per check.)
            self._dispatch(conn.recv())
        except (EOFError, OSError) as exc:
            if self._loop is not None:
                self._loop.remove_reader(conn.fileno())
            self._lost(f"pipe closed ({type(exc).__name__})")

    def _dispatch(self, msg: Any) -> None:
        self.last_heard = time.monotonic()
        if isinstance(msg, m.FrameDone):
            self.frames_processed += 1
            if self.on_frame is not None:
                self.on_frame(msg)
        elif isinstance(msg, m.Reply):
            future = self._requests.get(msg.request_id)
            if future is not None and not future.done():
                future.set_result(msg)
        elif isinstance(msg, m.Pong):
            self.rtt_ms = (time.monotonic() - msg.sent) * 1000.0
        elif isinstance(msg, m.Progress):
            if self.on_progress is not None:
                self.on_progress(msg)
        elif isinstance(msg, m.Ready):
            if self._ready_future is not None and not self._ready_future.done():
                self._ready_future.set_result(msg)
        elif isinstance(msg, m.StartupFailed):
            if self._ready_future is not None and not self._ready_future.done():
                self._ready_future.set_exception(
                    WorkerStartError(f"{self.name} failed to start:\n{msg.error}")
                )
        else:
            logger.warning("%s: unexpected message %r", self.name, type(msg).__name__)

    def _on_exit(self) -> None:
        if self._loop is not None and self._proc is not None:
            self._loop.remove_reader(self._proc.sentinel)
        if self._exited is not None and not self._exited.done():
            self._exited.set_result(None)
        # Read what the worker said last (a StartupFailed, a final FrameDone) before calling it lost.
        conn = self._conn
        if conn is not None:
            try:
                while conn.poll():
                    self._dispatch(conn.recv())
            except (EOFError, OSError):
                pass
            if self._loop is not None:
                self._loop.remove_reader(conn.fileno())
        if self.state in ("starting", "ready"):
            # The exit code may not be collectable yet (the executor's thread reaps it too); the
            # stop that follows logs it.
            self._lost("process exited")

    async def _heartbeat(self) -> None:
        while self.state == "ready":
            await asyncio.sleep(self.heartbeat_interval)
            if self.state != "ready":
                return
            silent = time.monotonic() - self.last_heard
            if silent > self.heartbeat_timeout:
                logger.error("%s: no answer for %.1f s, killing it", self.name, silent)
                self.kill()
                self._lost(f"not answering for {silent:.1f} s")
                return
            self._ping_seq += 1
            try:
                self.send(m.Ping(self._ping_seq, time.monotonic()))
            except WorkerLost:
                return

    # -- loss and stop -------------------------------------------------------------------------

    def _lost(self, reason: str) -> None:
        if self.state not in ("starting", "ready"):
            return
        logger.warning("%s lost: %s", self.name, reason)
        self.state = "lost"
        self.lost_reason = reason
        if self._ready_future is not None and not self._ready_future.done():
            self._ready_future.set_exception(WorkerLost(f"{self.name}: {reason}"))
        self._fail_requests(reason)
        if self.on_lost is not None:
            self.on_lost(self, reason)
        # The process may still be alive (hung, or its pipe broke): make sure it goes.
        assert self._loop is not None
        self._stop_task = self._loop.create_task(self.stop(graceful_timeout=0.0, reason=reason))

    def _fail_requests(self, reason: str) -> None:
        for future in self._requests.values():
            if not future.done():
                future.set_exception(WorkerLost(f"{self.name}: {reason}"))

    def kill(self) -> None:
        try:
            if self._proc is not None and self._proc.exitcode is None:
                self._proc.kill()
        except (OSError, ValueError):
            pass

    async def _wait_exit(self, timeout: float) -> bool:
        if self._exited is None or self._exited.done():
            return True
        try:
            await asyncio.wait_for(asyncio.shield(self._exited), timeout)
            return True
        except TimeoutError:
            return self._proc is None or self._proc.exitcode is not None

    async def stop(
        self,
        graceful_timeout: float = 3.0,
        terminate_timeout: float = 2.0,
        kill_timeout: float = 5.0,
        reason: str = "stop",
    ) -> None:
        """Graceful (Stop message), then SIGTERM, then SIGKILL, each with its timeout; then reap."""
        if self.state in ("stopping", "stopped"):
            if self._stopped is not None:
                await asyncio.shield(self._stopped)
            return
        graceful = self.state == "ready" and graceful_timeout > 0
        if self.state in ("new",):
            self.state = "stopped"
            return
        if self.state != "lost":
            self.lost_reason = reason
        self.state = "stopping"
        assert self._loop is not None
        self._stopped = self._loop.create_future()
        try:
            if self._heartbeat_task is not None and self._heartbeat_task is not asyncio.current_task():
                self._heartbeat_task.cancel()
            self._fail_requests(reason)
            if self._executor is not None:
                # Lets the executor send its own exit sentinel once the frame loop returns. (Not
                # wait=True here: that blocks until the process is gone, which may need our kill.)
                self._executor.shutdown(wait=False, cancel_futures=True)
            if graceful and self._conn is not None:
                try:
                    self._conn.send(m.Stop(reason))
                except OSError:
                    pass
            exited = await self._wait_exit(graceful_timeout) if graceful else self._proc is None
            if not exited and self._proc is not None and self._proc.exitcode is None:
                if graceful:
                    logger.warning("%s did not stop in %.1f s: terminating", self.name, graceful_timeout)
                self._proc.terminate()
                exited = await self._wait_exit(terminate_timeout)
                if not exited:
                    logger.warning("%s ignored SIGTERM for %.1f s: killing", self.name, terminate_timeout)
                    self._proc.kill()
                    if not await self._wait_exit(kill_timeout):
                        logger.error("%s (pid %s) survived SIGKILL", self.name, self.pid)
            await self._reap()
        finally:
            if self._proc is not None:
                # Cancelled part-way (a server shutting down with a deadline): the process
                # must not outlive its handle, so it goes now, without waiting.
                self.kill()
            self._finish(reason)
            self._stopped.set_result(None)

    _stopped: asyncio.Future[None] | None = None

    async def _reap(self) -> None:
        """Wait for the executor's manager thread, then read the exit code and close.

        The process is gone (or killed) by now. The manager thread reaps it in every path (its
        orderly exit, or `terminate_broken` -> `join_executor_internals` -> `p.join()`), so it
        alone joins the process: a second joiner races its waitpid (and reads no exit code), and
        closing the Process before the manager is done makes its join raise "process object is
        closed". Waited on a thread of its own, not the loop's default executor, which may be
        busy with other blocking work when many streams stop at once.
        """
        loop = self._loop
        assert loop is not None
        if self._conn is not None:
            loop.remove_reader(self._conn.fileno())
        if self._proc is not None:
            loop.remove_reader(self._proc.sentinel)
        proc, manager = self._proc, self._manager
        result_queue = self._result_queue
        if proc is None:
            return
        reaped: asyncio.Future[int | None] = loop.create_future()

        def report(exitcode: int | None) -> None:
            if not reaped.done():
                reaped.set_result(exitcode)

        def join() -> None:
            if manager is not None:
                manager.join(REAP_TIMEOUT_S)
            else:
                proc.join(REAP_TIMEOUT_S)
            exitcode = proc.exitcode
            if manager is not None and manager.is_alive():
                logger.warning("%s: executor thread still running after %.0f s", self.name, REAP_TIMEOUT_S)
            elif exitcode is not None:
                # Nothing else holds them now.
                if result_queue is not None:
                    result_queue.close()
                proc.close()
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(report, exitcode)

        threading.Thread(target=join, name=f"{self.name}-reap", daemon=True).start()
        self.exitcode = await asyncio.shield(reaped)
        if self.exitcode is not None:
            self._proc = None  # closed: its pid and exit code are kept

    def _finish(self, reason: str) -> None:
        if self._conn is not None:
            if self._loop is not None:
                try:
                    self._loop.remove_reader(self._conn.fileno())
                except (ValueError, OSError):
                    pass
            self._conn.close()
            self._conn = None
        self._executor = None
        self._loop_future = None
        self.state = "stopped"
        with _live_lock:
            _live.discard(self)
        if not self._released:
            self._released = True
            if self._on_release is not None:
                self._on_release(self)
        logger.info("%s stopped (%s, exit code %s)", self.name, reason, self.exitcode)

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
        }


def kill_all_workers() -> None:
    """Last resort at interpreter exit: no worker may outlive the server, and a running frame
    loop would otherwise keep concurrent.futures' exit hook waiting for it forever."""
    with _live_lock:
        procs = [w._proc for w in _live if w._proc is not None]
    for proc in procs:
        try:
            if proc.exitcode is None:
                proc.kill()
        except (OSError, ValueError):
            pass


# threading's exit hooks run last-registered first, so this runs before concurrent.futures'
# own hook (which joins the executors' manager threads). A private hook, but the one that fits.
threading._register_atexit(kill_all_workers)  # type: ignore[attr-defined]
