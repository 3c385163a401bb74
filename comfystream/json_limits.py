"""JSON from untrusted peers, parsed with a nesting limit.

`json.loads` recurses once per level and raises RecursionError past about 1,000 levels; pydantic,
`copy.deepcopy` and our own walks of a prompt recurse too, and fail far earlier (pydantic's
serializer at a few hundred). A request body nested deeper than any real prompt is therefore refused
where it is parsed, as bad JSON, before anything walks it."""

from __future__ import annotations

import json
from typing import Any

# A ComfyUI prompt nests about 5 deep (prompt / node / inputs / value / link); 64 leaves room for
# any real widget value and stays far below every recursive consumer's own limit.
MAX_JSON_DEPTH = 64


class JsonTooDeep(json.JSONDecodeError):
    """Nesting beyond MAX_JSON_DEPTH. A JSONDecodeError, so every bad-JSON path answers it."""

    def __init__(self, depth_limit: int):
        super().__init__(f"JSON nested deeper than {depth_limit} levels", "", 0)


def loads(raw: str | bytes | bytearray, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """`json.loads(raw)`, or JsonTooDeep when arrays and objects nest deeper than `max_depth`."""
    # Fewer brackets than the limit cannot nest past it: most bodies skip the walk entirely.
    brackets = ("[", "{") if isinstance(raw, str) else (b"[", b"{")
    opening = sum(raw.count(b) for b in brackets)  # type: ignore[arg-type]
    try:
        value = json.loads(raw)
    except RecursionError:
        raise JsonTooDeep(max_depth) from None
    if opening > max_depth:
        check_depth(value, max_depth)
    return value


def check_depth(value: Any, max_depth: int = MAX_JSON_DEPTH) -> None:
    """JsonTooDeep if lists and dicts in `value` nest deeper than `max_depth` (iterative: no
    recursion, whatever the depth)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth > max_depth:
            raise JsonTooDeep(max_depth)
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list | tuple))


def describe_error(exc: ValueError) -> str:
    """A JSON syntax error as a person finds it in an editor: the line and column, then what is
    wrong ("line 3, column 1: Illegal trailing comma before end of object")."""
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
    if isinstance(exc, UnicodeDecodeError):
        return f"not valid JSON: not UTF-8 text (byte {exc.start})"
    return f"not valid JSON: {exc}"
