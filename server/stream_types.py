"""What the stream manager and its streams say to each other and to the routes: the outcome of an
update and the refusals (mapped to 404 / 409 / 503 by the routes)."""

from __future__ import annotations

from dataclasses import dataclass


class StreamNotFound(LookupError):
    pass


class StreamExists(ValueError):
    pass


class AtCapacity(RuntimeError):
    pass


@dataclass
class UpdateOutcome:
    prompts_count: int
    parameters_updated: bool
    warmup_performed: bool
