"""Run the whole site in one process: the ASGI server and the bridge, on one event loop.

It drives every backend of COMFYUI_URLS (or COMFYUI_URL). With neither set and no ComfyUI
answering at the default address, the built-in emulator is started as a clearly labelled demo
backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import uvicorn
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from generator.backends import BackendConfig, parse_backend_urls
from generator.comfy.bridge import BridgeSettings
from generator.comfy.client import ComfyClient
from generator.comfy.errors import ComfyError
from generator.comfy.pool import BridgePool

logger = logging.getLogger(__name__)


async def comfyui_answers(url: str) -> bool:
    async with ComfyClient(url, timeout=1.0) as comfy:
        try:
            await comfy.system_stats()
        except ComfyError:
            return False
    return True


class Command(BaseCommand):
    help = "Serve ComfySite (HTTP and websockets) with the bridge to ComfyUI in the same process."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument(
            "--demo-step-seconds",
            type=float,
            default=0.15,
            help="Time per sampling step of the demo backend, so progress can be watched.",
        )

    def handle(self, *args: Any, host: str, port: int, demo_step_seconds: float, **options: Any) -> None:
        asyncio.run(self.serve(host, port, demo_step_seconds))

    async def serve(self, host: str, port: int, demo_step_seconds: float) -> None:
        async with contextlib.AsyncExitStack() as stack:
            try:
                backends = parse_backend_urls(settings.COMFYUI_URLS)
            except ValueError as error:
                raise CommandError(str(error)) from None
            demo_urls: frozenset[str] = frozenset()
            if not backends:
                url = settings.COMFYUI_DEFAULT_URL
                if not await comfyui_answers(url):
                    from generator.comfy.emulator import Emulator

                    emulator = await stack.enter_async_context(Emulator(step_seconds=demo_step_seconds))
                    url, demo_urls = emulator.url, frozenset({emulator.url})
                backends = [BackendConfig(url, "Demo" if demo_urls else "")]
            for backend in backends:
                demo = " (built-in demo emulator)" if backend.url in demo_urls else ""
                self.stdout.write(f"ComfyUI backend: {backend.url}{demo}")
            pool = BridgePool(
                backends,
                lease_seconds=settings.BRIDGE_LEASE_SECONDS,
                settings=BridgeSettings(dead_seconds=settings.BACKEND_DEAD_SECONDS),
                demo_urls=demo_urls,
            )
            bridges = asyncio.create_task(pool.run())
            config = uvicorn.Config(
                "comfysite.asgi:application",
                host=host,
                port=port,
                lifespan="off",
                # Compressing every fragment cost the event loop a tenth of its time under load,
                # to save a few hundred bytes each: the big ones, live previews, are JPEG or PNG.
                ws_per_message_deflate=False,
            )
            self.stdout.write(f"ComfySite at http://{host}:{port}/ (Ctrl-C to stop)")
            try:
                await uvicorn.Server(config).serve()
            finally:
                bridges.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await bridges
