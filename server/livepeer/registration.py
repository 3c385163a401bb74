"""Registration of this server as a capability with a Livepeer orchestrator (BYOC).

`POST {ORCH_URL}/capability/register` with `Authorization: <orchestrator secret>` (the raw secret,
no scheme) and a JSON body that go-livepeer decodes into `core.ExternalCapability`:
`name`, `description`, `url`, `capacity` (int), `price_per_unit` (int64), `price_scaling` (int64),
`currency`, `token`. 200 = registered; 400 = wrong secret or settings it cannot take.

The settings are read as pytrickle's `RegisterCapability` reads them (ORCH_URL, ORCH_SECRET,
CAPABILITY_NAME, CAPABILITY_DESCRIPTION, CAPABILITY_URL, CAPABILITY_CAPACITY,
CAPABILITY_PRICE_PER_UNIT, CAPABILITY_PRICE_SCALING), flags first. Registration runs in the
background and never holds up start-up: it is retried with backoff while the orchestrator is
down, re-done when the capacity changes, and refreshed now and then (an orchestrator forgets its
capabilities when it restarts, and drops one whose worker answered 401). Neither the secret nor
the token is ever logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

logger = logging.getLogger(__name__)

REGISTER_PATH = "/capability/register"
DEFAULT_NAME = "comfystream"
DEFAULT_DESCRIPTION = "ComfyUI workflows on live video (comfystream)"


@dataclass(frozen=True)
class CapabilitySettings:
    orch_url: str
    orch_secret: str = field(repr=False)
    name: str = DEFAULT_NAME
    description: str = DEFAULT_DESCRIPTION
    url: str = "http://localhost:8000"
    capacity: int | None = None  # None: the number of streams this server can run
    price_per_unit: int = 0
    price_scaling: int = 1
    currency: str | None = None  # go-livepeer: "" / "wei" / "eth", or a price-feed currency
    token: str | None = field(default=None, repr=False)  # what the orchestrator sends as Bearer

    def body(self, capacity: int) -> dict[str, Any]:
        """The JSON body go-livepeer's RegisterCapability decodes (ints stay ints: Go's decoder
        refuses 1.0 for an int field)."""
        body: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "url": self.url,
            "capacity": int(capacity),
            "price_per_unit": int(self.price_per_unit),
            "price_scaling": int(self.price_scaling),
        }
        if self.currency:
            body["currency"] = self.currency
        if self.token:
            body["token"] = self.token
        return body

    def describe(self, capacity: int) -> str:
        """For the log: everything but the secret and the token."""
        return (
            f"name={self.name} url={self.url} capacity={capacity} "
            f"price={self.price_per_unit}/{self.price_scaling} {self.currency or 'wei'} "
            f"token={'yes' if self.token else 'no'}"
        )


def _int(value: Any, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected an integer, got {value!r}") from None


def settings_from(
    *,
    orch_url: str | None = None,
    orch_secret: str | None = None,
    name: str | None = None,
    description: str | None = None,
    url: str | None = None,
    capacity: int | None = None,
    price_per_unit: int | None = None,
    price_scaling: int | None = None,
    currency: str | None = None,
    token: str | None = None,
    port: int = 8000,
    env: Mapping[str, str] | None = None,
) -> CapabilitySettings | None:
    """Flags first, then the environment (pytrickle's names), then defaults. None when there is no
    orchestrator URL and secret (no registration, as in pytrickle). Raises ValueError on a bad
    number or on a URL without its secret (or the reverse)."""
    env = os.environ if env is None else env
    orch_url = (orch_url or env.get("ORCH_URL", "")).strip().rstrip("/")
    orch_secret = orch_secret or env.get("ORCH_SECRET", "")
    if not orch_url and not orch_secret:
        return None
    if not orch_url or not orch_secret:
        raise ValueError(
            "registration needs both the orchestrator URL and its secret (--orch-url, --orch-secret)"
        )
    if not orch_url.startswith(("http://", "https://")):
        raise ValueError(f"--orch-url must be an http:// or https:// URL, got {orch_url!r}")
    cap = capacity if capacity is not None else _int(env.get("CAPABILITY_CAPACITY"), "CAPABILITY_CAPACITY")
    per_unit = (
        price_per_unit
        if price_per_unit is not None
        else _int(env.get("CAPABILITY_PRICE_PER_UNIT"), "CAPABILITY_PRICE_PER_UNIT")
    )
    scaling = (
        price_scaling
        if price_scaling is not None
        else _int(env.get("CAPABILITY_PRICE_SCALING"), "CAPABILITY_PRICE_SCALING")
    )
    if cap is not None and cap < 0:
        raise ValueError("the capability's capacity cannot be negative")
    if scaling is not None and scaling <= 0:
        raise ValueError("the price scaling must be a positive integer")
    return CapabilitySettings(
        orch_url=orch_url,
        orch_secret=orch_secret,
        name=name or env.get("CAPABILITY_NAME") or DEFAULT_NAME,
        description=description or env.get("CAPABILITY_DESCRIPTION") or DEFAULT_DESCRIPTION,
        url=(url or env.get("CAPABILITY_URL") or f"http://localhost:{port}").rstrip("/"),
        capacity=cap,
        price_per_unit=per_unit or 0,
        price_scaling=scaling or 1,
        currency=currency or env.get("CAPABILITY_PRICE_CURRENCY") or None,
        token=token,
    )


class RegistrationState:
    """When to (re-)register, as a pure state machine: the caller passes the clock.

    `want(capacity, now)` says what should be registered; `due(now)` says an attempt may go;
    `started` / `succeeded` / `failed` record it. Failures back off exponentially from
    `initial_delay_s` to `max_delay_s`; a refusal (400: wrong secret, bad settings) waits the
    longest delay at once. A success is refreshed after `refresh_s`; a change of capacity is
    registered as soon as no backoff holds it."""

    def __init__(self, initial_delay_s: float = 1.0, max_delay_s: float = 60.0, refresh_s: float = 300.0):
        self.initial_delay_s = initial_delay_s
        self.max_delay_s = max_delay_s
        self.refresh_s = refresh_s
        self.capacity: int | None = None  # what should be registered
        self.registered: int | None = None  # what the orchestrator last accepted
        self.failures = 0
        self.attempts = 0
        self.in_flight = False
        self.next_at = 0.0

    def want(self, capacity: int, now: float) -> None:
        if capacity == self.capacity:
            return
        self.capacity = capacity
        if self.failures == 0:
            self.next_at = min(self.next_at, now)  # a change goes at once, unless backing off

    def due(self, now: float) -> bool:
        return self.capacity is not None and not self.in_flight and now >= self.next_at

    def wait_s(self, now: float) -> float | None:
        """Seconds until the next attempt is due (0: now); None while nothing is wanted or one is
        in flight."""
        if self.capacity is None or self.in_flight:
            return None
        return max(0.0, self.next_at - now)

    def started(self) -> int:
        assert self.capacity is not None
        self.in_flight = True
        self.attempts += 1
        return self.capacity

    def succeeded(self, capacity: int, now: float) -> None:
        self.in_flight = False
        self.failures = 0
        self.registered = capacity
        # a capacity that changed while the request was out is registered next, at once
        self.next_at = now + self.refresh_s if capacity == self.capacity else now

    def failed(self, now: float, refused: bool = False) -> float:
        """Records a failed attempt; returns the delay before the next one."""
        self.in_flight = False
        self.failures += 1
        if refused:
            delay = self.max_delay_s
        else:
            delay = min(self.initial_delay_s * 2 ** (self.failures - 1), self.max_delay_s)
        self.next_at = now + delay
        return delay


class Registrar:
    """Keeps the capability registered while the server runs (a background task)."""

    def __init__(
        self,
        settings: CapabilitySettings,
        capacity: Callable[[], int],
        *,
        state: RegistrationState | None = None,
        poll_s: float = 1.0,
        timeout_s: float = 5.0,
    ) -> None:
        self.settings = settings
        self._capacity = capacity
        self.state = state or RegistrationState()
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def registered(self) -> bool:
        return self.state.registered is not None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="capability-registration")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _wanted_capacity(self) -> int:
        """The server's capacity, or the configured one (CAPABILITY_CAPACITY) while the server can
        take streams at all (0 from the server, e.g. in ERROR, wins)."""
        available = self._capacity()
        if self.settings.capacity is None or available == 0:
            return available
        return self.settings.capacity

    async def _run(self) -> None:
        while True:
            now = time.monotonic()
            try:
                self.state.want(self._wanted_capacity(), now)
            except Exception:
                logger.exception("capability registration: the capacity could not be read")
            if self.state.due(now):
                capacity = self.state.started()
                ok, refused, detail = await self._register(capacity)
                now = time.monotonic()
                if ok:
                    self.last_error = None
                    self.state.succeeded(capacity, now)
                    logger.info(
                        "capability registered with %s: %s",
                        self.settings.orch_url,
                        self.settings.describe(capacity),
                    )
                else:
                    self.last_error = detail
                    delay = self.state.failed(now, refused)
                    log = logger.error if refused else logger.warning
                    log(
                        "capability registration with %s failed (attempt %d): %s; next try in %.0f s",
                        self.settings.orch_url,
                        self.state.attempts,
                        detail,
                        delay,
                    )
            wait = self.state.wait_s(time.monotonic())
            await asyncio.sleep(self.poll_s if wait is None else min(self.poll_s, wait))

    async def _register(self, capacity: int) -> tuple[bool, bool, str]:
        """(registered, refused, what happened)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        url = f"{self.settings.orch_url}{REGISTER_PATH}"
        headers = {"Authorization": self.settings.orch_secret, "Content-Type": "application/json"}
        data = json.dumps(self.settings.body(capacity))
        try:
            # Orchestrators serve https with a self-signed certificate (pytrickle does the same).
            async with self._session.post(url, data=data, headers=headers, ssl=False) as resp:
                text = (await resp.text(errors="replace")).strip()[:200]
                if resp.status == 200:
                    return True, False, "ok"
                return False, resp.status == 400, f"HTTP {resp.status} {text}"
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return False, False, f"{type(exc).__name__}: {exc}"


# The app's Registrar, when the server registers with an orchestrator (--orch-url).
REGISTRAR_KEY: web.AppKey[Registrar] = web.AppKey("registrar", Registrar)
