"""The jobs websocket: only logged-in users, only their own jobs, current state on connect."""

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.urls import reverse

from comfysite.asgi import application
from generator.consumers import JobsConsumer
from generator.jobs import moved_queue_places
from generator.live import LiveState, Relay, progress_event, user_group
from generator.models import Prompt

from .factories import PromptFactory
from .test_generate_views import HTMX, valid_data

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


async def test_a_tab_is_first_sent_its_users_job_list_as_it_stands(user, other_user):
    mine = await sync_to_async(PromptFactory)(owner=user)
    ended_while_away = await sync_to_async(PromptFactory)(owner=user, status=Prompt.Status.SUCCEEDED)
    theirs = await sync_to_async(PromptFactory)(owner=other_user)
    communicator = communicator_for(user)

    connected, _ = await communicator.connect()
    first = await communicator.receive_from()

    assert connected
    # The whole list, in place of the page's: a job that ended while the tab was away shows so.
    assert first.startswith('<div id="jobs" class="jobs">')
    assert f'id="prompt-{mine.pk}"' in first
    assert f'id="prompt-{ended_while_away.pk}" data-status="succeeded"' in first
    assert f'id="prompt-{theirs.pk}"' not in first
    assert await communicator.receive_nothing(timeout=0.2)
    await communicator.disconnect()


async def test_events_reach_the_owners_tabs_and_no_one_elses(user, other_user):
    mine, theirs = communicator_for(user), communicator_for(other_user)
    await mine.connect()
    await theirs.connect()
    await mine.receive_from(), await theirs.receive_from()  # their lists

    await get_channel_layer().group_send(
        user_group(user.pk), {"type": "job.html", "html": "<div id='x'>42%</div>"}
    )

    assert await mine.receive_from() == "<div id='x'>42%</div>"
    assert await theirs.receive_nothing(timeout=0.2)
    await mine.disconnect()
    await theirs.disconnect()


async def connected_tab(user) -> WebsocketCommunicator:
    communicator = communicator_for(user)
    await communicator.connect()
    await communicator.receive_from()  # the list
    return communicator


def step_fragment(prompt: Prompt, step: int) -> dict:
    html = f'<div class="job-progress" id="prompt-{prompt.pk}-progress">step {step}/20</div>'
    return Relay(
        prompt.owner_id, html, (progress_event(prompt.pk, "running", LiveState(step=step)),)
    ).message()


async def test_a_job_posted_in_one_tab_is_added_to_every_tab_before_any_of_its_updates(user, user_client):
    first, second = await connected_tab(user), await connected_tab(user)

    response = await sync_to_async(user_client.post)(reverse("generate"), valid_data(), **HTMX)
    prompt = await Prompt.objects.aget()
    await get_channel_layer().group_send(user_group(user.pk), step_fragment(prompt, 1))

    for tab in (first, second):
        card = await tab.receive_from()
        assert card.startswith('<div hx-swap-oob="afterbegin:#jobs"><article class="job-card')
        assert f'id="prompt-{prompt.pk}" data-status="queued"' in card
        assert "step 1/20" in await tab.receive_from()  # its target is on the page by now
        await tab.disconnect()
    # The form swaps nothing in itself: the socket alone adds cards, so never twice.
    assert 'hx-swap="none' in (await sync_to_async(user_client.get)(reverse("home"))).text
    assert response.status_code == 200


async def test_an_update_of_a_job_the_tab_has_no_card_of_comes_as_its_card(user):
    tab = await connected_tab(user)
    made_elsewhere = await sync_to_async(PromptFactory)(owner=user, status=Prompt.Status.QUEUED)

    await get_channel_layer().group_send(user_group(user.pk), step_fragment(made_elsewhere, 3))
    await get_channel_layer().group_send(user_group(user.pk), step_fragment(made_elsewhere, 4))

    added = await tab.receive_from()
    assert added.startswith('<div hx-swap-oob="afterbegin:#jobs">')
    assert f'id="prompt-{made_elsewhere.pk}"' in added
    assert "step 3/20" not in added  # the card as it stands replaced that older fragment
    assert "step 4/20" in await tab.receive_from()  # then updates go to it as usual
    assert await tab.receive_nothing(timeout=0.2)
    await tab.disconnect()


async def test_no_card_of_someone_elses_job_is_sent_whatever_reaches_the_group(user, other_user):
    tab = await connected_tab(user)
    theirs = await sync_to_async(PromptFactory)(owner=other_user)

    await get_channel_layer().group_send(user_group(user.pk), step_fragment(theirs, 1))

    assert await tab.receive_nothing(timeout=0.2)
    await tab.disconnect()


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

    # The queue moves: the tab is told the places of the jobs it shows, and gets no card for
    # the counted ones (its list stays bounded however long the queue).
    for relay in await sync_to_async(moved_queue_places)():
        await get_channel_layer().group_send(user_group(relay.owner_id), relay.message())
    places = await communicator.receive_from()
    assert places.count('class="job-progress"') == 5
    assert all(f'id="prompt-{job.pk}-progress"' in places for job in jobs[-5:])
    assert "<article" not in places
    assert await communicator.receive_nothing(timeout=0.2)

    # The oldest job starts: it gets its card, and one fewer is counted.
    await get_channel_layer().group_send(user_group(user.pk), step_fragment(jobs[0], 1))
    added = await communicator.receive_from()
    assert f'id="prompt-{jobs[0].pk}"' in added
    assert "and 6 more queued" in added
    await communicator.disconnect()


async def test_a_queue_place_that_arrives_after_its_job_started_is_not_shown(user):
    job = await sync_to_async(PromptFactory)(owner=user)
    other = await sync_to_async(PromptFactory)(owner=user)
    tab = await connected_tab(user)
    told = await sync_to_async(moved_queue_places)()  # worked out while both were queued...
    await get_channel_layer().group_send(user_group(user.pk), step_fragment(job, 1))  # ...job starts...

    for relay in told:  # ...and the places, sent apart from the outbox, arrive after its start
        await get_channel_layer().group_send(user_group(relay.owner_id), relay.message())

    assert "step 1/20" in await tab.receive_from()
    places = await tab.receive_from()
    assert f'id="prompt-{other.pk}-progress"' in places  # still queued: told its place
    assert f'id="prompt-{job.pk}-progress"' not in places  # running: its step stays on the card
    await tab.disconnect()
