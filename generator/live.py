"""Live job state shared by the bridge, the views and the websocket consumer.

The bridge renders each change once, as an HTML fragment, and sends it to the owner's group;
every browser tab of that user swaps it in by element id (htmx's ws extension). The latest
step-level detail of a running job (node, step) is kept in the cache, so a tab that connects
mid-job is shown where the job is, not where the database last saw it.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from typing import Any, NamedTuple

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.core.cache import cache
from django.db.models import Prefetch
from django.template.loader import render_to_string
from redis.exceptions import RedisError

from .estimates import about, seconds_to_done
from .models import GeneratedImage, Prompt
from .scheduling import site_queue

logger = logging.getLogger(__name__)

LIVE_TTL_SECONDS = 3600
BRIDGE_GROUP = "comfy-bridge"


def user_group(user_id: int) -> str:
    return f"user-{user_id}"


class Relay(NamedTuple):
    """What one change of a user's jobs sends to their group: the fragment the tabs swap in,
    and the same change as data for the API's event streams (see generator.api.events)."""

    owner_id: int
    html: str
    events: tuple[dict[str, Any], ...] = ()
    new_job: int | None = None  # the card of a job just made: tabs add it to their list
    # Queue lines, each with its job (then `html` is their sum): a tab sends those of the jobs it
    # shows, and adds no card for the others (queued jobs it counts under its cards).
    lines: tuple[tuple[int, str], ...] = ()

    def message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"type": "job.html", "html": self.html}
        if self.lines:
            message["lines"] = [list(line) for line in self.lines]
        if self.events:
            message["events"] = list(self.events)
            # Which cards the fragment updates: a tab not showing one is sent the card instead.
            message["jobs"] = sorted({event["job"] for event in self.events})
        if self.new_job is not None:
            message["new_job"] = self.new_job
        return message


def send_relay(relay: Relay) -> None:
    """Send from synchronous code (a view); the bridge sends its own from the event loop."""
    send_to_group(user_group(relay.owner_id), relay.message())


def send_to_group(group: str, message: dict[str, Any]) -> bool:
    """group_send from synchronous code (a view); False when the channel layer is unreachable
    (Redis restarting). What a view sends is a nudge or a refresh: the bridge polls for new
    jobs, a tab is sent its jobs' state when it connects again. The request it answers must not
    fail for it: the job it made or changed is already saved (found by the fault soak: a
    posted job answered 500 while Redis restarted, and a person would post it again)."""
    try:
        async_to_sync(get_channel_layer().group_send)(group, message)
    except (RedisError, OSError) as error:
        logger.warning("Channel layer unavailable; %s not sent to %s: %s", message.get("type"), group, error)
        return False
    return True


def status_event(prompt: Prompt, position: int | None = None) -> dict[str, Any]:
    started_at = prompt.started_at.isoformat() if prompt.started_at else None
    return {
        "job": prompt.pk,
        "kind": "status",
        "status": prompt.status,
        "place": position,
        "started_at": started_at,
    }


def progress_event(prompt_id: int, status: str, live: LiveState) -> dict[str, Any]:
    return {
        "job": prompt_id,
        "kind": "progress",
        "status": status,
        "node": live.node_title,
        "step": live.step,
        "steps": live.steps,
        "progress": round(live.progress, 4),
    }


def preview_event(prompt_id: int, mime_type: str, image_b64: str) -> dict[str, Any]:
    return {"job": prompt_id, "kind": "preview", "mime_type": mime_type, "image": image_b64}


def queue_event(prompt_id: int, place: int | None) -> dict[str, Any]:
    return {"job": prompt_id, "kind": "queue", "place": place}


@dataclass
class LiveState:
    """What the database does not hold of a running job."""

    node_title: str = ""
    step: int = 0
    steps: int = 0
    progress: float = 0.0  # of the whole workflow, 0 to 1
    cancelling: bool = False
    seconds_left: float | None = None  # estimated from the backend's measured speed, if known

    @property
    def step_percent(self) -> int:
        return round(100 * self.step / self.steps) if self.steps else 0


def live_key(prompt_id: int) -> str:
    return f"job-live:{prompt_id}"


def save_live_state(prompt_id: int, state: LiveState) -> None:
    cache.set(live_key(prompt_id), asdict(state), LIVE_TTL_SECONDS)


def load_live_states(prompt_ids: list[int]) -> dict[int, LiveState]:
    if not prompt_ids:
        return {}
    found = cache.get_many([live_key(pk) for pk in prompt_ids])
    return {pk: LiveState(**found[live_key(pk)]) for pk in prompt_ids if live_key(pk) in found}


def queue_positions(prompts: list[Prompt]) -> dict[int, int]:
    """1-based place of each queued prompt in the site's queue (jobs handed to ComfyUI count first)."""
    return waiting_state(prompts, estimate=False)[0]


WAITING_STATUSES = frozenset({Prompt.Status.QUEUED, Prompt.Status.SUBMITTED})


