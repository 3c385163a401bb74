"""What `comfystream serve` settles before it serves: its listening socket (bound before any worker
spawns, so that a port in use is one clear line), its access log (quiet for the pages' polling),
and the defaults it derives from the machine."""

from __future__ import annotations

import errno
import logging
import os
import socket

from aiohttp.web_log import AccessLogger

# One-shot job workers by default: one per core this process may use, up to this many (each is a
# process with torch loaded; more than a few on one machine mostly compete for the same cores).
MAX_DEFAULT_JOB_WORKERS = 4
# Requests that only read are at DEBUG in the access log: the dashboard polls /streams every
# second and each stream's preview.jpg twice a second, the editor its queue; at INFO they were
# nine lines of ten. What changes state, and every error, stays at INFO.
_QUIET_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
RELAY_PREFIX = "/trickle/"


def default_job_workers() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT_JOB_WORKERS, cores))


def listening_sockets(host: str, port: int) -> list[socket.socket]:
    """Bound, listening TCP sockets for `run_app(sock=...)`, one per address `host` names (as
    asyncio's create_server binds them: `localhost` may be 127.0.0.1 and ::1). Raises OSError (port
    in use, an address this machine does not have, a name that does not resolve)."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    seen: set[tuple[int, tuple]] = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            # As aiohttp's own sites do: a restart binds at once despite connections in TIME_WAIT (a
            # port another process listens on is still refused).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and len(infos) > 1:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # its IPv4 twin binds apart
            sock.bind(address)
            sock.listen(128)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def describe_bind_error(host: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is already in use (another server?); choose another with --port"
    if exc.errno == errno.EACCES:
        return (
            f"not allowed to listen on port {port} on {host} (ports below 1024 need privileges); use --port"
        )
    if isinstance(exc, socket.gaierror):
        return f"cannot listen on {host}: the name does not resolve ({exc.strerror or exc}); check --host"
    if exc.errno == errno.EADDRNOTAVAIL:
        return (
            f"cannot listen on {host}: not an address of this machine ({exc.strerror or exc}); check --host"
        )
    return f"cannot listen on {host}:{port}: {exc.strerror or exc}"


class _AtDebug(logging.LoggerAdapter):
    """A logger whose `info` lines go out at DEBUG."""

    def log(self, level, msg, *args, **kwargs):
        super().log(logging.DEBUG if level == logging.INFO else level, msg, *args, **kwargs)


class QuietAccessLogger(AccessLogger):
    """aiohttp's access log with reads that succeed at DEBUG (see `_QUIET_METHODS`)."""

    def __init__(self, logger: logging.Logger, log_format: str = AccessLogger.LOG_FORMAT) -> None:
        super().__init__(logger, log_format)
        self._quiet = AccessLogger(_AtDebug(logger, {}), log_format)  # type: ignore[arg-type]

    def log(self, request, response, time: float) -> None:  # noqa: A002 (aiohttp's signature)
        quiet = request.method in _QUIET_METHODS and response.status < 400
        # The relay's own traffic (--relay): a POST per segment per channel, subscribers' 404s while a
        # channel is not there yet; only its failures say something.
        quiet = quiet or (request.path.startswith(RELAY_PREFIX) and response.status < 500)
        if quiet:
            self._quiet.log(request, response, time)
        elif self.logger.isEnabledFor(logging.INFO):
            super().log(request, response, time)
