"""Run the built-in ComfyUI emulator on a real port (the demo backend, and a test double)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from generator.comfy.emulator import Emulator, serve_forever


class Command(BaseCommand):
    help = "Serve a ComfyUI emulator that answers like ComfyUI 0.3.64 and paints demo pictures."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8188)
        parser.add_argument("--step-seconds", type=float, default=0.1, help="Time per sampling step.")
        parser.add_argument("--no-preview", action="store_true", help="Send no preview frames.")
        parser.add_argument("--root", help="Folder for input/, output/ and temp/ (default: a temporary one).")
        parser.add_argument(
            "--fault-control",
            action="store_true",
            help="Serve POST /_faults to loopback clients, so tests can break it (see emulator/control.py).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        emulator = Emulator(
            host=options["host"],
            port=options["port"],
            step_seconds=options["step_seconds"],
            preview=not options["no_preview"],
            root=options["root"],
            fault_control=options["fault_control"],
        )
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_forever(emulator, announce=self.stdout.write))
