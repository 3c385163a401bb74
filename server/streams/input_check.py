"""Is a stream's input channel there? Asked before a start is answered, and while the stream waits
for its first segment, with the trickle protocol's `GET {channel}/next` (go-livepeer's trickle
server and our relay both answer it at once: 200 when the channel exists, 404 when not), so that
a wrong `subscribe_url` is a clear error in seconds instead of a healthy-looking stream that
quietly ends 30 s later."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Literal

import aiohttp

logger = logging.getLogger(__name__)

# How long a stream waits for an input channel the relay does not have is the server's
# `input_wait_s` (10 s): a publisher may start just after the stream (our relay creates a channel
# on its first segment), but go-livepeer's orchestrator creates the channels before it starts a
# stream, so a 404 for longer is a wrong URL.
PROBE_TIMEOUT_S = 3.0
POLL_S = 0.5

Verdict = Literal["found", "missing", "unreachable", "unknown"]


@dataclass(frozen=True)
class InputCheck:
    verdict: Verdict
    detail: str = ""


async def check_input(url: str, timeout: float = PROBE_TIMEOUT_S) -> InputCheck:
    """What the relay says about the channel at `url` (a subscribe_url)."""
    probe = f"{url.rstrip('/')}/next"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http:
            async with http.get(probe, allow_redirects=False) as resp:
                if resp.status == 200:
                    return InputCheck("found")
                if resp.status == 404:
                    return InputCheck("missing", f"GET {probe} answered 404: the relay has no such channel")
                return InputCheck("unknown", f"GET {probe} answered {resp.status}")
    except aiohttp.ClientConnectorError as exc:
        errno = getattr(exc.os_error, "errno", None)
        # asyncio words a refused connection "Connect call failed ('127.0.0.1', 9)": the errno's
        # own words say what happened.
        reason = os.strerror(errno) if isinstance(errno, int) and errno > 0 else str(exc.os_error or exc)
        return InputCheck("unreachable", f"cannot connect to {exc.host}:{exc.port}: {reason}")
    except TimeoutError:
        return InputCheck("unknown", f"GET {probe}: no answer within {timeout:g} s")
    except aiohttp.ClientError as exc:
        return InputCheck("unknown", f"GET {probe}: {exc}")


def not_found_message(url: str, waited_s: float) -> str:
    return (
        f"input channel not found: {url} does not exist on its relay (404 for {waited_s:g} s). "
        "Check subscribe_url (a typo in the channel name?); the channel must exist, or its "
        f"publisher start, within {waited_s:g} s of the stream"
    )
