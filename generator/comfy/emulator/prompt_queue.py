"""ComfyUI's PromptQueue (execution.py): a heap of pending prompts ordered by number, the one
running, and the history of finished ones. Every change announces itself (`on_change`, the
`status` broadcast), exactly where ComfyUI calls queue_updated()."""

from __future__ import annotations

import asyncio
import copy
import heapq
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MAXIMUM_HISTORY_SIZE = 10000
SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")


@dataclass(order=True)
class QueueItem:
    number: float
    prompt_id: str
    prompt: dict[str, Any] = field(compare=False)
    extra_data: dict[str, Any] = field(compare=False)
    outputs: list[str] = field(compare=False)
    sensitive: dict[str, Any] = field(compare=False, default_factory=dict)

    def as_list(self) -> list[Any]:
        """What /queue and /history show: [number, prompt_id, prompt, extra_data, outputs]."""
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs]

    @property
    def client_id(self) -> str | None:
        return self.extra_data.get("client_id")


class PromptQueue:
    def __init__(self, on_change: Callable[[], None]) -> None:
        self.on_change = on_change
        self.pending: list[QueueItem] = []  # a heap: its list order is what GET /queue shows
        self.running: QueueItem | None = None
        self.history: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.number = 0  # the server-wide counter POST /prompt hands out
        self._wake = asyncio.Event()

    def renew_wakeup(self) -> None:
        self._wake = asyncio.Event()
        if self.pending:
            self._wake.set()

    def reset(self) -> None:
        """A restart: everything forgotten, the counter back at 0."""
        self.pending.clear()
        self.running = None
        self.history.clear()
        self.number = 0

    @property
    def remaining(self) -> int:
        return len(self.pending) + (1 if self.running else 0)

    def next_number(self, front: bool) -> int:
        number = -self.number if front else self.number
        self.number += 1
        return number

    def put(self, item: QueueItem) -> None:
        heapq.heappush(self.pending, item)
        self._wake.set()
        self.on_change()

    async def get(self) -> QueueItem:
        while not self.pending:
            self._wake.clear()
            await self._wake.wait()
        item = heapq.heappop(self.pending)
        self.running = item
        self.on_change()
        return item

    def task_done(self, item: QueueItem, result: dict[str, Any], status: dict[str, Any]) -> None:
        self.running = None
        if len(self.history) > MAXIMUM_HISTORY_SIZE:
            self.history.popitem(last=False)
        self.history[item.prompt_id] = {
            "prompt": copy.deepcopy(item.as_list()),
            "outputs": {},
            "status": copy.deepcopy(status),
            **result,
        }
        self.on_change()

    def delete(self, prompt_id: str) -> bool:
        """Drop a pending prompt; running or unknown ids are ignored."""
        for index, item in enumerate(self.pending):
            if item.prompt_id == prompt_id:
                if len(self.pending) == 1:
                    self.wipe()  # ComfyUI announces twice here: wipe, then the deletion
                else:
                    self.pending.pop(index)
                    heapq.heapify(self.pending)
                self.on_change()
                return True
        return False

    def wipe(self) -> None:
        self.pending.clear()
        self.on_change()

    def snapshot(self) -> dict[str, list[Any]]:
        running = [self.running.as_list()] if self.running else []
        return {"queue_running": copy.deepcopy(running), "queue_pending": [i.as_list() for i in self.pending]}

    def get_history(self, max_items: int | None = None, offset: int = -1) -> dict[str, Any]:
        """PromptQueue.get_history: the last `max_items` (oldest first) unless an offset is given."""
        if offset < 0 and max_items is not None:
            offset = len(self.history) - max_items
        out: dict[str, Any] = {}
        for index, (prompt_id, entry) in enumerate(self.history.items()):
            if index >= offset:
                out[prompt_id] = entry
                if max_items is not None and len(out) >= max_items:
                    break
        return out
