"""API keys: made once and shown once, kept as a hash, presented as `Authorization: Bearer`.

A key is `csk_<prefix>_<secret>`. The prefix finds the row (it is shown in lists, so people can
tell their keys apart); the SHA-256 of the whole key is compared in constant time. The secret
holds 256 random bits, so a plain hash is as strong as a slow one here and costs microseconds.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import secrets
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.http import HttpRequest
from django.utils import timezone
from ninja.security import HttpBearer

from generator.models import ApiKey

KEY_PREFIX = "csk_"
LAST_USED_PRECISION = datetime.timedelta(minutes=1)  # not one write per request


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(owner: Any, name: str) -> tuple[ApiKey, str]:
    """A new key for `owner`: the row, and the key itself (shown once, never stored)."""
    prefix = secrets.token_hex(6)
    key = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    return ApiKey.objects.create(owner=owner, name=name, prefix=prefix, key_hash=_digest(key)), key


def revoke_key(key: ApiKey) -> None:
    ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())


def user_for_key(key: str) -> AbstractBaseUser | None:
    """The active user `key` belongs to, or None (unknown, revoked, malformed, user inactive)."""
    if not key.startswith(KEY_PREFIX) or len(key) > 100:
        return None
    prefix = key[len(KEY_PREFIX) :].partition("_")[0]
    row = (
        ApiKey.objects.select_related("owner")
        .filter(prefix=prefix, revoked_at__isnull=True, owner__is_active=True)
        .first()
    )
    if row is None or not hmac.compare_digest(row.key_hash, _digest(key)):
        return None
    now = timezone.now()
    if row.last_used_at is None or now - row.last_used_at > LAST_USED_PRECISION:
        ApiKey.objects.filter(pk=row.pk).update(last_used_at=now)
    return row.owner


class ApiKeyAuth(HttpBearer):
    """Bearer keys only: a browser's session cookie opens nothing here (and so needs no CSRF
    check), and a key opens nothing but the API."""

    def authenticate(self, request: HttpRequest, token: str) -> AbstractBaseUser | None:
        user = user_for_key(token)
        request.user = user if user is not None else AnonymousUser()  # type: ignore[assignment]
        return user
