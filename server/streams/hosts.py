"""The hosts a stream's URLs may name (`--allow-stream-host`).

A stream start makes the server connect out: it subscribes to `subscribe_url` and `control_url`
and publishes to `publish_url` and `events_url`. Without a list any host and port goes (the
gateway decides); with one, a start naming another host is refused (400) before anything
connects. With `--relay` the server's own relay is always allowed."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from aiohttp import web

from server.config import ServerConfig
from server.http import errors
from server.http.errors import ValidationErrorItem

URL_FIELDS = ("subscribe_url", "publish_url", "control_url", "events_url", "data_url")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _authority(url: str) -> tuple[str, int] | None:
    try:
        parts = urlsplit(url)
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme, 0)
    except ValueError:
        return None
    return ((parts.hostname or "").lower(), port) if parts.hostname else None


def allowed(entry: str, host: str, port: int) -> bool:
    """`entry` is `host` (any port) or `host:port`."""
    name, _, entry_port = entry.strip().lower().rpartition(":")
    if not name or not entry_port.isdigit():  # no port given (an IPv6 literal needs brackets and a port)
        return entry.strip().lower().strip("[]") == host
    return name.strip("[]") == host and int(entry_port) == port


def refused_urls(config: ServerConfig, urls: dict[str, str | None], own_host: str) -> list[str]:
    """The fields of `urls` that name a host outside `config.allowed_stream_hosts` (none when the
    list is empty). `own_host`: the Host this request came to, for the server's own relay."""
    entries: list[str] = list(config.allowed_stream_hosts)
    if not entries:
        return []
    if config.relay:
        entries += [own_host, f"{config.host}:{config.port}"]
    bad = []
    for field, url in urls.items():
        if url is None:
            continue
        where = _authority(url)
        if where is None or not any(allowed(e, *where) for e in entries):
            bad.append(field)
    return bad


def check_stream_urls(
    request: web.Request, config: ServerConfig, body: object, fields: Iterable[str] = URL_FIELDS
) -> None:
    """Raises the 400 for a start whose URLs name a host that is not allowed."""
    urls = {f: getattr(body, f, None) for f in fields}
    bad = refused_urls(config, urls, request.host)
    if bad:
        raise errors.error_response(
            web.HTTPBadRequest,
            "Stream URL not allowed",
            f"{', '.join(bad)}: the host is not one this server may connect to (--allow-stream-host)",
            [
                ValidationErrorItem(
                    error_type="url_not_allowed",
                    message="host not allowed",
                    input_name=f,
                    received_value=urls[f],
                )
                for f in bad
            ],
        )
