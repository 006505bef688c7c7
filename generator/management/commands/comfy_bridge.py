"""Run a bridge process (production): web processes and bridges meet in the database and Redis."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from comfysite.runtime import prepare_long_running_process
from generator.backends import parse_backend_urls
from generator.comfy.bridge import BridgeSettings
from generator.comfy.pool import BridgePool


class Command(BaseCommand):
    help = (
        "Drive the ComfyUI backends of COMFYUI_URLS from the site's job queue. Several processes may "
        "run: each backend is driven by one of them at a time, and the others take over if it dies."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--url",
            action="append",
            dest="urls",
            help="A ComfyUI base URL (repeatable; default: COMFYUI_URLS, or COMFYUI_URL)",
        )

    def handle(self, *args: Any, urls: list[str] | None, **options: Any) -> None:
        try:
            backends = parse_backend_urls(urls or settings.COMFYUI_URLS)
        except ValueError as error:
            raise CommandError(str(error)) from None
        if not backends:
            raise CommandError("Set COMFYUI_URLS (or COMFYUI_URL, or pass --url) to the ComfyUI servers.")
        if not settings.REDIS_URL:
            self.stderr.write(
                "REDIS_URL is not set: with the in-memory channel layer, progress cannot reach web "
                "processes. Use `manage.py serve` for a single-process site."
            )
        pool = BridgePool(
            backends,
            lease_seconds=settings.BRIDGE_LEASE_SECONDS,
            settings=BridgeSettings(dead_seconds=settings.BACKEND_DEAD_SECONDS),
        )
        self.stdout.write(f"Bridge {pool.owner} for {', '.join(b.url for b in backends)} (Ctrl-C to stop)")
        prepare_long_running_process()
        asyncio.run(run_until_stopped(pool))


async def run_until_stopped(pool: BridgePool) -> None:
    """Run the pool until SIGINT or SIGTERM (what systemd and Docker send), then stop cleanly:
    leases are handed back at once, so another bridge process takes the backends over without
    waiting for them to run out."""
    running = asyncio.create_task(pool.run())
    loop = asyncio.get_running_loop()
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(stop_signal, running.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await running
