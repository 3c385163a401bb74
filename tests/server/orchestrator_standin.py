"""A stand-in for go-livepeer's orchestrator where the tests need one (it cannot run here): its
`POST /capability/register` checks the request exactly as go-livepeer parses it (byoc
`RegisterCapability` and core `ExternalCapabilities.RegisterCapability`, commit 176aa415):

- a method other than POST: 405;
- `Authorization` must equal the orchestrator secret byte for byte (no scheme): else 400
  "invalid authorization";
- the body is decoded with Go's `json.Unmarshal` into `ExternalCapability`: a JSON object;
  keys matched case-insensitively; unknown keys ignored; `name`, `description`, `url`,
  `currency`, `token` strings; `capacity` an int and `price_per_unit` / `price_scaling` int64
  (a JSON number with a fraction or an exponent, or a string, does not decode: 400);
- `price_scaling` 0 becomes 1; the currency must be "", "wei" or "eth" here (others need a price
  feed, which this stand-in has not);
- 200 with body "ok" and `Content-Type: application/json`; a capability of the same name is
  replaced.
"""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

_INT = re.compile(r"-?(0|[1-9][0-9]*)")
_FIELDS = {
    "name": str,
    "description": str,
    "url": str,
    "capacity": int,
    "price_per_unit": int,
    "price_scaling": int,
    "currency": str,
    "token": str,
}
INT64 = (-(2**63), 2**63 - 1)


class GoDecodeError(ValueError):
    pass


def decode_capability(raw: bytes) -> dict[str, Any]:
    """`json.Unmarshal(raw, &ExternalCapability{})` as Go does it, or GoDecodeError."""
    try:
        # keep numbers as text: Go decides int-ness from the literal, not from its value
        data = json.loads(raw, parse_int=lambda t: ("int", t), parse_float=lambda t: ("float", t))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GoDecodeError(f"invalid character: {exc}") from None
    if not isinstance(data, dict):
        raise GoDecodeError("json: cannot unmarshal into Go value of type core.ExternalCapability")
    out: dict[str, Any] = {"name": "", "description": "", "url": "", "capacity": 0}
    out |= {"price_per_unit": 0, "price_scaling": 0, "currency": "", "token": ""}
    for key, value in data.items():
        field = next((f for f in _FIELDS if f.lower() == key.lower()), None)
        if field is None or value is None:
            continue  # unknown keys are ignored; null leaves the zero value
        kind = _FIELDS[field]
        if kind is str:
            if not isinstance(value, str):
                raise GoDecodeError(f"json: cannot unmarshal into Go struct field .{field} of type string")
            out[field] = value
        else:
            if not (isinstance(value, tuple) and value[0] == "int" and _INT.fullmatch(value[1])):
                raise GoDecodeError(
                    f"json: cannot unmarshal {value!r} into Go struct field .{field} of type int"
                )
            number = int(value[1])
            if not INT64[0] <= number <= INT64[1]:
                raise GoDecodeError(f"json: number {number} overflows int64")
            out[field] = number
    if out["price_scaling"] == 0:
        out["price_scaling"] = 1
    if out["currency"].lower() not in ("", "wei", "eth"):
        raise GoDecodeError("PriceFeedWatcher is not initialized")
    return out


class OrchestratorStandIn:
    """`app` serves the register route; `requests` keeps every request as it came (method, headers,
    raw body) and `capabilities` what was registered, by name."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.requests: list[dict[str, Any]] = []
        self.capabilities: dict[str, dict[str, Any]] = {}
        self.app = web.Application()
        self.app.router.add_route("*", "/capability/register", self._register)

    async def _register(self, request: web.Request) -> web.Response:
        raw = await request.read()
        self.requests.append({"method": request.method, "headers": dict(request.headers), "body": raw})
        if request.method != "POST":
            return web.Response(status=405, text="Method not allowed\n")
        if request.headers.get("Authorization", "") != self.secret:
            return web.Response(status=400, text="invalid authorization\n")
        try:
            cap = decode_capability(raw)
        except GoDecodeError as exc:
            return web.Response(
                status=400, text=f"Error registering capability: {exc}", content_type="application/json"
            )
        self.capabilities[cap["name"]] = cap
        return web.Response(status=200, text="ok", content_type="application/json")
