"""Requests share a few threads: a burst of them cannot starve the event loop."""

import asyncio
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from django.contrib.auth.decorators import login_not_required
from django.db import connection, connections
from django.db.backends.signals import connection_created
from django.http import HttpRequest, HttpResponse
from django.urls import path

from generator.web_threads import SharedThreadsASGIHandler


@login_not_required
def thread_name(request: HttpRequest) -> HttpResponse:
    time.sleep(0.01)  # long enough for the requests to overlap
    return HttpResponse(threading.current_thread().name)


@login_not_required
def os_thread_name(request: HttpRequest) -> HttpResponse:
    comm = Path(f"/proc/self/task/{threading.get_native_id()}/comm")
    return HttpResponse(comm.read_text().strip() if comm.exists() else "")


@login_not_required
def query(request: HttpRequest) -> HttpResponse:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return HttpResponse("ok")


@login_not_required
async def wait_on_the_loop(request: HttpRequest) -> HttpResponse:
    await asyncio.sleep(0)
    return HttpResponse("waited", content_type="text/plain")


urlpatterns = [
    path("thread/", thread_name),
    path("os-thread/", os_thread_name),
    path("query/", query),
    path("async/", wait_on_the_loop),
]


def count_thread_crossings(handler: SharedThreadsASGIHandler) -> list[object]:
    crossings: list[object] = []
    for executor in handler.executors:
        submit = executor.submit

        def counted(fn, *args, _submit=submit, **kwargs):
            crossings.append(fn)
            return _submit(fn, *args, **kwargs)

        executor.submit = counted  # type: ignore[method-assign]
    return crossings


async def test_twenty_requests_at_once_are_served_by_the_configured_threads(settings):
    settings.ROOT_URLCONF = __name__
    settings.ALLOWED_HOSTS = ["localhost"]
    transport = httpx.ASGITransport(app=SharedThreadsASGIHandler(threads=2))

    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        answers = await asyncio.gather(*(client.get("/thread/") for _ in range(20)))

    assert {answer.status_code for answer in answers} == {200}
    assert len({answer.text for answer in answers}) == 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread names in /proc are Linux's")
async def test_the_operating_system_sees_web_threads_by_name(settings):
    # So that `top -H` and bench/live_pipeline.py tell the web threads from the event loop.
    settings.ROOT_URLCONF = __name__
    settings.ALLOWED_HOSTS = ["localhost"]
    transport = httpx.ASGITransport(app=SharedThreadsASGIHandler(threads=1))

    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        answer = await client.get("/os-thread/")

    assert answer.text == "web-0_0"


@pytest.mark.django_db(transaction=True)
async def test_requests_reuse_their_threads_database_connections(settings):
    settings.ROOT_URLCONF = __name__
    settings.ALLOWED_HOSTS = ["localhost"]
    connections["default"].settings_dict["CONN_MAX_AGE"] = 600  # the site's default; tests use 0
    opened = []

    def count(sender, connection, **kwargs):
        opened.append(connection)

    connection_created.connect(count)
    handler = SharedThreadsASGIHandler(threads=2)
    transport = httpx.ASGITransport(app=handler)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            answers = [await client.get("/query/") for _ in range(10)]
    finally:
        connection_created.disconnect(count)
        connections["default"].settings_dict["CONN_MAX_AGE"] = 0
        for executor in handler.executors:
            await asyncio.wrap_future(executor.submit(connections.close_all))

    assert {answer.status_code for answer in answers} == {200}
    assert len(opened) == 2  # one per thread, not one per request


async def test_an_async_view_crosses_to_a_thread_for_no_middleware(settings):
    settings.ROOT_URLCONF = __name__
    settings.ALLOWED_HOSTS = ["localhost"]
    handler = SharedThreadsASGIHandler(threads=2)
    crossings = count_thread_crossings(handler)
    transport = httpx.ASGITransport(app=handler)

    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        waited = await client.get("/async/")
        # Only request_started and request_finished: Django closes stale database
        # connections on the thread that holds them. No middleware crossed.
        assert len(crossings) == 2
        slept = await client.get("/thread/")

    assert (waited.status_code, waited.text) == (200, "waited")
    assert waited.headers["X-Content-Type-Options"] == "nosniff"  # SecurityMiddleware's, kept
    assert slept.status_code == 200


async def test_an_async_view_still_checks_the_host_and_redirects_to_https(settings):
    settings.ROOT_URLCONF = __name__
    settings.ALLOWED_HOSTS = ["localhost"]
    settings.SECURE_SSL_REDIRECT = True
    transport = httpx.ASGITransport(app=SharedThreadsASGIHandler(threads=1))

    async with httpx.AsyncClient(transport=transport, base_url="http://evil.example") as client:
        assert (await client.get("/async/")).status_code == 400
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        answer = await client.get("/async/")
    assert answer.status_code == 301
    assert answer.headers["Location"] == "https://localhost/async/"
