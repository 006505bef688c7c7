"""What pages know of the ComfyUI backends: read from the rows the bridge keeps up to date."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from .models import Backend
from .workflows import Workflow

BUNDLED_OBJECT_INFO = Path(__file__).resolve().parent / "comfy" / "data" / "object_info.json"


@cache
def bundled_object_info() -> dict[str, Any]:
    """The core nodes of ComfyUI 0.3.64: the form's fallback before any backend was reached."""
    return json.loads(BUNDLED_OBJECT_INFO.read_text())


@dataclass(frozen=True)
class BackendSummary:
    configured: bool
    online: bool
    demo: bool
    message: str


def backend_summary() -> BackendSummary:
    backends = list(Backend.objects.all())
    online = [b for b in backends if b.online]
    if not backends:
        return BackendSummary(
            False, False, False, "No ComfyUI backend has been contacted yet; jobs wait in the queue."
        )
    if not online:
        reasons = "; ".join(f"{b}: {b.status_message}" for b in backends if b.status_message)
        return BackendSummary(
            True, False, False, f"ComfyUI is unreachable ({reasons}). Jobs wait in the queue."
        )
    demo = all(b.is_demo for b in online)
    message = "Demo backend: images come from ComfySite's built-in ComfyUI emulator." if demo else ""
    return BackendSummary(True, True, demo, message)


def object_info() -> dict[str, Any]:
    """Node definitions for forms: the first online backend's, else the last seen, else bundled."""
    for backend in Backend.objects.order_by("-online", "-checked_at"):
        if backend.object_info:
            return backend.object_info
    return bundled_object_info()


def workflow_problems(workflow: Workflow) -> list[str]:
    """Why `workflow` cannot run on the backends we know ([] when it can, or when none is known)."""
    known = [b for b in Backend.objects.order_by("-online", "-checked_at") if b.node_classes]
    if not known:
        return []
    best: list[str] | None = None
    for backend in known:
        problems = workflow.problems_on(set(backend.node_classes), backend.object_info)
        if not problems:
            return []
        best = problems if best is None else best
    return best or []
