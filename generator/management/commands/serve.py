"""Run the site: the ASGI server, in one process, on one event loop."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = "Serve ComfySite (HTTP and websockets) with uvicorn."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)

    def handle(self, *args: Any, host: str, port: int, **options: Any) -> None:
        asyncio.run(self.serve(host, port))

    async def serve(self, host: str, port: int) -> None:
        config = uvicorn.Config("comfysite.asgi:application", host=host, port=port, lifespan="off")
        self.stdout.write(f"ComfySite at http://{host}:{port}/ (Ctrl-C to stop)")
        await uvicorn.Server(config).serve()
