"""Django's HTTP handling on a few shared threads instead of one new thread per request.

Django's ASGI handler runs each request's synchronous code (middleware, views, the ORM) on a
thread of its own. Fifty requests at once are fifty threads taking turns at the GIL, and the
event loop, which relays every progress fragment to the browsers (and in `manage.py serve`
drives the bridge), waits its turn behind all of them: a burst of form posts held progress back
for over half a second. Here requests share WEB_THREADS threads, handed out in turn; a process
serves more at once by running more processes (`uvicorn --workers N`), not more threads.

The pages' views are synchronous, so each request's middleware and view run in one crossing to
its thread. Since the threads last, so do their database connections (CONN_MAX_AGE): a request
does not open one. Async views (the API's, which wait for a job or stream its events for as
long as it runs) go through Django's own async handling instead: they wait on the event loop,
and hop to the shared threads only for their database work. Run on a thread, one of them would
hold that thread, and every page behind it, for the whole wait. They are the API's, which uses
no session, cookie or CSRF token, so they skip the pages' middleware: Django adapts each
synchronous middleware around an async view as one or two crossings to a thread and back,
seventeen crossings a request, each a wait for the GIL when the machine is busy.
"""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import ThreadSensitiveContext, iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.exception import convert_exception_to_response
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.middleware.security import SecurityMiddleware
from django.urls import Resolver404, resolve

from comfysite.runtime import name_os_thread


class SharedThreadsASGIHandler(ASGIHandler):
    def __init__(self, threads: int) -> None:
        super().__init__()
        # The views are synchronous: run the middleware and the view in one crossing to a
        # thread per request. Django's async chain crossed to a thread and back for each of
        # the nine middlewares.
        self.load_middleware(is_async=False)
        # One call at a time per thread, as a thread-sensitive context requires.
        self.executors = [
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"web-{n}", initializer=name_os_thread)
            for n in range(threads)
        ]
        self._next_executor = itertools.cycle(self.executors)
        self.async_views = AsyncViewsASGIHandler()

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        return await sync_to_async(self.get_response, thread_sensitive=True)(request)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        handler = self.async_views if _is_async_view(scope["path"]) else self
        async with ThreadSensitiveContext(executor=next(self._next_executor)):
            await handler.handle(scope, receive, send)


def _is_async_view(path: str) -> bool:
    try:
        return iscoroutinefunction(resolve(path).func)
    except Resolver404:
        return False


class AsyncViewsASGIHandler(ASGIHandler):
    """Django's ASGI handler for the async views, with their one middleware instead of the
    pages' chain."""

    def load_middleware(self, is_async: bool = False) -> None:
        # What BaseHandler.load_middleware sets (django-stubs leave these private names out).
        self._view_middleware: list[Any] = []
        self._template_response_middleware: list[Any] = []
        self._exception_middleware: list[Any] = []
        view = convert_exception_to_response(self._get_response_async)  # type: ignore[attr-defined]
        self._middleware_chain = convert_exception_to_response(ApiRequestMiddleware(view))


class ApiRequestMiddleware:
    """What the pages' middleware does that an API request needs, on the event loop: the
    ALLOWED_HOSTS check (CommonMiddleware's) and SecurityMiddleware's HTTPS redirect and
    headers, neither of which touches the database."""

    async_capable = True
    sync_capable = False

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response
        self.security = SecurityMiddleware(get_response)
        markcoroutinefunction(self)

    async def __call__(self, request: HttpRequest) -> HttpResponseBase:
        request.get_host()  # DisallowedHost: a 400, as on every page
        redirect = self.security.process_request(request)
        if redirect is not None:
            return redirect
        response = await self.get_response(request)
        return self.security.process_response(request, response)
