"""The websocket each browser tab opens: its user's job fragments, and nothing of anyone else's."""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from .live import unfinished_cards, user_group

UNAUTHENTICATED = 4401


class JobsConsumer(AsyncWebsocketConsumer):
    group: str | None = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=UNAUTHENTICATED)
            return
        self.group = user_group(user.pk)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        # A tab that (re)connects first gets where every unfinished job is now.
        for html in await database_sync_to_async(unfinished_cards)(user.pk):
            await self.send(text_data=html)

    async def disconnect(self, code: int) -> None:
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)

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
        await self.send(text_data=event["html"])
