"""The order in which queued jobs go to ComfyUI: round robin across users.

A user who queues fifty jobs does not make another user's single job wait behind them: each
queued job is ranked by how many jobs of its owner are ahead of it (queued before it, or
already handed to ComfyUI). Ties go to the oldest job. Jobs a backend lost go first.
The same order gives the queue positions users see.
"""

from __future__ import annotations

from collections import Counter

from .models import Prompt

S = Prompt.Status


def fair_order() -> list[int]:
    """Primary keys of all queued jobs, next to run first."""
    queued = Prompt.objects.filter(status=S.QUEUED).order_by("created_at", "pk")
    rows = list(queued.values_list("pk", "owner_id", "submit_attempts"))
    in_comfy = Counter(
        Prompt.objects.filter(status__in=Prompt.ON_BACKEND_STATUSES).values_list("owner_id", flat=True)
    )
    seen: Counter[int] = Counter()
    ranked = []
    for age, (pk, owner_id, attempts) in enumerate(rows):
        ranked.append((0 if attempts else 1, in_comfy[owner_id] + seen[owner_id], age, pk))
        seen[owner_id] += 1
    return [pk for *_, pk in sorted(ranked)]
