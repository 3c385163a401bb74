"""A supervised worker: one live process at a time, replaced when it is lost or when asked.

`Supervisor` is the one lifecycle for both kinds of work: it holds the current process, brings a
new one up (from the warm pool when one is ready, else spawned), retires the old one, and
restarts after a loss under the one `RestartPolicy` (backoff, give-up, healthy-after). Every
process it obtains is its own from that moment: a stop in any order of events (during a start, a
restart, a recovery) cancels the bring-up in progress, which stops the process it was bringing up,
and then stops the current process and every retiring one before it returns.

Two kinds of work subclass it: `workers.stream_worker.StreamWorker` (a stream's channels) and
`workers.job_worker.JobWorker` (one-shot jobs).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable
from typing import Any

from comfystream.pipeline.backend import WorkerError, WorkerLost, WorkerSpec
from workers.deadlines import Deadlines
from workers.process import WorkerProcess
from workers.settings import ProcessSource

logger = logging.getLogger(__name__)


class RestartPolicy:
    """When to try again after a lost process, and when to give up. Pure: the clock is given.

    The first attempt after a healthy run is immediate (a warm worker takes over at once); each
    failed attempt in a row doubles the delay from `backoff_min_s` up to `backoff_max_s`; after
    `max_failures` in a row it gives up (None: never, the default for the server's workers: a
    crash loop caused by something outside, a full disk or a driver, ends when its cause does, and
    the stream recovers on its own). A process that ran `healthy_after_s` without trouble clears
    the count."""

    def __init__(
        self,
        backoff_min_s: float,
        backoff_max_s: float,
        max_failures: int | None,
        healthy_after_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.max_failures = max_failures
        self.healthy_after_s = healthy_after_s
        self.clock = clock
        self.failures = 0  # failed or short-lived processes in a row
        self._ready_since: float | None = None

    def ready(self) -> None:
        self._ready_since = self.clock()

    def lost(self) -> None:
        """The running process was lost: a short run counts as a failure."""
        since, self._ready_since = self._ready_since, None
        if since is not None and self.clock() - since >= self.healthy_after_s:
            self.failures = 0
        elif since is not None:
            self.failures += 1

    def attempt_failed(self) -> None:
        self.failures += 1

    def next_delay(self) -> float | None:
        """Seconds to wait before the next attempt; None: give up."""
        if self.max_failures is not None and self.failures >= self.max_failures:
            return None
        if self.failures == 0:
            return 0.0
        return min(self.backoff_min_s * 2 ** (self.failures - 1), self.backoff_max_s)


class Supervisor:
    """One supervised process. Subclasses add the work: `_attach` (make a new process ready for
    it), `_process_lost` (what was inside is lost), `_on_message`, `_on_ready`, `_emit`."""

    start_warm = True  # the first process may come from the warm pool (restarts always may)

    def __init__(self, backend: ProcessSource, spec: WorkerSpec, name: str):
        self.backend = backend
        self.spec = spec
        self.name = name
        self.proc: WorkerProcess | None = None
        self._state = "new"  # new, starting, ready, restarting, failed, stopping, stopped
        self.restarts = 0
        self.last_error: str | None = None
        s = backend.settings
        self.policy = RestartPolicy(s.backoff_min_s, s.backoff_max_s, s.max_failures)
        self._task: asyncio.Task[None] | None = None  # the one bring-up in progress
        self._retiring: set[asyncio.Task[None]] = set()  # stops of processes taken out of service
        self._last_proc: WorkerProcess | None = None  # the newest process, for its status once gone
        self._ready_event = asyncio.Event()
        self._stop_done: asyncio.Future[None] | None = None
        self._deadlines = Deadlines()
        self._deadline_timer: asyncio.TimerHandle | None = None

    @property
    def state(self) -> str:
        return self._state

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def failures(self) -> int:
        return self.policy.failures

    @property
    def last_exit_code(self) -> int | None:
        """The exit code of the last of this worker's processes to end (once it is reaped)."""
        last = self._last_proc
        if last is not None and last.state == "stopped":
            return last.exitcode
        return self._ended_exitcode

    _ended_exitcode: int | None = None

    # -- hooks ---------------------------------------------------------------------------------

    async def _attach(self, proc: WorkerProcess) -> None:
        """Make the new process ready for the work (raises: the attempt failed)."""

    def _process_lost(self, reason: str) -> None:
        """The work inside the current process is lost (called once per process)."""

    def _on_message(self, msg: Any) -> None:
        logger.warning("%s: unexpected message %r", self.name, type(msg).__name__)

    def _on_ready(self) -> None:
        """A process is up and attached."""

    def _emit(self, event_type: str, data: dict[str, Any]) -> None:
        """A lifecycle event (worker_lost, worker_restarting, worker_restarted, worker_failed)."""

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """The first process (raises when it cannot come up)."""
        if self._state != "new":
            return
        self._state = "starting"
        await self._run_bring_up("start", requested=True)

    async def restart(self, reason: str = "requested") -> None:
        """A fresh process now (no backoff). Raises when the new one cannot come up."""
        if self._state in ("stopping", "stopped"):
            raise WorkerLost(f"{self.name} is {self._state}")
        self._take_out_of_service(f"restart: {reason}", graceful=True)
        self._state = "restarting"
        self._emit("worker_restarting", {"reason": reason, "attempt": 1, "delay_s": 0.0})
        await self._run_bring_up(reason, requested=True)

    async def stop(self) -> None:
        """Stop every process this worker holds or is bringing up; returns once all are gone."""
        if self._stop_done is not None:
            await asyncio.shield(self._stop_done)
            return
        self._stop_done = asyncio.get_running_loop().create_future()
        self._state = "stopping"
        self._ready_event.set()  # wake waiters; they see the state
        try:
            await self._cancel_bring_up()
            self._take_out_of_service("worker stopped", graceful=True)
            await self._retired()
        finally:
            if self._deadline_timer is not None:
                self._deadline_timer.cancel()
                self._deadline_timer = None
            self._state = "stopped"
            self.backend.forget(self)
            self._stop_done.set_result(None)

    # -- internals -----------------------------------------------------------------------------

    async def _cancel_bring_up(self) -> None:
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            # asyncio.wait, not `await task`: a cancel of this wait must not cancel the bring-up a
            # second time (its cleanup, a process's stop, runs under the first) nor be swallowed.
            await asyncio.wait({task})

    async def _retired(self) -> None:
        """Until every process taken out of service is stopped. Waited on, never cancelled from
        here (asyncio.gather would cancel them with its waiter): a stop cut short leaves its
        process's executor unreaped."""
        while self._retiring:
            await asyncio.wait(set(self._retiring))

    async def _run_bring_up(self, reason: str, requested: bool) -> None:
        """Run the bring-up as this worker's one task and wait for it. The task outlives a cancel
        of this wait (a stop cancels the task itself, which stops what it brought up)."""
        await self._cancel_bring_up()
        task = asyncio.get_running_loop().create_task(
            self._bring_up(reason, requested), name=f"{self.name}-up"
        )
        self._task = task
        task.add_done_callback(self._bring_up_done)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done() and self._state in ("stopping", "stopped"):
                raise WorkerLost(f"{self.name} was stopped") from None
            raise

    async def _bring_up(self, reason: str, requested: bool) -> None:
        """Obtain and attach a process; after a loss, retry under the policy until it gives up. A
        requested start or restart raises its failure instead of retrying."""
        while True:
            delay = 0.0 if requested else self.policy.next_delay()
            if delay is None:
                self._state = "failed"
                self._ready_event.set()
                self._emit("worker_failed", {"reason": self.last_error, "attempts": self.policy.failures})
                logger.error("%s: giving up after %d failed attempts", self.name, self.policy.failures)
                return
            if not requested:
                self._emit(
                    "worker_restarting",
                    {"reason": reason, "attempt": self.policy.failures + 1, "delay_s": delay},
                )
                await asyncio.sleep(delay)
            proc: WorkerProcess | None = None
            try:
                warm = self.start_warm or self._state != "starting"
                proc = await self.backend.obtain_process(self.spec, self.name, warm=warm)
                self._adopt(proc)
                # The old process is gone before the new one touches what they share (the rings).
                await self._retired()
                await self._attach(proc)
            except asyncio.CancelledError:
                if proc is not None:
                    self._take_out_of_service("cancelled", graceful=False, proc=proc)
                raise
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                logger.warning(
                    "%s: %s failed: %s",
                    self.name,
                    "start" if self._state == "starting" else "restart",
                    self.last_error,
                )
                if proc is not None:
                    self._take_out_of_service(self.last_error, graceful=False, proc=proc)
                if requested:
                    self._state = "failed"
                    self._ready_event.set()
                    if self.restarts or reason != "start":
                        self._emit("worker_failed", {"reason": self.last_error})
                    raise
                self.policy.attempt_failed()
                reason = self.last_error
                continue
            first = self._state == "starting"
            self._state = "ready"
            self.policy.ready()
            self._ready_event.set()
            if not first:
                self.restarts += 1
                logger.info("%s back (pid %s, %s)", self.name, proc.pid, reason)
                self._emit(
                    "worker_restarted",
                    {
                        "reason": reason,
                        "restarts": self.restarts,
                        "pid": proc.pid,
                        "device": proc.status()["device"],
                    },
                )
            self._on_ready()
            return

    def _adopt(self, proc: WorkerProcess) -> None:
        self.proc = self._last_proc = proc
        proc.on_message = self._on_message
        proc.on_lost = self._on_proc_lost

    def _take_out_of_service(self, reason: str, graceful: bool, proc: WorkerProcess | None = None) -> None:
        """Stop `proc` (default: the current one) in the background, owned by this worker; late
        messages from it go nowhere. Its work is reported lost."""
        if proc is None or proc is self.proc:
            proc, self.proc = self.proc, None
            self._ready_event.clear()
            self._deadlines.clear_all()  # what it was given to do is over
            self._process_lost(reason)
        if proc is None:
            return
        proc.on_message = None
        proc.on_lost = None
        timeout = self.backend.settings.graceful_stop_s if graceful else 0.0
        task = asyncio.get_running_loop().create_task(proc.stop(graceful_timeout=timeout, reason=reason))
        self._retiring.add(task)

        def retired(done: asyncio.Task[None]) -> None:
            self._retiring.discard(done)
            self._ended_exitcode = proc.exitcode

        task.add_done_callback(retired)

    def _on_proc_lost(self, proc: WorkerProcess, reason: str) -> None:
        if proc is not self.proc or self._state in ("stopping", "stopped"):
            return
        self.policy.lost()
        self._replace(reason)

    def _replace(self, reason: str) -> None:
        """Take the current process out of service (killed: it is lost or stuck) and bring the
        next one up in the background, a warm one when the pool has it."""
        proc = self.proc
        if proc is None:
            return
        proc.kill()
        self.last_error = reason
        self._take_out_of_service(reason, graceful=False)
        self._state = "restarting"
        self._emit("worker_lost", {"reason": reason, "pid": proc.pid})
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._bring_up(reason, requested=False), name=f"{self.name}-recover"
            )
            self._task.add_done_callback(self._bring_up_done)

    # -- deadlines: work that must end in time, or its process is killed and replaced ------------

    def _watch(self, key: Hashable, after_s: float) -> None:
        self._deadlines.set(key, after_s)
        if self._deadline_timer is None:
            self._arm()

    def _arm(self) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        due = self._deadlines.next_in()
        if due is not None:
            self._deadline_timer = asyncio.get_running_loop().call_later(due, self._deadline_passed)

    def _deadline_passed(self) -> None:
        self._deadline_timer = None
        for key in self._deadlines.overdue():
            if self._state == "ready" and self.proc is not None:
                self._overdue(key)
        self._arm()

    def _overdue(self, key: Hashable) -> None:
        """`key` ran past its deadline (the subclass knows what it was)."""

    def _bring_up_done(self, task: asyncio.Task[None]) -> None:
        if self._task is task:
            self._task = None
        if not task.cancelled():
            task.exception()  # retrieved: a requested bring-up's failure is its caller's to see
        if (
            not task.cancelled()
            and task.exception() is not None
            and not isinstance(task.exception(), WorkerError)
        ):
            logger.debug("%s: bring-up ended with %r", self.name, task.exception())

    async def _wait_ready(self) -> WorkerProcess:
        if self._state in ("restarting", "starting"):
            try:
                await asyncio.wait_for(self._ready_event.wait(), self.backend.settings.startup_timeout_s)
            except TimeoutError:
                raise WorkerLost(f"{self.name} did not come back") from None
        if self._state != "ready" or self.proc is None:
            raise WorkerLost(
                f"{self.name} is {self._state}" + (f": {self.last_error}" if self.last_error else "")
            )
        return self.proc

    def status(self) -> dict[str, Any]:
        base = self.proc.status() if self.proc is not None else {"pid": None, "device": None}
        if self.proc is None and self._last_proc is not None:
            base["device"] = self._last_proc.status()["device"]
        base.update(
            {
                "worker": self.name,
                "last_exit_code": self.last_exit_code,
                "state": self.state,
                "restarts": self.restarts,
                "last_error": self.last_error,
            }
        )
        return base
