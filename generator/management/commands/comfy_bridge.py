"""Run the bridge alone (production): web processes and bridges meet in the database and Redis."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from generator.comfy.bridge import Bridge


class Command(BaseCommand):
    help = "Drive the ComfyUI backend named by COMFYUI_URL from the site's job queue."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--url", default=settings.COMFYUI_URL, help="ComfyUI base URL (default: COMFYUI_URL)"
        )

    def handle(self, *args: Any, url: str, **options: Any) -> None:
        if not url:
            raise CommandError("Set COMFYUI_URL (or pass --url) to the ComfyUI server to drive.")
        if not settings.REDIS_URL:
            self.stderr.write(
                "REDIS_URL is not set: with the in-memory channel layer, progress cannot reach web "
                "processes. Use `manage.py serve` for a single-process site."
            )
        self.stdout.write(f"Bridge to {url} (Ctrl-C to stop)")
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(Bridge(url).run())
