"""The request the site's views get, as the type checker should see it."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.http import HttpRequest
from django_htmx.middleware import HtmxDetails


class AuthenticatedRequest(HttpRequest):
    """Behind LoginRequiredMiddleware (pages) or a key (the API), `user` is a User; django-htmx's
    middleware adds `htmx`."""

    user: User
    htmx: HtmxDetails
