"""Middleware of the site's own."""

from __future__ import annotations

from collections.abc import Callable
from inspect import iscoroutinefunction
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string
from django.utils.decorators import sync_and_async_middleware

# The site's own addresses stay far below this (a history search is at most 200 characters).
# Past it, the redirects Django builds from the address (to the log-in page with `next`, which
# percent-encodes it again to up to three times its length; to the address with a slash
# appended; to HTTPS) pass Django's 16,384-character limit on a redirect, which raises, logs a
# traceback and answers 400.
MAX_URL_CHARS = 4096


def url_too_long(request: HttpRequest) -> HttpResponse | None:
    """The 414 (URI Too Long) page, in words, for an address longer than any the site makes."""
    length = len(request.get_full_path())
    if length <= MAX_URL_CHARS:
        return None
    html = render_to_string("errors/url_too_long.html", {"length": length, "limit": MAX_URL_CHARS})
    return HttpResponse(html, status=414)


@sync_and_async_middleware
def refuse_long_urls(get_response: Callable[[HttpRequest], Any]) -> Callable[[HttpRequest], Any]:
    """First in MIDDLEWARE: refuse an overlong address before anything builds a redirect from it.
    Both sync and async, so that it adds no hop between the event loop and a thread."""
    if iscoroutinefunction(get_response):

        async def async_middleware(request: HttpRequest) -> HttpResponse:
            return url_too_long(request) or await get_response(request)

        return async_middleware

    def middleware(request: HttpRequest) -> HttpResponse:
        return url_too_long(request) or get_response(request)

    return middleware
