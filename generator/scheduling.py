"""The order in which queued jobs go to ComfyUI: round robin across users.

A user who queues fifty jobs does not make another user's single job wait behind them: each
queued job is ranked by how many jobs of its owner are ahead of it (queued before it, or
already handed to ComfyUI). Ties go to the oldest job. Jobs a backend lost go first.
The same order gives the queue positions users see.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from .models import Prompt

S = Prompt.Status


@dataclass(frozen=True)
class SiteQueue:
    """The site's unfinished jobs as the scheduler sees them, read in one query."""

    order: list[int]  # primary keys of the queued jobs, next to run first
    on_backend: Counter[int]  # owner id → that owner's jobs handed to ComfyUI
    waiting_in_comfy: int  # jobs handed to ComfyUI that have not started: ahead of every queued one
    per_backend: Counter[str]  # backend URL → jobs handed to it

    def places(self) -> dict[int, int]:
        """1-based place of each queued job (jobs waiting in ComfyUI count first)."""
        return {pk: self.waiting_in_comfy + place for place, pk in enumerate(self.order, start=1)}


def site_queue() -> SiteQueue:
    rows = (
        Prompt.objects.filter(status__in=[S.QUEUED, *Prompt.ON_BACKEND_STATUSES])
        .order_by("created_at", "pk")
        .values_list("pk", "owner_id", "submit_attempts", "status", "backend")
    )
    queued, on_backend, per_backend, waiting_in_comfy = [], Counter[int](), Counter[str](), 0
    for pk, owner_id, attempts, status, backend in rows:
        if status == S.QUEUED:
            queued.append((pk, owner_id, attempts))
        else:
            on_backend[owner_id] += 1
            per_backend[backend] += 1
            waiting_in_comfy += status == S.SUBMITTED
    seen: Counter[int] = Counter()
    ranked = []
    for age, (pk, owner_id, attempts) in enumerate(queued):
        ranked.append((0 if attempts else 1, on_backend[owner_id] + seen[owner_id], age, pk))
        seen[owner_id] += 1
    return SiteQueue([pk for *_, pk in sorted(ranked)], on_backend, waiting_in_comfy, per_backend)


def fair_order() -> list[int]:
    """Primary keys of all queued jobs, next to run first."""
    return site_queue().order
