"""The order in which queued jobs go to ComfyUI: round robin across users.

A user who queues fifty jobs does not make another user's single job wait behind them. Each job
takes a turn when it is queued: one after its owner's last unfinished job, and never before the
turn being served now (the newest turn handed to ComfyUI). Queued jobs go by turn, ties to the
oldest; a job a backend lost goes back ahead of every queued one. The same order gives the
queue places users see.

The order is kept by the database (the partial index prompt_queue_order on the queued rows):
the next job is the first row of that index, and a job's place counts the rows before it, so
neither grows with the length of the queue in Python.
"""

from __future__ import annotations

import datetime
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, NamedTuple

from django.contrib.auth import get_user_model
from django.db.models import Count, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce

from .models import Prompt

S = Prompt.Status
QUEUE_ORDER = ("turn", "created_at", "pk")


def queued_in_order() -> QuerySet[Prompt]:
    """Queued jobs, next to run first (served by the index prompt_queue_order)."""
    return Prompt.objects.filter(status=S.QUEUED).order_by(*QUEUE_ORDER)


# The settings a job's speed depends on (see generator.estimates), extracted by the database.
RATE_FIELDS = ("workflow", "params__width", "params__height", "params__steps")


def rate_params(width: Any, height: Any, steps: Any) -> dict[str, Any]:
    """The parameters a speed is looked up by, from the values RATE_FIELDS read."""
    return {"width": width, "height": height, "steps": steps}


class HandedJob(NamedTuple):
    """A job handed to ComfyUI, as the queue and the estimates need it."""

    pk: int
    owner_id: int
    status: str
    backend: str
    workflow: str
    width: Any
    height: Any
    steps: Any
    started_at: datetime.datetime | None

    @property
    def params(self) -> dict[str, Any]:
        return rate_params(self.width, self.height, self.steps)


@dataclass(frozen=True)
class SiteQueue:
    """The jobs handed to ComfyUI, read in one query (they are few), and the queued ones as the
    database orders them."""

    handed: tuple[HandedJob, ...]  # oldest first

    @cached_property
    def on_backend(self) -> Counter[int]:
        """Owner id → that owner's jobs handed to ComfyUI."""
        return Counter(job.owner_id for job in self.handed)

    @cached_property
    def per_backend(self) -> Counter[str]:
        """Backend URL → jobs handed to it."""
        return Counter(job.backend for job in self.handed)

    @cached_property
    def waiting_in_comfy(self) -> int:
        """Jobs handed to ComfyUI that have not started: ahead of every queued one."""
        return sum(job.status == S.SUBMITTED for job in self.handed)

    def places(self, jobs: Iterable[Prompt]) -> dict[int, int]:
        """1-based place of each of these queued jobs (jobs waiting in ComfyUI count first): one
        query for one job, three for several, reading the index up to the last of them."""
        queued = [job for job in jobs if job.status == S.QUEUED]
        if len(queued) == 1:
            ahead = {queued[0].pk: _jobs_ahead_of(queued[0])}
        else:
            ahead = jobs_ahead([job.pk for job in queued])
        return {pk: self.waiting_in_comfy + count + 1 for pk, count in ahead.items()}


def site_queue() -> SiteQueue:
    rows = (
        Prompt.objects.filter(status__in=Prompt.ON_BACKEND_STATUSES)
        .order_by("created_at", "pk")
        .values_list("pk", "owner_id", "status", "backend", *RATE_FIELDS, "started_at")
    )
    return SiteQueue(tuple(HandedJob(*row) for row in rows))


def fair_order() -> list[int]:
    """Primary keys of every queued job, next to run first. Reads the whole queue: for tests
    and tools, never per request."""
    return list(queued_in_order().values_list("pk", flat=True))


def next_turn(owner_id: int) -> int:
    """The turn of a job `owner_id` queues now: after each of their unfinished jobs, and not
    before the turn being served (the newest handed to ComfyUI; with nothing there, the next
    queued one's), so a newcomer waits one round at most, not for everyone's backlog, and does
    not go ahead of the jobs already in that round. One query, read with the owner's row."""
    unfinished = Prompt.objects.filter(status__in=Prompt.UNFINISHED_STATUSES)
    handed = Prompt.objects.filter(status__in=Prompt.ON_BACKEND_STATUSES)
    turns = (
        get_user_model()
        .objects.filter(pk=owner_id)
        .annotate(
            last=_max_turn(unfinished.filter(owner_id=owner_id)),
            handed=_max_turn(handed),
            front=Subquery(queued_in_order().values("turn")[:1]),
        )
        .values_list("last", "handed", "front")
        .first()
    )
    last, handed_turn, front = turns or (None, None, None)
    serving = next((turn for turn in (handed_turn, front) if turn is not None), 0)
    return serving if last is None else max(last + 1, serving)


def _max_turn(jobs: QuerySet[Prompt]) -> Subquery:
    """The highest turn of `jobs`, as a subquery (an index's last entry)."""
    return Subquery(jobs.order_by("-turn").values("turn")[:1])


def front_turn() -> int | None:
    """The turn of the job next in the queue (None: nothing is queued)."""
    return queued_in_order().values_list("turn", flat=True).first()


def _jobs_ahead_of(job: Prompt) -> int:
    """How many queued jobs go before this queued one."""
    same_turn_older = Q(created_at__lt=job.created_at) | Q(created_at=job.created_at, pk__lt=job.pk)
    before = Q(turn__lt=job.turn) | Q(turn=job.turn) & same_turn_older
    return Prompt.objects.filter(status=S.QUEUED, turn__lte=job.turn).filter(before).count()


def jobs_ahead(pks: Iterable[int]) -> dict[int, int]:
    """For each of these jobs that is queued: how many queued jobs go before it.

    Counted in two parts, each from the index: the jobs of earlier turns (one pass over the
    index up to the latest turn asked for), and the older jobs of its own turn (as a rule one
    job per user and turn: at most as many as there are users waiting). Three queries."""
    wanted = list(pks)
    if not wanted:
        return {}
    same_turn_before = (
        Prompt.objects.filter(status=S.QUEUED, turn=OuterRef("turn"))
        .filter(
            Q(created_at__lt=OuterRef("created_at"))
            | Q(created_at=OuterRef("created_at"), pk__lt=OuterRef("pk"))
        )
        .order_by()
        .values("turn")
        .annotate(count=Count("pk"))
        .values("count")
    )
    # Found by primary key alone: with the status in the filter too, SQLite went through every
    # queued row instead.
    rows = (
        Prompt.objects.filter(pk__in=wanted)
        .order_by()
        .annotate(before=Coalesce(Subquery(same_turn_before), 0))
        .values_list("pk", "status", "turn", "before")
    )
    found = [(pk, turn, before) for pk, status, turn, before in rows if status == S.QUEUED]
    if not found:
        return {}
    first_turn, last_turn = min(t for _, t, _ in found), max(t for _, t, _ in found)
    queued = Prompt.objects.filter(status=S.QUEUED).order_by()
    # Counted by the database up to the first turn asked for; grouped by turn from there (a
    # page's jobs span a few turns; the turns before them may be thousands).
    per_turn = (
        queued.filter(turn__gte=first_turn, turn__lt=last_turn)
        .values_list("turn")
        .annotate(count=Count("pk"))
        .values_list("turn", "count")
    )
    turns, totals = [], [queued.filter(turn__lt=first_turn).count()]  # totals[i]: before turns[i]
    for turn, count in sorted(per_turn):
        turns.append(turn)
        totals.append(totals[-1] + count)
    return {pk: totals[bisect_left(turns, turn)] + before for pk, turn, before in found}
