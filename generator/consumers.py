"""The websocket each browser tab opens: its user's job fragments, and nothing of anyone else's."""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.core.cache import cache

from .banner import BANNER_GROUP
from .live import job_list, more_queued_html, render_cards, user_group
from .models import Prompt

UNAUTHENTICATED = 4401
TOO_MANY_SOCKETS = 4429

# A user has a tab or two open, each with one socket; twenty is generous. Without a cap one user
# could hold a thousand sockets, each costing a group membership and a copy of every fragment.
MAX_SOCKETS_PER_USER = 20
# The count lives in the cache, so it holds across web processes. A process killed outright
# never says its sockets closed: the count is forgotten an hour after the user's last connect,
# so such leftovers cannot lock anyone out for long.
SOCKET_COUNT_SECONDS = 3600


def _socket_count_key(user_id: int) -> str:
    return f"jobs-sockets:{user_id}"


def claim_socket(user_id: int) -> bool:
    """Count one more open socket for the user; False (and nothing counted) past the cap."""
    key = _socket_count_key(user_id)
    cache.add(key, 0, SOCKET_COUNT_SECONDS)
    try:
        count = cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, SOCKET_COUNT_SECONDS)
        count = 1
    cache.touch(key, SOCKET_COUNT_SECONDS)
    if count > MAX_SOCKETS_PER_USER:
        release_socket(user_id)
        return False
    return True


def release_socket(user_id: int) -> None:
    key = _socket_count_key(user_id)
    try:
        if cache.decr(key) < 0:  # the count expired while this socket was open
            cache.set(key, 0, SOCKET_COUNT_SECONDS)
    except ValueError:  # expired: nothing left to release
        pass


NEW_CARD = '<div hx-swap-oob="afterbegin:#jobs">{card}</div>'


def current_cards(user_id: int, pks: list[int], shown: set[int]) -> tuple[dict[int, tuple[str, str]], str]:
    """The cards of these jobs of the user as they stand now, with their statuses (anyone
    else's: none), and the line counting the queued jobs still without a card once they join
    the `shown` ones."""
    prompts = list(Prompt.objects.filter(owner_id=user_id, pk__in=pks).prefetch_related("images"))
    cards = {p.pk: (p.status, card) for p, card in zip(prompts, render_cards(prompts), strict=True)}
    return cards, more_queued_html(user_id, shown | set(cards))


class JobsConsumer(AsyncWebsocketConsumer):
    """Keeps track of which cards its tab shows, so that every fragment it sends has its
    target on the page: htmx logs an error for a fragment whose element is missing, and the
    update is lost. On connect the tab's whole list is replaced by the list as it stands; a
    new job's card is added to the top; a fragment of a job the tab has no card of (made by
    the API, or one of the queued jobs counted under the cards that started) is sent as the
    job's current card instead, with the count under the cards one less. Queue places of jobs
    it has no card of are not sent: those jobs are counted, and the list stays bounded."""

    group: str | None = None
    counted_user: int | None = None
    shown: dict[int, str]  # the jobs whose cards the tab shows, and each one's status as last sent

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=UNAUTHENTICATED)
            return
        if not await sync_to_async(claim_socket)(user.pk):
            # Accepted only to be closed with a code that says why: a refused handshake
            # reaches the browser as a bare 1006.
            await self.accept()
            await self.close(code=TOO_MANY_SOCKETS)
            return
        self.counted_user = user.pk
        self.group = user_group(user.pk)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.channel_layer.group_add(BANNER_GROUP, self.channel_name)
        await self.accept()
        # A tab that (re)connects first gets its list as it is now: jobs that moved on, ended
        # or began while it was away included.
        html, self.shown = await database_sync_to_async(job_list)(user.pk)
        await self.send(text_data=html)

    async def disconnect(self, code: int) -> None:
        if self.counted_user is not None:
            await sync_to_async(release_socket)(self.counted_user)
            self.counted_user = None
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)
            await self.channel_layer.group_discard(BANNER_GROUP, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Tabs only listen; anything they send is ignored."""

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels hops to the database thread before every handler to close stale connections.
        # Relaying a fragment touches no database, and that hop would queue each progress
        # update behind the bridge's database work: relay it at once.
        if message.get("type") == "job.html":
            await self.job_html(message)
            return
        await super().dispatch(message)

    async def job_html(self, event: dict[str, Any]) -> None:
        new_job = event.get("new_job")
        if new_job is not None:
            html = event["html"] if new_job in self.shown else NEW_CARD.format(card=event["html"])
            self.shown[new_job] = Prompt.Status.QUEUED
            await self.send(text_data=html)
            return
        if "lines" in event:
            # Queue places come on their own (see Bridge._publish_positions), so one can arrive
            # after the card of the job's start: only a job last seen queued gets its line.
            lines = [html for pk, html in event["lines"] if self.shown.get(pk) == Prompt.Status.QUEUED]
            if lines:
                await self.send(text_data="".join(lines))
            return
        missing = [pk for pk in event.get("jobs", ()) if pk not in self.shown]
        if missing:
            # Rendered now, so as new as the fragment or newer: the fragment itself is not sent
            # when it was only about jobs the tab had no card of.
            user_id = self.counted_user or 0
            cards, more = await database_sync_to_async(current_cards)(user_id, missing, set(self.shown))
            self.shown.update((pk, status) for pk, (status, _) in cards.items())
            if cards:
                added = [NEW_CARD.format(card=card) for _, card in cards.values()]
                await self.send(text_data="".join([*added, more]))
            if len(missing) == len(event["jobs"]):
                return
        for change in event.get("events", ()):
            if "status" in change and change["job"] in self.shown and change["job"] not in missing:
                self.shown[change["job"]] = change["status"]
        await self.send(text_data=event["html"])

    async def banner_html(self, event: dict[str, Any]) -> None:
        """The backend banner changed (generator/banner.py): swapped in by its id."""
        await self.send(text_data=event["html"])


class UnknownPathConsumer(AsyncWebsocketConsumer):
    """Any other websocket path: the handshake is refused (HTTP 403). Channels' router raises
    for a path it does not know, which the server logs as a traceback and answers 500: anyone
    could fill the log."""

    async def connect(self) -> None:
        await self.close()
