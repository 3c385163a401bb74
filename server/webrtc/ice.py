"""ICE servers from `--ice-server URL` flags.

Accepted forms (one server per flag, repeatable):

- ``stun:host[:port]`` (port 3478 by default), ``stuns:host[:port]`` (5349)
- ``turn:user:pass@host[:port][?transport=udp|tcp]``
- ``turn:host[:port]?username=user&credential=pass[&transport=udp|tcp]``
- ``turns:...`` the same, over TLS (transport tcp)

User names and passwords may be percent-encoded (``%40`` for ``@``, ``%3A`` for ``:``).
With no server at all, peers use host candidates only: nothing public is contacted.
aiortc itself uses the first STUN and the first TURN server; the browser page gets them all.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlencode

from aiortc import RTCConfiguration, RTCIceServer
from aiortc.rtcicetransport import parse_stun_turn_uri

logger = logging.getLogger(__name__)

_SCHEMES = ("stun", "stuns", "turn", "turns")


class IceServerError(ValueError):
    """An `--ice-server` value that is not a usable STUN/TURN URL."""


@dataclass(frozen=True)
class IceServer:
    """One parsed ICE server: a URL without credentials, and the credentials apart."""

    url: str
    username: str | None = None
    credential: str | None = None

    @property
    def is_turn(self) -> bool:
        return self.url.startswith("turn")

    def to_rtc(self) -> RTCIceServer:
        return RTCIceServer(urls=[self.url], username=self.username, credential=self.credential)

    def to_browser(self) -> dict[str, object]:
        """The `RTCIceServer` dictionary a browser's `RTCPeerConnection` takes."""
        out: dict[str, object] = {"urls": [self.url]}
        if self.username is not None:
            out["username"] = self.username
            out["credential"] = self.credential or ""
        return out


def parse_ice_server(value: str) -> IceServer:
    """Parse one `--ice-server` value; raises `IceServerError` with a message naming the problem."""
    text = value.strip()
    scheme, sep, rest = text.partition(":")
    if not sep or scheme.lower() not in _SCHEMES:
        raise IceServerError(f"--ice-server {value!r}: expected a stun:, stuns:, turn: or turns: URL")
    scheme = scheme.lower()
    rest = rest.removeprefix("//")  # tolerate turn://host
    hostport, _, query_text = rest.partition("?")
    query = {k: v[-1] for k, v in parse_qs(query_text, keep_blank_values=True).items()}
    unknown = set(query) - {"transport", "username", "credential"}
    if unknown:
        raise IceServerError(f"--ice-server {value!r}: unknown query parameter(s) {sorted(unknown)}")

    username = query.get("username")
    credential = query.get("credential")
    if "@" in hostport:
        userinfo, _, hostport = hostport.rpartition("@")
        user, colon, password = userinfo.partition(":")
        if not colon:
            raise IceServerError(f"--ice-server {value!r}: credentials must be user:password@host")
        username, credential = unquote(user), unquote(password)

    if not hostport:
        raise IceServerError(f"--ice-server {value!r}: no host")
    transport = query.get("transport")
    if scheme.startswith("stun"):
        if username is not None or credential is not None or transport is not None:
            raise IceServerError(f"--ice-server {value!r}: a STUN URL takes no credentials or transport")
        url = f"{scheme}:{hostport}"
    else:
        if not username or credential is None:
            raise IceServerError(
                f"--ice-server {value!r}: a TURN server needs credentials "
                "(turn:user:pass@host:port or turn:host:port?username=..&credential=..)"
            )
        allowed = {"tcp"} if scheme == "turns" else {"udp", "tcp"}
        if transport is not None and transport not in allowed:
            raise IceServerError(
                f"--ice-server {value!r}: transport must be one of {sorted(allowed)} for {scheme}:"
            )
        url = f"{scheme}:{hostport}" + (f"?{urlencode({'transport': transport})}" if transport else "")
    try:
        parse_stun_turn_uri(url)
    except ValueError as exc:
        raise IceServerError(f"--ice-server {value!r}: {exc}") from None
    return IceServer(url=url, username=username, credential=credential)


def parse_ice_servers(values: list[str] | None) -> list[IceServer]:
    servers = [parse_ice_server(v) for v in values or []]
    if sum(not s.is_turn for s in servers) > 1 or sum(s.is_turn for s in servers) > 1:
        logger.warning("aiortc uses only the first STUN and the first TURN server; the page gets them all")
    return servers


def rtc_configuration(servers: list[IceServer]) -> RTCConfiguration:
    """Always an explicit list: aiortc's default (`None`) would contact a public STUN server."""
    return RTCConfiguration(iceServers=[s.to_rtc() for s in servers])


def use_loopback_when_no_network() -> None:
    """Let a machine with no network but loopback still answer peers on the same machine.

    aioice leaves 127.0.0.1 out of its host candidates; where it is the only IPv4 address that
    leaves none at all, and no connection can form. This adds it in exactly that case.
    """
    import aioice.ice

    current = aioice.ice.get_host_addresses
    if getattr(current, "adds_loopback", False):
        return

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        addresses = list(current(use_ipv4, use_ipv6))
        if use_ipv4 and not any(":" not in a for a in addresses):
            logger.info("no IPv4 address but loopback: offering 127.0.0.1 as the host candidate")
            addresses.append("127.0.0.1")
        return addresses

    get_host_addresses.adds_loopback = True  # type: ignore[attr-defined]
    aioice.ice.get_host_addresses = get_host_addresses
