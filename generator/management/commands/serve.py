"""Run the whole site in one process: the ASGI server and the bridge, on one event loop.

With COMFYUI_URL unset and no ComfyUI answering at the default address, the built-in
emulator is started as a clearly labelled demo backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import httpx
import uvicorn
from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from generator.comfy.bridge import Bridge

logger = logging.getLogger(__name__)


async def comfyui_answers(url: str) -> bool:
    try:
        async with httpx.AsyncClient(timeout=1.0) as client:
            response = await client.get(f"{url}/system_stats")
    except httpx.HTTPError:
        return False
    return response.status_code == 200


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
            url = settings.COMFYUI_URL.rstrip("/")
            is_demo = False
            if not url:
                url = settings.COMFYUI_DEFAULT_URL
                if not await comfyui_answers(url):
                    from generator.comfy.emulator import Emulator

                    emulator = await stack.enter_async_context(Emulator(step_seconds=demo_step_seconds))
                    url, is_demo = emulator.url, True
            self.stdout.write(f"ComfyUI backend: {url}" + (" (built-in demo emulator)" if is_demo else ""))
            bridge = asyncio.create_task(Bridge(url, label="Demo" if is_demo else "", is_demo=is_demo).run())
            config = uvicorn.Config("comfysite.asgi:application", host=host, port=port, lifespan="off")
            self.stdout.write(f"ComfySite at http://{host}:{port}/ (Ctrl-C to stop)")
            try:
                await uvicorn.Server(config).serve()
            finally:
                bridge.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await bridge
