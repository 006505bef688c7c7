"""A job's event stream (SSE): its state now, each relayed change as data, and its end."""

from __future__ import annotations

import asyncio
import json

import pytest
from asgiref.sync import sync_to_async
from django.db import connections
from django.test import AsyncClient

from generator.api.keys import create_key
from generator.jobs import advance
from generator.live import LiveState, Relay, preview_event, progress_event, user_group
from generator.models import Prompt
from generator.tests.factories import PromptFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
async def _close_async_connections():
    """The async ORM and sync_to_async work on one long-lived thread: close its connection after
    each test, or the test database cannot be dropped at the end (PostgreSQL)."""
    yield
    await sync_to_async(connections.close_all)()


def parse(chunks: list[bytes]) -> list[tuple[str, str, dict]]:
    """(id, event, data) of each event in what a stream sent."""
    events = []
    for block in b"".join(chunks).decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and line[0] != ":")
        if "event" in fields:
            events.append((fields["id"], fields["event"], json.loads(fields["data"])))
    return events


async def read_stream(response, until: str = "finished", seconds: float = 10) -> list[bytes]:
    chunks = []

    async def read() -> None:
        async for chunk in response.streaming_content:
            chunks.append(chunk if isinstance(chunk, bytes) else chunk.encode())
            if f"event: {until}".encode() in chunks[-1]:
                return

    await asyncio.wait_for(read(), seconds)
    return chunks


class KeyedAsyncClient(AsyncClient):
    """Presents the key on every request (AsyncClient's own default headers do not reach the
    request as `Authorization`)."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key

    async def get(self, path, *args, headers=None, **kwargs):
        return await super().get(
            path, *args, headers={"Authorization": f"Bearer {self.key}", **(headers or {})}, **kwargs
        )


@pytest.fixture
async def owner_and_client():
    user = await sync_to_async(UserFactory)()
    _, key = await sync_to_async(create_key)(user, "sse")
    return user, KeyedAsyncClient(key)


def running_job(owner) -> Prompt:
    prompt = PromptFactory(owner=owner)
    prompt.transition_to(Prompt.Status.SUBMITTED)
    prompt.transition_to(Prompt.Status.RUNNING)
    return prompt


async def test_a_stream_shows_the_job_then_each_relayed_change_then_its_end(owner_and_client):
    from channels.layers import get_channel_layer

    user, client = owner_and_client
    prompt = await sync_to_async(running_job)(user)
    response = await client.get(f"/api/jobs/{prompt.pk}/events")
    assert response["Content-Type"] == "text/event-stream"
    stream = response.streaming_content
    first = [await anext(stream), await anext(stream)]  # retry hint, then the job now

    layer = get_channel_layer()
    live = LiveState(node_title="KSampler", step=3, steps=8, progress=0.4)
    for event in (progress_event(prompt.pk, "running", live), preview_event(prompt.pk, "image/jpeg", "AAAA")):
        await layer.group_send(user_group(user.pk), Relay(user.pk, "<div></div>", (event,)).message())
    other = progress_event(prompt.pk + 1000, "running", live)  # another job's: not on this stream
    await layer.group_send(user_group(user.pk), Relay(user.pk, "", (other,)).message())
    relay = await sync_to_async(advance)(prompt.pk, Prompt.Status.SUCCEEDED)
    await layer.group_send(user_group(user.pk), relay.message())
    rest = await read_stream(response)

    events = parse(first + rest)
    assert [name for _, name, _ in events] == ["status", "progress", "preview", "finished"]
    assert events[0][2]["status"] == "running"
    assert events[1][2] == {
        "job": prompt.pk,
        "status": "running",
        "node": "KSampler",
        "step": 3,
        "steps": 8,
        "progress": 0.4,
    }
    assert events[2][2]["data"] == "AAAA"
    assert events[3][2]["status"] == "succeeded"
    ids = [int(event_id) for event_id, _, _ in events[:-1]]
    assert ids == sorted(set(ids))  # increasing: a client resumes from the last it saw
    assert events[-1][0] == f"end-{prompt.pk}"


async def test_a_status_change_told_by_the_bridge_shows_the_job_as_its_own_page_does(owner_and_client):
    from channels.layers import get_channel_layer

    user, client = owner_and_client
    prompt = await sync_to_async(PromptFactory)(owner=user)
    await sync_to_async(prompt.transition_to)(Prompt.Status.SUBMITTED)
    response = await client.get(f"/api/jobs/{prompt.pk}/events")
    stream = response.streaming_content
    first = [await anext(stream), await anext(stream)]

    layer = get_channel_layer()
    relay = await sync_to_async(advance)(prompt.pk, Prompt.Status.RUNNING)
    await layer.group_send(user_group(user.pk), relay.message())
    told = [await anext(stream)]
    page = json.loads((await client.get(f"/api/jobs/{prompt.pk}")).content)
    relay = await sync_to_async(advance)(prompt.pk, Prompt.Status.SUCCEEDED)
    await layer.group_send(user_group(user.pk), relay.message())
    events = parse(first + told + await read_stream(response))

    assert [name for _, name, _ in events] == ["status", "status", "finished"]
    assert events[0][2]["status"] == "submitted"
    running = events[1][2]
    assert running == page
    assert running["status"] == "running"
    assert running["started_at"] is not None


async def test_a_job_that_ended_is_told_at_once_and_a_client_that_saw_the_end_gets_204(owner_and_client):
    user, client = owner_and_client
    prompt = await sync_to_async(running_job)(user)
    await sync_to_async(prompt.transition_to)(Prompt.Status.FAILED, error="KSampler: out of memory.")

    response = await client.get(f"/api/jobs/{prompt.pk}/events")
    [(finished_id, name, job)] = parse(await read_stream(response))

    assert name == "finished"
    assert job["error"] == "KSampler: out of memory."
    again = await client.get(f"/api/jobs/{prompt.pk}/events", headers={"Last-Event-ID": finished_id})
    assert again.status_code == 204
    resumed = await client.get(f"/api/jobs/{prompt.pk}/events", headers={"Last-Event-ID": "1796398891194946"})
    assert [name for _, name, _ in parse(await read_stream(resumed))] == ["finished"]


async def test_a_change_no_bridge_relayed_is_still_seen(owner_and_client, monkeypatch):
    from generator.api import events

    monkeypatch.setattr(events, "QUIET_SECONDS", 0.2)
    user, client = owner_and_client
    prompt = await sync_to_async(running_job)(user)
    response = await client.get(f"/api/jobs/{prompt.pk}/events")
    stream = response.streaming_content
    await anext(stream)
    await anext(stream)

    await sync_to_async(prompt.transition_to)(Prompt.Status.CANCELLED, error="Cancelled.")  # no relay sent
    rest = await read_stream(response, seconds=5)

    assert [name for _, name, _ in parse(rest)] == ["finished"]


async def test_another_users_job_has_no_stream(owner_and_client):
    _, client = owner_and_client
    theirs = await sync_to_async(PromptFactory)()

    response = await client.get(f"/api/jobs/{theirs.pk}/events")

    assert response.status_code == 404