def waiting_state(prompts: list[Prompt], *, estimate: bool = True) -> tuple[dict[int, int], dict[int, float]]:
    """Of the waiting prompts: their place in the site's queue (queued ones), and the seconds
    until each is done where that can be estimated (see generator.estimates)."""
    waiting = [p for p in prompts if p.status in WAITING_STATUSES]
    if not waiting:
        return {}, {}
    queue = site_queue()
    places = queue.places(waiting)
    return places, seconds_to_done(queue, waiting, places) if estimate else {}


def card_context(
    prompt: Prompt,
    *,
    live: LiveState | None = None,
    position: int | None = None,
    images: list[GeneratedImage] | None = None,
    seconds_left: float | None = None,
) -> dict[str, Any]:
    live = live or LiveState()
    if images is None:
        images = list(prompt.images.all()) if prompt.pk else []
    if prompt.cancel_requested_at is not None and not live.cancelling:
        live = replace(live, cancelling=True)
    return {
        "prompt": prompt,
        "live": live,
        "position": position,
        "eta": eta_text(prompt, live, seconds_left),
        "images": images,
        # Cards are their owner's: images a moderator took away, or not yet approved, show a note.
        "show_unreviewed": settings.SHOW_IMAGES_BEFORE_REVIEW,
    }


def eta_text(prompt: Prompt, live: LiveState, seconds_left: float | None = None) -> str:
    """What a card says of the time to done: a running job's from its steps left, a waiting
    job's from the queue ahead of it (`seconds_left`); nothing when it cannot be estimated."""
    if prompt.status == Prompt.Status.RUNNING:
        return about(live.seconds_left)
    if prompt.status in WAITING_STATUSES:
        return about(seconds_left)
    return ""


def render_card(prompt: Prompt, **kwargs: Any) -> str:
    """A job's card: its status (badge and data-status, from one value) and its progress."""
    return render_to_string("generator/partials/job_card.html", card_context(prompt, **kwargs))


def new_card_relay(prompt: Prompt, card: str) -> Relay:
    """A job just made, for its owner's tabs: each adds the card to the top of its list (the
    socket alone adds cards, so a fragment of the job can never come before its card)."""
    return Relay(prompt.owner_id, card, (status_event(prompt),), new_job=prompt.pk)


def render_progress(
    prompt: Prompt, *, live: LiveState, position: int | None = None, seconds_left: float | None = None
) -> str:
    """The queue place, node, step, estimate and bars: what changes at every step, rendered
    without a query. The status itself is the card's (a progress update never changes it)."""
    context = {
        "prompt": prompt,
        "live": live,
        "position": position,
        "eta": eta_text(prompt, live, seconds_left),
    }
    return render_to_string("generator/partials/job_progress.html", context)


def render_image(image: GeneratedImage) -> str:
    context = {"image": image, "show_unreviewed": settings.SHOW_IMAGES_BEFORE_REVIEW}
    return render_to_string("generator/partials/image_card.html", context)


def listed_jobs(user_id: int) -> list[Prompt]:
    """The jobs whose cards a user's generate page shows, newest first: the newest
    settings.JOB_CARDS, then any older one handed to ComfyUI (the one running is what they
    watch). Bounded, however many they queued: the other queued ones are counted (jobs_more)."""
    with_images = Prefetch("images", queryset=GeneratedImage.objects.order_by("node_id", "output_index"))
    mine = Prompt.objects.filter(owner_id=user_id).prefetch_related(with_images)
    recent = list(mine[: settings.JOB_CARDS])
    shown = {p.pk for p in recent}
    older_handed = mine.filter(status__in=Prompt.ON_BACKEND_STATUSES).exclude(pk__in=shown)
    return recent + list(older_handed)


def job_list(user_id: int) -> tuple[str, dict[int, str]]:
    """The list of a user's job cards as they stand now, and which jobs it shows: what the page
    renders, and what a tab's socket sends when it (re)connects in place of the list the page
    was rendered with; with each shown job's status."""
    prompts = listed_jobs(user_id)
    context = {"cards": render_cards(prompts), "more_queued": more_queued(user_id, {p.pk for p in prompts})}
    return render_to_string("generator/partials/job_list.html", context), {p.pk: p.status for p in prompts}


def more_queued(user_id: int, shown: set[int]) -> str:
    """How many of the user's queued jobs have no card among `shown`, as the line under the
    cards says it ("4,980"; "" for none)."""
    # The status filter the partial index prompt_owner_unfinished_turn names, then the one meant.
    unfinished = Prompt.objects.filter(owner_id=user_id, status__in=Prompt.UNFINISHED_STATUSES)
    more = unfinished.filter(status=Prompt.Status.QUEUED).exclude(pk__in=shown).count()
    return f"{more:,}" if more else ""


def more_queued_html(user_id: int, shown: set[int]) -> str:
    """The line under a tab's cards, swapped in by its id when the cards the tab shows change."""
    return render_to_string("generator/partials/jobs_more.html", {"more_queued": more_queued(user_id, shown)})


def render_cards(prompts: list[Prompt]) -> list[str]:
    """Cards as they stand now: queue places and estimates from the database, step detail from
    the cache."""
    positions, estimates = waiting_state(prompts)
    lives = load_live_states([p.pk for p in prompts if not p.is_final])
    return [
        render_card(p, live=lives.get(p.pk), position=positions.get(p.pk), seconds_left=estimates.get(p.pk))
        for p in prompts
    ]
