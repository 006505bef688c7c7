"""The production services: the Redis channel layer and the PostgreSQL database."""

import asyncio
import os
import uuid

import pytest
from channels.layers import get_channel_layer
from django.db import connection

from comfysite.settings import redis_channel_layers
from conftest import require_service

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def redis_channel_layer(settings):
    require_service("Redis", REDIS_URL)
    settings.CHANNEL_LAYERS = redis_channel_layers(REDIS_URL)  # as the site configures it
    return get_channel_layer()


@pytest.mark.redis
async def test_a_group_message_crosses_the_redis_channel_layer(redis_channel_layer):
    group = f"test-{uuid.uuid4().hex}"
    channel = await redis_channel_layer.new_channel()
    await redis_channel_layer.group_add(group, channel)

    await redis_channel_layer.group_send(group, {"type": "job.update", "html": "<p>42%</p>"})

    assert await redis_channel_layer.receive(channel) == {"type": "job.update", "html": "<p>42%</p>"}
    await redis_channel_layer.group_discard(group, channel)


@pytest.mark.redis
async def test_a_receive_waits_out_quiet_spells_longer_than_redis_blocking_timeout(redis_channel_layer):
    """An idle tab or bridge waits for its next message however long it takes (redis-py 8 made
    such a wait fail after 5 s, which closed every quiet websocket)."""
    channel = await redis_channel_layer.new_channel()

    async def send_later() -> None:
        await asyncio.sleep(6.5)
        await redis_channel_layer.send(channel, {"type": "wake"})

    sender = asyncio.create_task(send_later())
    assert await redis_channel_layer.receive(channel) == {"type": "wake"}
    await sender


@pytest.mark.postgres
@pytest.mark.django_db
def test_the_suite_runs_on_postgresql_when_database_url_names_it():
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        pytest.skip("DATABASE_URL does not name PostgreSQL; CI runs the whole suite once with it set.")
    assert connection.vendor == "postgresql"
