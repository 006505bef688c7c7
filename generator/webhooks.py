"""Webhooks: when a job that asked for one ends, its owner's URL gets a signed POST.

Deliveries are rows (WebhookDelivery), made in the same transaction as the job's final move, and
sent by a WebhookSender running in each bridge process: at least once, retried with exponential
backoff for WEBHOOK_RETRY_HOURS, so neither a receiver that is down nor a restart of ours loses
one. Signing follows Standard Webhooks (https://www.standardwebhooks.com/): headers
`webhook-id`, `webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256>` over
`<id>.<timestamp>.<body>`, keyed with the base64-decoded part of the user's `whsec_` secret.

The site must not become a way into its own network: URLs whose host resolves to a private,
loopback, link-local or otherwise non-global address are refused when given and again when
sent (DNS may change in between), unless WEBHOOK_ALLOW_PRIVATE is set. Redirects are not
followed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connections
from django.db.models import F
from django.utils import timezone

from .models import WebhookDelivery, WebhookSecret

logger = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"
CLAIM_SECONDS = 60  # a claimed delivery is not picked again this long (another process, a crash)
SEND_TIMEOUT_SECONDS = 10
BATCH = 20
D = WebhookDelivery.Status


class UnsafeWebhookUrl(ValueError):
    """A webhook URL the site will not call, with the reason in words."""


# -- secrets and signatures -----------------------------------------------------------------


def secret_for(user: Any) -> str:
    """The user's signing secret, made on first use."""
    row, _ = WebhookSecret.objects.get_or_create(
        owner=user, defaults={"secret": SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()}
    )
    return row.secret


def rotate_secret(user: Any) -> str:
    WebhookSecret.objects.filter(owner=user).delete()
    return secret_for(user)


def signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


# -- which URLs may be called ---------------------------------------------------------------


def _refuse_address(address: str) -> str | None:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if settings.WEBHOOK_ALLOW_PRIVATE or ip.is_global:
        return None
    return f"it resolves to {ip}, a private or local address"


def check_url(url: str) -> str:
    """`url` if the site may POST to it; UnsafeWebhookUrl with the reason otherwise. Resolves
    the host name (blocking: call it off the event loop)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UnsafeWebhookUrl("it is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeWebhookUrl("it must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise UnsafeWebhookUrl("it must not carry a user name or password")
    try:
        found = socket.getaddrinfo(parts.hostname, port or 443, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise UnsafeWebhookUrl(f"its host {parts.hostname} does not resolve") from None
    for *_, address in found:
        reason = _refuse_address(str(address[0]))
        if reason:
            raise UnsafeWebhookUrl(reason)
    return url


class PublicAddressResolver(aiohttp.ThreadedResolver):
    """Resolves as usual, then drops addresses a webhook may not reach: a name that resolved to a
    public address when it was given and to a private one now is still refused."""

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> Any:
        found = await super().resolve(host, port, family)
        allowed = [entry for entry in found if _refuse_address(entry["host"]) is None]
        if not allowed:
            raise OSError(f"{host} resolves only to private or local addresses")
        return allowed


# -- the database side (runs on a worker thread) --------------------------------------------


def event_payload(delivery: WebhookDelivery) -> dict[str, Any]:
    from .api.representation import jobs_data, jobs_visible_to

    prompt = jobs_visible_to(delivery.owner).filter(pk=delivery.prompt_id).first()
    job = jobs_data([prompt], settings.SITE_URL)[0] if prompt else {"id": delivery.prompt_id}
    payload = {
        "id": delivery.message_id,
        "type": delivery.event,
        "created_at": delivery.created_at,
        "data": job,
    }
    return json.loads(json.dumps(payload, cls=DjangoJSONEncoder))


def claim_due(limit: int = BATCH) -> list[tuple[WebhookDelivery, str]]:
    """Deliveries whose time has come, each claimed for this process; with the owner's secret."""
    now = timezone.now()
    due = list(
        WebhookDelivery.objects.filter(status=D.PENDING, next_attempt_at__lte=now)
        .select_related("owner")
        .order_by("next_attempt_at")[:limit]
    )
    claimed = []
    for delivery in due:
        took = WebhookDelivery.objects.filter(
            pk=delivery.pk, status=D.PENDING, next_attempt_at=delivery.next_attempt_at
        ).update(next_attempt_at=now + datetime.timedelta(seconds=CLAIM_SECONDS))
        if not took:
            continue  # another process took it
        if delivery.payload is None:
            delivery.payload = event_payload(delivery)
            WebhookDelivery.objects.filter(pk=delivery.pk).update(payload=delivery.payload)
        claimed.append((delivery, secret_for(delivery.owner)))
    return claimed


