"""The site while Redis is away (restarting): pages, posts, cancels and the bridge's image
imports go on without its cache and channel layer. Found by the fault soak (bench/soak.py):
with Django's own Redis cache every page was a 500 (the session is read through the cache
first) and finished images could not be stored (saving one forgets the owner's cached totals);
a job posted while the channel layer was away was saved, then answered 500 (waking the bridge
failed), so its owner would post it again."""

from __future__ import annotations

import io

import pytest
from django.core.cache import cache
from PIL import Image

from comfysite.settings import redis_channel_layers
from generator import jobs
from generator.api.keys import create_key
from generator.models import GeneratedImage, Prompt
from generator.tests.browser import free_port

from .factories import PromptFactory
from .test_generate_views import HTMX, valid_data


@pytest.fixture
def redis_away(settings):
    """The cache and channel layer as production configures them, on a Redis that does not
    answer."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    settings.CACHES = {"default": {"BACKEND": "generator.cache.ResilientRedisCache", "LOCATION": url}}
    settings.CHANNEL_LAYERS = redis_channel_layers(url)
    return url


def test_a_cache_that_is_away_misses_and_skips_writes(redis_away):
    assert cache.get("key", "default") == "default"
    assert cache.get_many(["a", "b"]) == {}
    assert cache.add("key", 1) is False
    cache.set("key", 1)
    assert cache.set_many({"a": 1}) == ["a"]
    assert cache.delete("key") is False
    assert cache.touch("key") is False
    with pytest.raises(ValueError, match="not found"):  # as for a key that expired
        cache.incr("key")


@pytest.mark.django_db
def test_pages_and_posts_work_while_redis_restarts(user, client, redis_away):
    client.force_login(user)

    assert client.get("/").status_code == 200
    answer = client.post("/generate/", valid_data(), **HTMX)
    assert answer.status_code == 200
    assert Prompt.objects.filter(owner=user).count() == 1

    key = create_key(user, "script")[1]
    answer = client.post(
        "/api/jobs",
        {"workflow": "txt2img", "parameters": {"prompt": "a red door"}},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )
    assert answer.status_code == 202, answer.content
    assert Prompt.objects.filter(owner=user).count() == 2


@pytest.mark.django_db
def test_a_queued_job_is_cancelled_while_redis_restarts(user, client, redis_away):
    client.force_login(user)
    job = PromptFactory(owner=user)

    answer = client.post(f"/jobs/{job.pk}/cancel/", **HTMX)

    assert answer.status_code == 200
    job.refresh_from_db()
    assert job.status == Prompt.Status.CANCELLED


@pytest.mark.django_db
def test_a_finished_image_is_stored_while_redis_restarts(redis_away):
    prompt = PromptFactory(status=Prompt.Status.RUNNING)
    png = io.BytesIO()
    Image.new("RGB", (64, 64), "teal").save(png, "PNG")

    stored = jobs.store_output(jobs._job(prompt), "9", 0, "job_00001_.png", png.getvalue())

    assert stored is not None
    assert GeneratedImage.objects.filter(prompt=prompt).count() == 1
