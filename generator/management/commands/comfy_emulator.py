"""Run the built-in ComfyUI emulator on a real port (the demo backend, and a test double)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from generator.comfy.emulator import Emulator


class Command(BaseCommand):
    help = "Serve a ComfyUI emulator that answers like ComfyUI 0.3.64 and paints demo pictures."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8188)
        parser.add_argument("--step-seconds", type=float, default=0.1, help="Time per sampling step.")

    def handle(self, *args: Any, host: str, port: int, step_seconds: float, **options: Any) -> None:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(self.serve(host, port, step_seconds))

    async def serve(self, host: str, port: int, step_seconds: float) -> None:
        async with Emulator(host=host, port=port, step_seconds=step_seconds) as emulator:
            self.stdout.write(f"ComfyUI emulator at {emulator.url} (Ctrl-C to stop)")
            await asyncio.Event().wait()
