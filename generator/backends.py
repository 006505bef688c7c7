"""The ComfyUI backends: how they are configured, which bridge process drives each (a lease),
and what pages know of them (the rows the bridges keep up to date)."""

from __future__ import annotations

import datetime
import json
from collections import Counter
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

from django.db.models import BooleanField, DateTimeField, ExpressionWrapper, Q
from django.db.models.functions import Now
from django.utils import timezone

from .models import Backend, Installation
from .workflows import Workflow

BUNDLED_OBJECT_INFO = Path(__file__).resolve().parent / "comfy" / "data" / "object_info.json"
HEARTBEAT_STALE_SECONDS = 30  # bridges report every few seconds while connected


@cache
def bundled_object_info() -> dict[str, Any]:
    """The core nodes of ComfyUI 0.3.64: the form's fallback before any backend was reached."""
    return json.loads(BUNDLED_OBJECT_INFO.read_text())


VISITORS_UNREACHABLE = "ComfyUI is unreachable just now. Jobs wait in the queue."


@dataclass(frozen=True)
class BackendSummary:
    configured: bool
    online: bool
    demo: bool
    message: str

    def for_visitors(self) -> BackendSummary:
        """The same news for someone not signed in: without the backends' names, addresses and
        errors, which are the operator's business."""
        if self.online:
            return self
        return BackendSummary(self.configured, False, False, VISITORS_UNREACHABLE)


def _driven() -> Q:
    """Rows a bridge process holds a lease on now (by the database's clock; pages compare by
    their own, as the staff overview does: keep the clocks in sync)."""
    return ~Q(lease_owner="") & Q(lease_expires_at__gt=Now())


def backend_summary() -> BackendSummary:
    """What every page says of the backends. Only a backend a bridge process drives (holds a
    lease on) and that reported lately counts as up: a row left behind by a URL taken out of
    the configuration, or by bridges that stopped, keeps the last word its bridge wrote
    ("online") but nobody sends it jobs. Read on every page: a few columns, compared here."""
    rows = list(
        Backend.objects.values(
            "url",
            "label",
            "online",
            "status_message",
            "is_demo",
            "lease_owner",
            "lease_expires_at",
            "checked_at",
        )
    )
    if not rows:
        return BackendSummary(
            False, False, False, "No ComfyUI backend has been contacted yet; jobs wait in the queue."
        )
    now = timezone.now()
    fresh_since = now - datetime.timedelta(seconds=HEARTBEAT_STALE_SECONDS)
    driven = [b for b in rows if b["lease_owner"] and b["lease_expires_at"] and b["lease_expires_at"] > now]
    online = [b for b in driven if b["online"] and b["checked_at"] and b["checked_at"] >= fresh_since]
    if not online:
        reasons = "; ".join(
            f"{b['label'] or b['url']}: {b['status_message'] or 'no recent report'}" for b in driven
        )
        return BackendSummary(
            True,
            False,
            False,
            f"ComfyUI is unreachable ({reasons or 'no bridge process is driving a backend'}). "
            "Jobs wait in the queue.",
        )
    demo = all(b["is_demo"] for b in online)
    message = "Demo backend: images come from ComfySite's built-in ComfyUI emulator." if demo else ""
    return BackendSummary(True, True, demo, message)


@dataclass(frozen=True)
class NodeCatalog:
    """What the known backends can run, read once per request: the node definitions the form
    takes its choices and ranges from, and what each backend lacks for a workflow."""

    backends: list[Backend]  # those that reported their nodes, online and freshest first

    @property
    def object_info(self) -> dict[str, Any]:
        """The first online backend's node definitions, else the last seen, else bundled."""
        for backend in self.backends:
            if backend.object_info:
                return backend.object_info
        return bundled_object_info()

    def problems(self, workflow: Workflow) -> list[str]:
        """Why `workflow` cannot run on any backend we know ([] when it can, or when none is known)."""
        best: list[str] | None = None
        for backend in self.backends:
            problems = workflow.problems_on(set(backend.node_classes), backend.object_info)
            if not problems:
                return []
            best = problems if best is None else best
        return best or []


def node_catalog() -> NodeCatalog:
    """What the backends bridges drive now can run; if none is driven, what those seen last could
    (a backend taken out of the configuration no longer decides what the form offers)."""
    rows = (
        Backend.objects.annotate(driven=ExpressionWrapper(_driven(), output_field=BooleanField()))
        .order_by("-driven", "-online", "-checked_at")
        .only("object_info", "node_classes")
    )
    known: list[Backend] = [backend for backend in rows if backend.node_classes]
    driven: list[Backend] = [backend for backend in rows if backend.node_classes and backend.driven]
    return NodeCatalog(driven or known)


# -- who we are to ComfyUI ------------------------------------------------------------------------


def installation_key() -> str:
    """This installation's identity (32 hex digits), shared by all its processes, kept across
    restarts: see Installation."""
    return Installation.current().key.hex


# -- configuration -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BackendConfig:
    url: str
    label: str = ""
    weight: int = 1