def record_attempt(delivery_id: int, *, status_code: int | None, error: str) -> None:
    delivery = WebhookDelivery.objects.get(pk=delivery_id)
    now = timezone.now()
    changes: dict[str, Any] = {"attempts": F("attempts") + 1, "last_status_code": status_code}
    if not error:
        changes.update(status=D.DELIVERED, delivered_at=now, last_error="")
    else:
        delay = min(settings.WEBHOOK_RETRY_BASE_SECONDS * 2**delivery.attempts, 3600)
        next_attempt = now + datetime.timedelta(seconds=delay)
        give_up_at = delivery.created_at + datetime.timedelta(hours=settings.WEBHOOK_RETRY_HOURS)
        changes.update(last_error=error[:500], next_attempt_at=next_attempt)
        if next_attempt > give_up_at:
            changes["status"] = D.FAILED
    WebhookDelivery.objects.filter(pk=delivery_id).update(**changes)


# -- sending (on the event loop) ------------------------------------------------------------


class WebhookSender:
    """Sends due deliveries, a batch at a time, until cancelled."""

    def __init__(self, poll_seconds: float = 1.0) -> None:
        self.poll_seconds = poll_seconds

    async def run(self) -> None:
        resolver = None if settings.WEBHOOK_ALLOW_PRIVATE else PublicAddressResolver()
        connector = aiohttp.TCPConnector(resolver=resolver, limit=BATCH)
        timeout = aiohttp.ClientTimeout(total=SEND_TIMEOUT_SECONDS)
        try:
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                await self._send_due(session)
        finally:
            with contextlib.suppress(Exception):
                await sync_to_async(connections.close_all)()

    async def _send_due(self, session: aiohttp.ClientSession) -> None:
        while True:
            try:
                claimed = await sync_to_async(claim_due)()
            except Exception:
                logger.exception("Webhooks: could not read due deliveries")
                claimed = []
            if claimed:
                await asyncio.gather(*(self.send(session, d, secret) for d, secret in claimed))
            else:
                await asyncio.sleep(self.poll_seconds)

    async def send(self, session: aiohttp.ClientSession, delivery: WebhookDelivery, secret: str) -> None:
        body = json.dumps(delivery.payload, separators=(",", ":")).encode()
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "ComfySite-Webhooks/1",
            "webhook-id": delivery.message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(secret, delivery.message_id, timestamp, body),
        }
        status_code, error = None, ""
        try:
            await sync_to_async(check_url, thread_sensitive=False)(delivery.url)
            async with session.post(
                delivery.url, data=body, headers=headers, allow_redirects=False
            ) as response:
                status_code = response.status
                if not 200 <= response.status < 300:
                    error = f"The receiver answered {response.status}."
        except UnsafeWebhookUrl as refused:
            error = f"Not sent: {refused}."
        except (aiohttp.ClientError, OSError, TimeoutError) as failure:
            error = f"Could not reach the receiver: {failure or type(failure).__name__}."
        if error:
            logger.info("Webhook %s for job %s: %s", delivery.message_id, delivery.prompt_id, error)
        try:
            await sync_to_async(record_attempt)(delivery.pk, status_code=status_code, error=error)
        except Exception:
            logger.exception("Webhooks: could not record delivery %s", delivery.pk)
