"""Show this installation's identity toward ComfyUI, or make a new one."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from generator.models import Installation


class Command(BaseCommand):
    help = (
        "Show the identity this installation uses toward the ComfyUI servers it shares with others "
        "(its websockets' client ids, the tag on its jobs, the names of its uploads). Use --renew "
        "after copying another installation's database (production's, for staging): two "
        "installations with one identity take each other's jobs for their own. Stop the bridges first."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--renew", action="store_true", help="Make a new identity.")

    def handle(self, *args: Any, renew: bool, **options: Any) -> None:
        installation = Installation.renew() if renew else Installation.current()
        self.stdout.write(installation.key.hex)
