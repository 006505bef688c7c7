"""Webhooks: one signed delivery per ended job, retried until taken, never into the site's own
network unless the operator allows it."""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import hmac
import json

import pytest
from aiohttp import web
from asgiref.sync import sync_to_async
from django.db import connections
from django.utils import timezone

from generator.models import Prompt, WebhookDelivery
from generator.tests.browser import free_port
from generator.tests.factories import PromptFactory
from generator.webhooks import WebhookSender, check_url, record_attempt, secret_for

D = WebhookDelivery.Status


@pytest.fixture(autouse=True)
async def _close_async_connections():
    """The async ORM and sync_to_async work on one long-lived thread: close its connection after
    each test, or the test database cannot be dropped at the end (PostgreSQL)."""
    yield
    await sync_to_async(connections.close_all)()


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The README's recipe, written out as a receiver would."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(
        hmac.compare_digest(expected, part.removeprefix("v1,"))
        for part in headers["webhook-signature"].split()
    )


class Receiver:
    """A webhook receiver on a local port that can be down, then up."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}/hook"
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((dict(request.headers), await request.read()))
        return web.Response(text="ok")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()


def ended_job(url: str, status: str = Prompt.Status.SUCCEEDED, **fields) -> Prompt:
    prompt = PromptFactory(webhook_url=url, **fields)
    prompt.transition_to(Prompt.Status.SUBMITTED)
    prompt.transition_to(status, **({"error": "It broke."} if status == "failed" else {}))
    return prompt


@pytest.mark.django_db
def test_a_job_that_ends_gets_exactly_one_delivery_and_others_none():
    with_hook = ended_job("https://example.com/hook", Prompt.Status.FAILED)
    ended_job("")

    [delivery] = WebhookDelivery.objects.all()
    assert delivery.prompt == with_hook
    assert delivery.event == "job.failed"
    assert delivery.owner == with_hook.owner
    assert delivery.status == D.PENDING


@pytest.mark.django_db
def test_failed_attempts_back_off_exponentially_and_give_up_after_a_day(settings):
    settings.WEBHOOK_RETRY_BASE_SECONDS = 10
    delivery = WebhookDelivery.objects.get(prompt=ended_job("https://example.com/hook"))
    delays = []
    for _ in range(4):
        before = timezone.now()
        record_attempt(delivery.pk, status_code=503, error="The receiver answered 503.")
        delivery.refresh_from_db()
        delays.append(round((delivery.next_attempt_at - before).total_seconds()))
    assert delays == [10, 20, 40, 80]
    assert delivery.status == D.PENDING
    assert delivery.last_status_code == 503

    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        created_at=timezone.now() - datetime.timedelta(hours=24)
    )
    record_attempt(delivery.pk, status_code=None, error="Could not reach the receiver.")
    delivery.refresh_from_db()
    assert delivery.status == D.FAILED
    assert delivery.attempts == 5


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1/x", "http://localhost/x", "http://192.168.1.2/x", "http://[fe80::1]/x"]
)
def test_private_addresses_are_refused_unless_allowed(settings, url):
    from generator.webhooks import UnsafeWebhookUrl

    with pytest.raises(UnsafeWebhookUrl, match="private or local"):
        check_url(url)
    settings.WEBHOOK_ALLOW_PRIVATE = True
    assert check_url(url) == url


async def _run_sender_until(condition, seconds: float = 15.0) -> None:
    sender = asyncio.create_task(WebhookSender(poll_seconds=0.05).run())
    try:
        deadline = asyncio.get_running_loop().time() + seconds
        while not await condition():
            assert asyncio.get_running_loop().time() < deadline, "the delivery did not happen in time"
            await asyncio.sleep(0.05)
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)


def _status(pk: int) -> str:
    return WebhookDelivery.objects.get(pk=pk).status


@pytest.mark.django_db(transaction=True)
async def test_a_delivery_is_signed_as_documented_and_carries_the_job(settings):
    settings.WEBHOOK_ALLOW_PRIVATE = True
    receiver = Receiver(free_port())
    await receiver.start()
    try:
        prompt = await sync_to_async(ended_job)(receiver.url)
        secret = await sync_to_async(secret_for)(prompt.owner)

        async def delivered() -> bool:
            return bool(receiver.received)

        await _run_sender_until(delivered)
    finally:
        await receiver.stop()

    [(headers, body)] = receiver.received
    assert verify(secret, headers, body)
    assert not verify(secret, headers, body.replace(b"succeeded", b"failed"))
    event = json.loads(body)
    assert event["type"] == "job.succeeded"
    assert event["id"] == headers["webhook-id"]
    assert event["data"]["id"] == prompt.pk
    assert event["data"]["status"] == "succeeded"
    assert abs(int(headers["webhook-timestamp"]) - timezone.now().timestamp()) < 60


@pytest.mark.django_db(transaction=True)
async def test_a_receiver_that_is_down_gets_the_event_once_when_it_is_back(settings):
    settings.WEBHOOK_ALLOW_PRIVATE = True
    settings.WEBHOOK_RETRY_BASE_SECONDS = 0.2
    receiver = Receiver(free_port())
    prompt = await sync_to_async(ended_job)(receiver.url)
    delivery = await WebhookDelivery.objects.aget(prompt=prompt)

    async def tried_twice() -> bool:
        return (await WebhookDelivery.objects.aget(pk=delivery.pk)).attempts >= 2

    await _run_sender_until(tried_twice)
    assert receiver.received == []
    await receiver.start()
    try:

        async def delivered() -> bool:
            return await sync_to_async(_status)(delivery.pk) == D.DELIVERED

        await _run_sender_until(delivered)
        await asyncio.sleep(0.5)  # a second copy would have come by now
    finally:
        await receiver.stop()

    assert len(receiver.received) == 1
    done = await WebhookDelivery.objects.aget(pk=delivery.pk)
    assert done.attempts >= 3
    assert done.last_error == ""


@pytest.mark.django_db(transaction=True)
async def test_a_name_that_resolves_into_the_sites_network_is_not_called(settings):
    receiver = Receiver(free_port())
    await receiver.start()
    try:
        prompt = await sync_to_async(ended_job)(receiver.url.replace("127.0.0.1", "localhost"))
        delivery = await WebhookDelivery.objects.aget(prompt=prompt)

        async def tried() -> bool:
            return (await WebhookDelivery.objects.aget(pk=delivery.pk)).attempts >= 1

        await _run_sender_until(tried)
    finally:
        await receiver.stop()

    assert receiver.received == []
    refused = await WebhookDelivery.objects.aget(pk=delivery.pk)
    assert "private or local address" in refused.last_error
