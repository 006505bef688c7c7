"""Per-user counts and storage for the history page, cached: summing 100,000 rows costs more
than the rest of the page. Any change to a user's images forgets their totals."""

from __future__ import annotations

from typing import Any

from django.core.cache import cache
from django.db.models import Count, Q, Sum
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from .models import GeneratedImage

TTL_SECONDS = 600


def _key(user_id: int) -> str:
    return f"user-totals:{user_id}"


def user_totals(user_id: int) -> dict[str, int]:
    totals = cache.get(_key(user_id))
    if totals is None:
        found = GeneratedImage.objects.filter(owner_id=user_id).aggregate(
            images=Count("pk"), bytes=Sum("bytes"), favourites=Count("pk", filter=Q(is_favourite=True))
        )
        totals = {name: value or 0 for name, value in found.items()}
        cache.set(_key(user_id), totals, TTL_SECONDS)
    return totals


def forget_user_totals(user_id: int) -> None:
    cache.delete(_key(user_id))


@receiver([post_save, post_delete], sender=GeneratedImage)
def _image_changed(sender: type, instance: GeneratedImage, **kwargs: Any) -> None:
    forget_user_totals(instance.owner_id)
