"""SIGTERM / SIGINT for `comfystream serve`: the streams stop first, while the server still serves.

aiohttp's own signal handling closes the listening socket and the idle connections before the
app's shutdown hooks run. A stream whose channels are on this server's own relay (`--relay`) then
cannot reach them: its output could not be finished nor its channels deleted, and the stop waited
out its timeouts (16 s, with `Unclosed client session` errors). So the signal first stops every
stream (and with it its worker) while the relay still answers, and only then lets aiohttp shut the
rest down as usual. A second signal skips the wait."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from aiohttp.web_runner import GracefulExit

logger = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _exit() -> None:
    raise GracefulExit()  # a SystemExit: out of the loop's run, into run_app's orderly cleanup


def setup_signal_handling(app: web.Application, stop_streams: Callable[[], Awaitable[None]]) -> None:
    """Install the handlers with the app (run it with `web.run_app(..., handle_signals=False)`);
    `stop_streams` is what a first signal awaits before the server shuts down."""
    stopping: list[asyncio.Task[None]] = []

    async def stop_streams_then_exit() -> None:
        try:
            await stop_streams()
        except Exception:
            logger.exception("stopping the streams at shutdown failed")
        asyncio.get_running_loop().call_soon(_exit)

    def on_signal(sig: signal.Signals) -> None:
        if stopping:
            logger.warning("%s again: shutting down without waiting for the streams", sig.name)
            _exit()
        logger.info("%s: stopping the streams, then the server", sig.name)
        stopping.append(asyncio.get_running_loop().create_task(stop_streams_then_exit()))

    async def handlers(_app: web.Application) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        for sig in SIGNALS:
            loop.add_signal_handler(sig, on_signal, sig)
        yield
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)

    app.cleanup_ctx.append(handlers)
