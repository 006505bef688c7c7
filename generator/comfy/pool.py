"""A bridge process: drives each configured ComfyUI backend it holds a lease on.

Any number of bridge processes may run against one database. Each backend is driven by one
process at a time (one websocket owner, one client id): a process takes a backend's lease when
nobody holds it, renews it every round, and stops driving a backend whose lease it lost. A
process that dies stops renewing; once its leases run out, the others take its backends over and
reconcile the jobs on them with ComfyUI. A process takes at most one more backend per round, so
processes started together share the backends out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid

from asgiref.sync import sync_to_async
from django.db import connections

from generator.backends import BackendConfig, installation_key, release_leases, renew_leases, take_lease
from generator.banner import watch_banner
from generator.webhooks import WebhookSender

from .bridge import Bridge, BridgeSettings

logger = logging.getLogger(__name__)


def process_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class BridgePool:
    def __init__(
        self,
        backends: list[BackendConfig],
        *,
        lease_seconds: float,
        settings: BridgeSettings | None = None,
        demo_urls: frozenset[str] = frozenset(),
        owner: str | None = None,
    ) -> None:
        self.backends = backends
        self.lease_seconds = lease_seconds
        self.round_seconds = min(1.0, lease_seconds / 4)
        self.settings = settings or BridgeSettings()
        self.demo_urls = demo_urls
        self.owner = owner or process_name()
        self.installation = ""  # read from the database at the first round
        self.bridges: dict[str, tuple[Bridge, asyncio.Task]] = {}
        self.places_lock = asyncio.Lock()  # one bridge at a time tells the queue's moves

    async def run(self) -> None:
        """Drive backends, send due webhooks and tell open tabs the backend banner, until
        cancelled; then hand the backends' leases back at once."""
        webhooks = asyncio.create_task(WebhookSender().run(), name="webhooks")
        banner = asyncio.create_task(watch_banner(), name="backend banner")
        try:
            while True:
                try:
                    await self._tend()
                except Exception:  # the database away for a moment: try again next round
                    logger.exception("Bridge pool %s: could not renew or take leases", self.owner)
                await asyncio.sleep(self.round_seconds)
        finally:
            webhooks.cancel()
            banner.cancel()
            await asyncio.gather(webhooks, banner, return_exceptions=True)
            await self._stop(list(self.bridges))
            with contextlib.suppress(Exception):
                await sync_to_async(release_leases)([config.url for config in self.backends], self.owner)
                await sync_to_async(connections.close_all)()

    async def _tend(self) -> None:
        if not self.installation:
            self.installation = await sync_to_async(installation_key)()
        held = list(self.bridges)
        if held:
            kept = await sync_to_async(renew_leases)(held, self.owner, self.lease_seconds)
            lost = [url for url in held if url not in kept]
            for url in lost:
                logger.warning("Bridge pool %s: lost the lease on %s to another process", self.owner, url)
            await self._stop(lost)
        for url, (_, task) in list(self.bridges.items()):
            if task.done():  # a bridge that crashed is started again, lease kept
                reason = "cancelled" if task.cancelled() else repr(task.exception())
                logger.error("Bridge %s stopped (%s); starting it again", url, reason)
                del self.bridges[url]
        for config in self.backends:
            if config.url in self.bridges:
                continue
            is_demo = config.url in self.demo_urls
            if await sync_to_async(take_lease)(config, self.owner, self.lease_seconds, is_demo=is_demo):
                self._start(config, is_demo)
                break

    def _start(self, config: BackendConfig, is_demo: bool) -> None:
        logger.info("Bridge pool %s: driving %s", self.owner, config.url)
        bridge = Bridge(
            config.url,
            label=config.label,
            weight=config.weight,
            is_demo=is_demo,
            installation=self.installation,
            settings=self.settings,
            lease_owner=self.owner,
            places_lock=self.places_lock,
        )
        self.bridges[config.url] = (bridge, asyncio.create_task(bridge.run(), name=f"bridge {config.url}"))

    async def _stop(self, urls: list[str]) -> None:
        tasks = [self.bridges.pop(url)[1] for url in urls if url in self.bridges]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
