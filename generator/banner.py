"""The backend banner every page shows ("Demo backend…", "ComfyUI is unreachable…"), and how an
open tab learns that it changed: signed-in tabs on the Generate page hear it over their
websocket (every bridge process watches the backends and tells them), every other page polls a
small, cached fragment."""

from __future__ import annotations

import asyncio
import logging

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.core.cache import cache
from django.template.loader import render_to_string

from .backends import BackendSummary, backend_summary

logger = logging.getLogger(__name__)

BANNER_GROUP = "backend-banner"  # every signed-in tab's websocket
BANNER_TEMPLATE = "generator/partials/backend_banner.html"
# A poll answers from the cache for this long: a thousand open tabs cost one query a few seconds.
CACHE_SECONDS = 5
WATCH_SECONDS = 2.0  # how often a bridge process compares the banner with what it last told


def banner_summary(*, signed_in: bool) -> BackendSummary:
    summary = backend_summary()
    return summary if signed_in else summary.for_visitors()


def cached_banner_summary(*, signed_in: bool) -> BackendSummary:
    key = f"backend-banner:{'signed-in' if signed_in else 'visitor'}"
    summary = cache.get(key)
    if summary is None:
        summary = banner_summary(signed_in=signed_in)
        cache.set(key, summary, CACHE_SECONDS)
    return summary


def banner_html(summary: BackendSummary, *, poll: bool) -> str:
    """The banner's fragment; `poll`: it asks for itself again every BANNER_POLL_SECONDS."""
    context = {"backend": summary, "poll": poll, "banner_poll_seconds": settings.BANNER_POLL_SECONDS}
    return render_to_string(BANNER_TEMPLATE, context)


def _banner_if_changed(told: BackendSummary | None) -> tuple[BackendSummary, str | None]:
    summary = banner_summary(signed_in=True)
    return summary, (banner_html(summary, poll=False) if summary != told else None)


async def watch_banner(interval: float = WATCH_SECONDS) -> None:
    """Tell every signed-in tab's websocket the banner whenever its words change (a backend went
    down or came back, a bridge stopped reporting), until cancelled. Run by each bridge process:
    with several, a change is told by each, and swapping in the same fragment twice is harmless."""
    layer = get_channel_layer()
    told: BackendSummary | None = None
    while True:
        try:
            summary, html = await sync_to_async(_banner_if_changed)(told)
            if html is not None:
                await layer.group_send(BANNER_GROUP, {"type": "banner.html", "html": html})
                told = summary
        except Exception:  # the database or Redis away for a moment: try again next round
            logger.exception("Could not tell the tabs the backend banner")
        await asyncio.sleep(interval)
