"""The backend banner: on every page, signed in or not, and kept current in an open tab (the
jobs websocket carries a change; every page also polls a cached fragment)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.core.cache import cache
from django.test import Client
from django.urls import reverse

from generator.backends import VISITORS_UNREACHABLE
from generator.banner import watch_banner
from generator.models import Backend

from .factories import backend
from .test_consumers import communicator_for

DEMO = "Demo backend: images come from ComfySite&#x27;s built-in ComfyUI emulator."
DOWN_FOR_USERS = "ComfyUI is unreachable (GPU A: connection lost: refused)"


@pytest.mark.django_db
@pytest.mark.parametrize("page", ["login", "signup", "password_reset"])
def test_logged_out_pages_show_the_demo_banner_and_poll_it(client, page):
    backend("http://127.0.0.1:8188", is_demo=True)

    response = client.get(reverse(page))

    assert DEMO in response.text
    assert f'hx-get="{reverse("backend-banner")}" hx-trigger="every 15s"' in response.text


@pytest.mark.django_db
def test_visitors_hear_comfyui_is_down_but_not_where_or_why(user):
    backend("http://10.0.0.21:8188", label="GPU A", online=False, message="connection lost: refused")
    signed_in = Client()
    signed_in.force_login(user)

    visitor = Client().get(reverse("login")).text
    user = signed_in.get(reverse("history")).text

    assert VISITORS_UNREACHABLE in visitor
    assert "10.0.0.21" not in visitor
    assert "GPU A" not in visitor
    assert DOWN_FOR_USERS in user


@pytest.mark.django_db
def test_the_polled_banner_follows_the_backends_for_visitors(client):
    row = backend("http://127.0.0.1:8188", is_demo=True)
    before = client.get(reverse("backend-banner"))
    Backend.objects.filter(pk=row.pk).update(online=False, status_message="connection lost")
    cache.clear()  # the fragment is cached a few seconds
    after = client.get(reverse("backend-banner"))

    assert before.status_code == after.status_code == 200
    assert DEMO in before.text
    assert VISITORS_UNREACHABLE in after.text
    assert "connection lost" not in after.text
    assert 'id="backend-banner"' in after.text


@contextlib.asynccontextmanager
async def watched_tab(user) -> AsyncIterator[WebsocketCommunicator]:
    """A signed-in tab's websocket, with the banner watched as a bridge process watches it."""
    tab = communicator_for(user)
    await tab.connect()
    assert 'id="jobs"' in await tab.receive_from(timeout=5)  # a tab first gets its list of jobs
    watcher = asyncio.create_task(watch_banner(interval=0.05))
    try:
        yield tab
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await tab.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_change_of_backend_health_reaches_an_open_tab_over_its_websocket(user):
    row = await sync_to_async(backend)("http://gpu:8188", label="GPU A", is_demo=True)
    async with watched_tab(user) as tab:
        first = await tab.receive_from(timeout=5)
        await sync_to_async(Backend.objects.filter(pk=row.pk).update)(
            online=False, status_message="connection lost: refused"
        )
        down = await tab.receive_from(timeout=5)
        await sync_to_async(Backend.objects.filter(pk=row.pk).update)(online=True, status_message="")
        back = await tab.receive_from(timeout=5)

    assert DEMO in first
    assert DOWN_FOR_USERS in down
    assert 'id="backend-banner"' in down
    assert "hx-trigger" not in down  # the page's own banner polls; this one only replaces it
    assert DEMO in back


@pytest.mark.django_db(transaction=True)
async def test_an_unchanged_banner_is_not_told_again(user):
    await sync_to_async(backend)("http://gpu:8188", is_demo=True)
    async with watched_tab(user) as tab:
        await tab.receive_from(timeout=5)
        quiet = await tab.receive_nothing(timeout=0.3)

    assert quiet
