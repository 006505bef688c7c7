"""Requests share a few threads: a burst of them cannot starve the event loop."""

import asyncio
import threading
import time

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
def query(request: HttpRequest) -> HttpResponse:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return HttpResponse("ok")


urlpatterns = [path("thread/", thread_name), path("query/", query)]


async def test_twenty_requests_at_once_are_served_by_the_configured_threads(settings):
    settings.ROOT_URLCONF = __name__
    settings.ALLOWED_HOSTS = ["localhost"]
    transport = httpx.ASGITransport(app=SharedThreadsASGIHandler(threads=2))

    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        answers = await asyncio.gather(*(client.get("/thread/") for _ in range(20)))

    assert {answer.status_code for answer in answers} == {200}
    assert len({answer.text for answer in answers}) == 2


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
