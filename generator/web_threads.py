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
hold that thread, and every page behind it, for the whole wait.
"""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import ThreadSensitiveContext, iscoroutinefunction, sync_to_async
from django.core.handlers.asgi import ASGIHandler
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.urls import Resolver404, resolve


class SharedThreadsASGIHandler(ASGIHandler):
    def __init__(self, threads: int) -> None:
        super().__init__()
        # The views are synchronous: run the middleware and the view in one crossing to a
        # thread per request. Django's async chain crossed to a thread and back for each of
        # the nine middlewares.
        self.load_middleware(is_async=False)
        # One call at a time per thread, as a thread-sensitive context requires.
        self.executors = [
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"web-{n}") for n in range(threads)
        ]
        self._next_executor = itertools.cycle(self.executors)
        self.async_views = ASGIHandler()  # Django's own: middleware adapted around an async view

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
