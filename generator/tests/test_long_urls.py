"""Addresses longer than any the site makes (10–16 KB, from a script or a paste gone wrong) are
answered 414 in words, and nothing is logged as an error. Before, the log-in redirect (and the
slash-appending one) percent-encoded them past Django's limit on a redirect: a traceback in the
log and a bare 400."""

from __future__ import annotations

import pytest
from channels.testing import HttpCommunicator

from comfysite.asgi import application
from generator.middleware import MAX_URL_CHARS

pytestmark = pytest.mark.django_db(transaction=True)

# 12 KB of "é" as a browser sends it: each %C3%A9 becomes %25C3%25A9 in the log-in redirect's
# `next`, 20 KB in all.
LONG_QUERY = "q=" + "%C3%A9" * 2000


@pytest.fixture(autouse=True)
def _site_host(settings):
    settings.ALLOWED_HOSTS = ["127.0.0.1"]


async def asgi_get(path: str, query: str = "") -> tuple[int, str]:
    """A GET through comfysite.asgi's application, as uvicorn would send it."""
    communicator = HttpCommunicator(application, "GET", path, headers=[(b"host", b"127.0.0.1")])
    communicator.scope["query_string"] = query.encode()
    response = await communicator.get_response(timeout=10)
    return response["status"], response["body"].decode()


@pytest.mark.parametrize("path", ["/", "/history/", "/history"])
async def test_an_anonymous_overlong_address_is_refused_in_words_with_nothing_logged(path, error_log):
    status, body = await asgi_get(path, LONG_QUERY)

    assert status == 414
    assert "This address is too long" in body
    assert f"It has {len(path) + 1 + len(LONG_QUERY)} characters" in body
    assert error_log.records == []


def test_a_signed_in_overlong_address_without_its_slash_is_refused_too(user_client, error_log):
    response = user_client.get("/history?" + LONG_QUERY)

    assert response.status_code == 414
    assert error_log.records == []


async def test_an_address_at_the_limit_still_leads_anonymous_visitors_to_log_in(error_log):
    query = "q=" + "%C3%A9" * ((MAX_URL_CHARS - len("/history/?q=")) // 6)

    status, _ = await asgi_get("/history/", query)

    assert status == 302
    assert error_log.records == []
