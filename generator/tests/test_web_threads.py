"""Requests share a few threads: a burst of them cannot starve the event loop."""

import asyncio
import threading
import time

import httpx
from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse
from django.urls import path

from generator.web_threads import SharedThreadsASGIHandler


@login_not_required
def thread_name(request: HttpRequest) -> HttpResponse:
    time.sleep(0.01)  # long enough for the requests to overlap
    return HttpResponse(threading.current_thread().name)


urlpatterns = [path("thread/", thread_name)]


async def test_twenty_requests_at_once_are_served_by_the_configured_threads(settings):
    settings.ROOT_URLCONF = __name__
    settings.ALLOWED_HOSTS = ["localhost"]
    transport = httpx.ASGITransport(app=SharedThreadsASGIHandler(threads=2))

    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        answers = await asyncio.gather(*(client.get("/thread/") for _ in range(20)))

    assert {answer.status_code for answer in answers} == {200}
    assert len({answer.text for answer in answers}) == 2
