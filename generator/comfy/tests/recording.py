"""Reading the recordings of a real ComfyUI 0.3.64 (see recordings/README.md)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

RECORDINGS = Path(__file__).resolve().parent / "recordings"
TRANSCRIPTS = sorted(p.stem for p in RECORDINGS.glob("*.jsonl"))
SAMPLES = RECORDINGS / "samples"


def lines(name: str) -> Iterator[dict[str, Any]]:
    with (RECORDINGS / f"{name}.jsonl").open() as handle:
        for line in handle:
            yield json.loads(line)


def received_messages(name: str) -> list[dict[str, Any]]:
    """The websocket text messages the client received, in order."""
    return [r["msg"] for r in lines(name) if r.get("dir") == "ws" and "msg" in r and not r.get("sent")]


def binary_frames(name: str) -> list[dict[str, Any]]:
    return [r for r in lines(name) if r.get("binary")]


def http_exchanges(name: str) -> list[dict[str, Any]]:
    return [r for r in lines(name) if r.get("dir") == "http"]


def http_errors() -> list[dict[str, Any]]:
    return json.loads((RECORDINGS / "http_errors.json").read_text())


def workflow(name: str) -> dict[str, Any]:
    return json.loads((RECORDINGS / "workflows" / f"{name}.json").read_text())
