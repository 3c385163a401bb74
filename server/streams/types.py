"""What the stream manager and its streams say to each other and to the routes: the outcome of an
update and the refusals (mapped to 404 / 409 / 503 by the routes)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


class StreamNotFound(LookupError):
    pass


class StreamExists(ValueError):
    pass


class AtCapacity(RuntimeError):
    pass


class NotNow(RuntimeError):
    """A request the stream's mode does not allow now (pause while its prompts are stopped, ...)."""


@dataclass
class UpdateOutcome:
    prompts_count: int
    parameters_updated: bool
    warmup_performed: bool

    def to_dict(self) -> dict[str, int | bool]:
        return asdict(self)
