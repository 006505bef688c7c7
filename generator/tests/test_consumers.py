"""The jobs websocket: only logged-in users, only their own jobs, current state on connect."""

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator

from comfysite.asgi import application
from generator.consumers import JobsConsumer
from generator.live import user_group

from .factories import PromptFactory

pytestmark = [pytest.mark.django_db(transaction=True)]


def communicator_for(user, path="/ws/jobs/"):
    communicator = WebsocketCommunicator(JobsConsumer.as_asgi(), path)
    communicator.scope["user"] = user
    return communicator


async def test_anonymous_visitors_are_refused():
    communicator = WebsocketCommunicator(application, "/ws/jobs/", headers=[(b"origin", b"http://127.0.0.1")])

    connected, _ = await communicator.connect()

    assert not connected
    await communicator.disconnect()


async def test_a_foreign_origin_is_refused(user):
    communicator = WebsocketCommunicator(
        application, "/ws/jobs/", headers=[(b"origin", b"http://evil.example")]
    )

    connected, _ = await communicator.connect()

    assert not connected
    await communicator.disconnect()


async def test_a_tab_is_first_sent_its_users_unfinished_jobs(user, other_user):
    mine = await sync_to_async(PromptFactory)(owner=user)
    await sync_to_async(PromptFactory)(owner=other_user)
    communicator = communicator_for(user)

    connected, _ = await communicator.connect()
    first = await communicator.receive_from()

    assert connected
    assert f'id="prompt-{mine.pk}"' in first
    assert await communicator.receive_nothing(timeout=0.2)
    await communicator.disconnect()


async def test_events_reach_the_owners_tabs_and_no_one_elses(user, other_user):
    mine, theirs = communicator_for(user), communicator_for(other_user)
    await mine.connect()
    await theirs.connect()

    await get_channel_layer().group_send(
        user_group(user.pk), {"type": "job.html", "html": "<div id='x'>42%</div>"}
    )

    assert await mine.receive_from() == "<div id='x'>42%</div>"
    assert await theirs.receive_nothing(timeout=0.2)
    await mine.disconnect()
    await theirs.disconnect()


async def test_a_tab_of_a_user_with_a_long_queue_is_sent_their_newest_cards_and_a_count(user, settings):
    settings.JOB_CARDS = 5
    jobs = [await sync_to_async(PromptFactory)(owner=user) for _ in range(12)]
    communicator = communicator_for(user)

    await communicator.connect()
    snapshot = await communicator.receive_from()

    assert snapshot.count("<article") == 5
    assert all(f'id="prompt-{job.pk}"' in snapshot for job in jobs[-5:])  # the newest
    assert f'id="prompt-{jobs[0].pk}"' not in snapshot
    assert "and 7 more queued" in snapshot
    assert await communicator.receive_nothing(timeout=0.2)
    await communicator.disconnect()