def parse_backend_urls(entries: list[str]) -> list[BackendConfig]:
    """COMFYUI_URLS entries: `http://host:8188`, optionally `?label=GPU%20A&weight=2`."""
    configs = []
    for entry in entries:
        parts = urlsplit(entry.strip())
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise ValueError(f"COMFYUI_URLS: {entry!r} is not an http(s) URL")
        options = {name: values[-1] for name, values in parse_qs(parts.query).items()}
        unknown = set(options) - {"label", "weight"}
        if unknown:
            raise ValueError(f"COMFYUI_URLS: {entry!r}: unknown option(s) {', '.join(sorted(unknown))}")
        try:
            weight = int(options.get("weight", "1"))
        except ValueError:
            weight = 0
        if weight < 1:
            raise ValueError(f"COMFYUI_URLS: {entry!r}: weight must be a whole number of at least 1")
        url = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
        configs.append(BackendConfig(url, options.get("label", ""), weight))
    return configs


# -- which bridge process drives which backend --------------------------------------------------


def _lease_end(seconds: float) -> ExpressionWrapper:
    # The database's clock, not this machine's: bridges on several machines compare these times.
    return ExpressionWrapper(Now() + datetime.timedelta(seconds=seconds), output_field=DateTimeField())


def take_lease(config: BackendConfig, owner: str, seconds: float, *, is_demo: bool = False) -> bool:
    """Make `owner` the one bridge process driving this backend, if nobody else holds it now."""
    Backend.objects.get_or_create(url=config.url)
    taken = (
        Backend.objects.filter(url=config.url)
        .filter(Q(lease_owner="") | Q(lease_owner=owner) | Q(lease_expires_at__lt=Now()))
        .update(
            lease_owner=owner,
            lease_expires_at=_lease_end(seconds),
            label=config.label,
            weight=config.weight,
            is_demo=is_demo,
        )
    )
    return bool(taken)


def renew_leases(urls: list[str], owner: str, seconds: float) -> set[str]:
    """Extend `owner`'s leases on `urls`; the URLs it still holds."""
    held = Backend.objects.filter(url__in=urls, lease_owner=owner, lease_expires_at__gte=Now())
    kept = set(held.values_list("url", flat=True))
    Backend.objects.filter(url__in=kept, lease_owner=owner).update(lease_expires_at=_lease_end(seconds))
    return kept


def release_leases(urls: list[str], owner: str) -> None:
    """Hand the backends back at once (a clean stop), so another process need not wait."""
    Backend.objects.filter(url__in=urls, lease_owner=owner).update(lease_owner="", lease_expires_at=None)


# -- where the next job goes ---------------------------------------------------------------------


def healthy_backends(fresh_seconds: float) -> list[Backend]:
    """Backends online whose bridge holds their lease and reported within `fresh_seconds` (a dead
    bridge's row goes stale; a row no bridge drives any more is nobody's to send jobs to)."""
    since = timezone.now() - datetime.timedelta(seconds=fresh_seconds)
    return list(Backend.objects.filter(_driven(), online=True, checked_at__gte=since))


def has_least_work(url: str, *, depth: int, peers: list[Backend], load: Counter[str]) -> bool:
    """Whether backend `url` should take the next job: no other healthy backend (of `peers`) with
    room has less work for its weight. `load`: jobs handed to each backend. Equal loads all take
    (they claim different jobs)."""
    weight = next((b.weight for b in peers if b.url == url), 1)
    mine = load[url] / max(1, weight)
    return not any(
        load[b.url] < depth and load[b.url] / max(1, b.weight) < mine for b in peers if b.url != url
    )


# -- health, for staff ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BackendHealth:
    state: str  # "healthy", "unreachable", "silent" or "undriven"
    summary: str
    driven_by: str
    device: str


def backend_health(backend: Backend) -> BackendHealth:
    """How a backend is doing, in words, from what its bridge last wrote."""
    now = timezone.now()
    driven_by = backend.lease_owner if backend.lease_expires_at and backend.lease_expires_at > now else ""
    if not driven_by:
        state, summary = "undriven", "No bridge process is driving it."
    elif not backend.online:
        since = f" since {backend.offline_since:%H:%M:%S}" if backend.offline_since else ""
        state, summary = "unreachable", f"Unreachable{since}: {backend.status_message or 'no answer'}"
    elif backend.checked_at and (now - backend.checked_at).total_seconds() > HEARTBEAT_STALE_SECONDS:
        state, summary = "silent", f"No health report since {backend.checked_at:%H:%M:%S}."
    else:
        state, summary = "healthy", "Healthy."
    return BackendHealth(state, summary, driven_by, describe_device(backend.system_stats))


def describe_device(system_stats: dict[str, Any]) -> str:
    """ "NVIDIA GeForce RTX 4090 · 20.1 of 24.0 GiB free" from ComfyUI's /system_stats."""
    devices = system_stats.get("devices") or []
    if not devices:
        return ""
    device = devices[0]
    gib = 1024**3
    try:
        memory = f" · {device['vram_free'] / gib:.1f} of {device['vram_total'] / gib:.1f} GiB free"
    except (KeyError, TypeError):
        memory = ""
    return f"{device.get('name', 'unknown device')}{memory}"
