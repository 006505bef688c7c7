"""Per-user limits on queued and running jobs and on images per day."""

from __future__ import annotations

import datetime
from collections import Counter
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Count, IntegerField, Q, Sum
from django.db.models.fields.json import KT
from django.db.models.functions import Cast, Coalesce
from django.template.defaultfilters import pluralize
from django.utils import timezone

from .models import Prompt, Quota

S = Prompt.Status
LIMITS = ("max_queued", "max_running", "max_images_per_day")


@dataclass(frozen=True)
class Limits:
    max_queued: int | None
    max_running: int | None
    max_images_per_day: int | None


def limits_for(user: Any) -> Limits:
    """The most generous limit of the user's groups' quotas (None = unlimited), else the defaults."""
    quotas = list(Quota.objects.filter(group__user=user))
    return Limits(
        **{name: _limit(name, user.is_staff, [getattr(q, name) for q in quotas]) for name in LIMITS}
    )


def refusal_for_new_job(user: Any, batch_size: int = 1) -> str | None:
    """Why `user` may not queue another job now, in words; None when they may.

    The daily limit counts what was made, not what is kept: the images of the user's jobs that
    succeeded in the last 24 hours (deleting them gives nothing back), plus those of every job
    still waiting or running. A job's images are its batch size.
    """
    limits = limits_for(user)
    if limits.max_queued is None and limits.max_images_per_day is None:
        return None
    since = timezone.now() - datetime.timedelta(days=1)
    unfinished = Q(status__in=[S.QUEUED, *Prompt.ON_BACKEND_STATUSES])
    made_today = Q(status=S.SUCCEEDED, finished_at__gte=since)
    # Counted by the database: a user may have hundreds of jobs waiting.
    images_of_job = Coalesce(Cast(KT("params__batch_size"), IntegerField()), 1)
    totals = (
        Prompt.objects.filter(owner=user)
        .filter(unfinished | made_today)
        .aggregate(
            waiting=Count("pk", filter=Q(status=S.QUEUED)),
            pending=Coalesce(Sum(images_of_job, filter=unfinished), 0),
            made=Coalesce(Sum(images_of_job, filter=made_today), 0),
        )
    )
    waiting = totals["waiting"]
    if limits.max_queued is not None and waiting >= limits.max_queued:
        return (
            f"You already have {waiting} jobs waiting, the most you may queue at once. "
            "Try again when some have run."
        )
    limit = limits.max_images_per_day
    if limit is not None and totals["made"] + totals["pending"] + batch_size > limit:
        made, pending = totals["made"], totals["pending"]
        coming = f" and {pending} more {pluralize(pending, 'is,are')} on the way" if pending else ""
        return (
            f"You have made {made} image{pluralize(made)} in the last 24 hours{coming} "
            f"(limit {limit} a day); {batch_size} more would pass the limit. Try again later."
        )
    return None


def users_at_running_limit(on_gpu: Counter[int]) -> set[int]:
    """Owners whose jobs may not go to a GPU now because enough of theirs are there already
    (`on_gpu`: owner id → jobs handed to ComfyUI). One query, however many owners: each
    owner's groups' running limits (as limits_for decides them), read together."""
    if not on_gpu:
        return set()
    rows = (
        get_user_model()
        .objects.filter(pk__in=on_gpu)
        .values_list("pk", "is_staff", "groups__quota__pk", "groups__quota__max_running")
    )
    staff: set[int] = set()
    quota_limits: dict[int, list[int | None]] = {}
    for user_id, is_staff, quota_id, max_running in rows:
        if is_staff:
            staff.add(user_id)
        quota_limits.setdefault(user_id, [])
        if quota_id is not None:
            quota_limits[user_id].append(max_running)
    blocked = set()
    for user_id, found in quota_limits.items():
        limit = _limit("max_running", user_id in staff, found)
        if limit is not None and on_gpu[user_id] >= limit:
            blocked.add(user_id)
    return blocked


def _limit(name: str, is_staff: bool, from_quotas: list[int | None]) -> int | None:
    """One limit of a user (None = unlimited): none for staff; the most generous of their
    groups' quotas; the default when no group has one."""
    if is_staff:
        return None
    if not from_quotas:
        return settings.DEFAULT_QUOTA.get(name)
    return None if None in from_quotas else max(v for v in from_quotas if v is not None)
