"""A job's live events for API clients: the same changes the web card gets, as data.

The bridge sends each change once to the owner's channel-layer group, with the fragment for the
tabs and the same change as data (generator.live.Relay); a listener here joins that group and
keeps what concerns its job. The database stays the source of truth: when nothing has come for
a while, the job is read again, so a change no bridge relayed (a cancel in the web page, a
relay lost with a Redis restart) is still seen.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.core.serializers.json import DjangoJSONEncoder

from generator.live import user_group
from generator.models import Prompt

from .representation import jobs_data, jobs_visible_to

QUIET_SECONDS = 5.0  # no event this long: read the job again, and keep the connection alive
RETRY_MILLISECONDS = 1000


class JobListener:
    """Messages for one user's jobs, from the moment it is entered."""

    def __init__(self, user_id: int) -> None:
        self.group = user_group(user_id)
        self.layer = get_channel_layer()
        self.channel = ""

    async def __aenter__(self) -> JobListener:
        self.channel = await self.layer.new_channel()
        await self.layer.group_add(self.group, self.channel)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.layer.group_discard(self.group, self.channel)

    async def events_for(self, job_id: int, seconds: float) -> list[dict[str, Any]] | None:
        """The events about `job_id` in the next message that has some; None after `seconds`
        with none."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = await asyncio.wait_for(self.layer.receive(self.channel), left)
            except TimeoutError:
                return None
            events = [e for e in message.get("events", ()) if e.get("job") == job_id]
            if events:
                return events
        return None


def _load_job(viewer: Any, job_id: int, base: str) -> dict[str, Any] | None:
    prompt = jobs_visible_to(viewer).filter(pk=job_id).first()
    return jobs_data([prompt], base)[0] if prompt else None


def _owner_and_job(viewer: Any, job_id: int, base: str) -> tuple[int, dict[str, Any]] | None:
    """Whose job it is (whose group its events go to), and the job; None if `viewer` may not
    see it."""
    prompt = jobs_visible_to(viewer).filter(pk=job_id).first()
    return (prompt.owner_id, jobs_data([prompt], base)[0]) if prompt else None


load_job = sync_to_async(_load_job)
owner_and_job = sync_to_async(_owner_and_job)


def is_final(job: dict[str, Any]) -> bool:
    return job["status"] in Prompt.FINAL_STATUSES


async def wait_until_final(owner: Any, job_id: int, base: str = "") -> dict[str, Any] | None:
    """The job once it has ended (None if it was deleted meanwhile). No time limit: it waits as
    long as the job takes, and the job goes on if the caller stops waiting."""
    async with JobListener(owner.pk) as listener:
        while True:
            job = await load_job(owner, job_id, base)
            if job is None or is_final(job):
                return job
            events = await listener.events_for(job_id, QUIET_SECONDS)
            while events is not None and not any(_ends(event) for event in events):
                events = await listener.events_for(job_id, QUIET_SECONDS)


def _ends(event: dict[str, Any]) -> bool:
    return event["kind"] == "status" and event["status"] in Prompt.FINAL_STATUSES


# -- Server-Sent Events ---------------------------------------------------------------------


def finished_event_id(job: dict[str, Any]) -> str:
    """The finished event's id names the job's end: a client that saw it, and reconnects (as
    EventSource does when a stream ends), is told there is nothing more. Any other id it
    resumes from is followed by the job's state now, its end included."""
    return f"end-{job['id']}"


class EventIds:
    """Increasing ids: microseconds of the wall clock, so a resumed stream's ids follow the
    ids its first connection gave."""

    def __init__(self) -> None:
        self.last = 0

    def next(self) -> int:
        self.last = max(self.last + 1, time.time_ns() // 1000)
        return self.last


def _sse(event: str, data: Any, event_id: int | str) -> str:
    payload = json.dumps(data, cls=DjangoJSONEncoder, separators=(",", ":"))  # dates as the API's
    return f"id: {event_id}\nevent: {event}\ndata: {payload}\n\n"


def _live_data(event: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    kind = event["kind"]
    fields: tuple[str, ...]
    if kind == "progress":
        fields = ("status", "node", "step", "steps", "progress")
    elif kind == "preview":
        return "preview", {"job": event["job"], "mime_type": event["mime_type"], "data": event["image"]}
    else:  # queue
        fields = ("place",)
    return kind, {"job": event["job"], **{name: event[name] for name in fields}}


async def job_event_stream(viewer: Any, owner_id: int, job_id: int, base: str) -> AsyncIterator[str]:
    """The job's state now (`status`, or `finished` if it has ended), then each change as it
    happens: `queue`, `progress`, `preview`, `status`, and `finished`, after which it ends.

    The job is read from the database when the stream opens, when it ends (for its outputs) and
    after a quiet spell; a `status` in between is the job as last read, with what the bridge
    told of the change: fifty streams do not each read their job at every step of it."""
    ids = EventIds()
    yield f"retry: {RETRY_MILLISECONDS}\n\n"
    async with JobListener(owner_id) as listener:
        job = await load_job(viewer, job_id, base)  # read once we listen: no change falls between
        if job is not None and not is_final(job):
            yield _sse("status", job, ids.next())
        while job is not None and not is_final(job):
            events = await listener.events_for(job_id, QUIET_SECONDS)
            if events is None:
                yield ": still here\n\n"
                now = await load_job(viewer, job_id, base)  # a change no bridge told of, if any
                told = now is None or now["status"] != job["status"]
            else:
                for event in events:
                    if event["kind"] != "status":
                        yield _sse(*_live_data(event), ids.next())
                changes = [event for event in events if event["kind"] == "status"]
                if not changes:
                    continue
                told, change = True, changes[-1]
                now = await load_job(viewer, job_id, base) if _ends(change) else _changed(job, change)
            job = now
            if told and job is not None and not is_final(job):
                yield _sse("status", job, ids.next())
        if job is not None:
            yield _sse("finished", job, finished_event_id(job))


def _changed(job: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    """`job` after the status change the bridge told of."""
    started_at = change["started_at"]
    return {
        **job,
        "status": change["status"],
        "queue_place": change["place"],
        "started_at": datetime.datetime.fromisoformat(started_at) if started_at else None,
    }
