"""The API's one NinjaAPI: routes, key authentication, rate limits, errors, OpenAPI schema."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.urls import URLPattern, URLResolver
from ninja import NinjaAPI
from ninja.throttling import UserRateThrottle

from . import jobs, openai_images
from .errors import install_error_handlers
from .keys import ApiKeyAuth

api = NinjaAPI(
    title="ComfySite API",
    version="1",
    description=(
        "Generate images on this site's ComfyUI servers from scripts. Authenticate with "
        "`Authorization: Bearer <key>` (keys: /accounts/api-keys/). `/api/` is the async jobs "
        "API; `/v1/images/` answers OpenAI's Images API, so OpenAI's clients work with only "
        '`base_url` and `api_key` set. Errors are `{"error": {message, type, param, code}}`.'
    ),
    auth=ApiKeyAuth(),
    throttle=[UserRateThrottle(settings.API_RATE_LIMIT)],
    urls_namespace="api",
    openapi_url="api/openapi.json",
    docs_url="api/docs",
)
api.add_router("api/", jobs.router)
api.add_router("v1/", openai_images.router)
install_error_handlers(api)


def _open_to_keys(patterns: list[Any]) -> list[Any]:
    """The API authenticates by key, not by session: the site's log-in requirement (Django's
    LoginRequiredMiddleware) must not send its clients to the log-in page."""
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            _open_to_keys(pattern.url_patterns)
        elif isinstance(pattern, URLPattern):
            pattern.callback = login_not_required(pattern.callback)
    return patterns


# Its root view answers "/": the site's URLs go first (comfysite/urls.py), so "/" is the home page.
urlpatterns = _open_to_keys(api.urls[0])
