"""ComfyUI's prompt queue: pending items in priority order, the running ones, and the history.

Priority is ComfyUI's: an item's `number` (lowest first; ties by prompt_id). Without one, the
server's counter gives the next number, negated with `front` so it goes before every numbered one.
"""

from __future__ import annotations

import copy
import heapq
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

# ComfyUI drops these from extra_data before an item goes into the history.
SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")


@dataclass
class QueueItem:
    number: float
    prompt_id: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)  # ComfyUI's outputs_to_execute
    cache_key: str | None = None  # server/jobs/output_cache.py; None: not cacheable

    @property
    def client_id(self) -> str | None:
        value = self.extra_data.get("client_id")
        return str(value) if value else None

    def to_comfy(self) -> list[Any]:
        """The item as ComfyUI lists it in /queue and /history: [number, id, prompt, extra_data, outputs]."""
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs]

    def _key(self) -> tuple[float, str]:
        return (self.number, self.prompt_id)

    def __lt__(self, other: QueueItem) -> bool:
        return self._key() < other._key()


class PromptQueue:
    def __init__(self, history_max: int = 10000):
        self.history_max = history_max
        self._pending: list[QueueItem] = []  # a heap
        self.running: dict[str, QueueItem] = {}
        self.history: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._counter = 0

    def next_number(self, front: bool = False) -> int:
        number = self._counter
        self._counter += 1
        return -number if front else number

    def knows(self, prompt_id: str) -> bool:
        """Pending or running (a finished id may be queued again, as in ComfyUI)."""
        return prompt_id in self.running or any(i.prompt_id == prompt_id for i in self._pending)

    def put(self, item: QueueItem) -> None:
        heapq.heappush(self._pending, item)

    def pop(self) -> QueueItem | None:
        """The next item by priority, now counted as running."""
        if not self._pending:
            return None
        item = heapq.heappop(self._pending)
        self.running[item.prompt_id] = item
        return item

    def start(self, item: QueueItem) -> None:
        """Count an item as running without it having waited in the queue (a cached prompt)."""
        self.running[item.prompt_id] = item

    def delete(self, prompt_id: str) -> QueueItem | None:
        for i, item in enumerate(self._pending):
            if item.prompt_id == prompt_id:
                self._pending.pop(i)
                heapq.heapify(self._pending)
                return item
        return None

    def wipe(self) -> list[QueueItem]:
        removed, self._pending = self._pending, []
        return removed

    def pending(self) -> list[QueueItem]:
        return sorted(self._pending)

    @property
    def remaining(self) -> int:
        return len(self._pending) + len(self.running)

    def finish(self, prompt_id: str, result: dict[str, Any]) -> dict[str, Any] | None:
        """Move a running item into the history with `result` (outputs, status, meta)."""
        item = self.running.pop(prompt_id, None)
        if item is None:
            return None
        while len(self.history) >= self.history_max:
            self.history.popitem(last=False)
        extra = {k: v for k, v in item.extra_data.items() if k not in SENSITIVE_EXTRA_DATA_KEYS}
        entry = {"prompt": [item.number, item.prompt_id, item.prompt, extra, item.outputs], "outputs": {}}
        entry.update(result)
        self.history.pop(prompt_id, None)  # a re-run goes to the end, as the newest
        self.history[prompt_id] = entry
        return entry

    def get_history(
        self, prompt_id: str | None = None, max_items: int | None = None, offset: int = -1
    ) -> dict[str, Any]:
        """ComfyUI's get_history: one id, or `max_items` from `offset` (negative: the newest ones)."""
        if prompt_id is not None:
            entry = self.history.get(prompt_id)
            return {prompt_id: copy.deepcopy(entry)} if entry is not None else {}
        if offset < 0 and max_items is not None:
            offset = len(self.history) - max_items
        out: dict[str, Any] = {}
        for i, (key, entry) in enumerate(self.history.items()):
            if i < offset:
                continue
            out[key] = entry
            if max_items is not None and len(out) >= max_items:
                break
        return out

    def wipe_history(self) -> None:
        self.history.clear()

    def delete_history(self, prompt_id: str) -> None:
        self.history.pop(prompt_id, None)
