"""Live job state shared by the bridge, the views and the websocket consumer.

The bridge renders each change once, as an HTML fragment, and sends it to the owner's group;
every browser tab of that user swaps it in by element id (htmx's ws extension). The latest
step-level detail of a running job (node, step) is kept in the cache, so a tab that connects
mid-job is shown where the job is, not where the database last saw it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, NamedTuple

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.core.cache import cache
from django.db.models import Prefetch
from django.template.loader import render_to_string

from .models import GeneratedImage, Prompt
from .scheduling import site_queue

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

    def message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"type": "job.html", "html": self.html}
        if self.events:
            message["events"] = list(self.events)
        return message


def send_relay(relay: Relay) -> None:
    """Send from synchronous code (a view); the bridge sends its own from the event loop."""
    async_to_sync(get_channel_layer().group_send)(user_group(relay.owner_id), relay.message())


def status_event(prompt: Prompt, position: int | None = None) -> dict[str, Any]:
    return {"job": prompt.pk, "kind": "status", "status": prompt.status, "place": position}


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
    wanted = [p for p in prompts if p.status == Prompt.Status.QUEUED]
    if not wanted:
        return {}
    return site_queue().places(wanted)


def card_context(
    prompt: Prompt,
    *,
    live: LiveState | None = None,
    position: int | None = None,
    images: list[GeneratedImage] | None = None,
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
        "images": images,
        # Cards are their owner's: images a moderator took away, or not yet approved, show a note.
        "show_unreviewed": settings.SHOW_IMAGES_BEFORE_REVIEW,
    }


def render_card(prompt: Prompt, *, catch_up: bool = False, **kwargs: Any) -> str:
    """A job's card. `catch_up`: the card a form post answers with fetches itself again once
    shown, since the job's first websocket updates may have come before it was on the page."""
    return render_to_string(
        "generator/partials/job_card.html", {**card_context(prompt, **kwargs), "catch_up": catch_up}
    )


def render_progress(prompt: Prompt, *, live: LiveState, position: int | None = None) -> str:
    """The status line and bars alone: what changes at every step, rendered without a query."""
    context = {"prompt": prompt, "live": live, "position": position}
    return render_to_string("generator/partials/job_progress.html", context)


def render_image(image: GeneratedImage) -> str:
    context = {"image": image, "show_unreviewed": settings.SHOW_IMAGES_BEFORE_REVIEW}
    return render_to_string("generator/partials/image_card.html", context)


def shown_jobs(user_id: int) -> list[Prompt]:
    """The jobs whose cards a user's generate page shows: the newest settings.JOB_CARDS, however
    many they queued (the others are counted, see more_queued_html)."""
    with_images = Prefetch("images", queryset=GeneratedImage.objects.order_by("node_id", "output_index"))
    return list(Prompt.objects.filter(owner_id=user_id).prefetch_related(with_images)[: settings.JOB_CARDS])


def more_queued_html(user_id: int, shown: list[Prompt]) -> str:
    """The line under a user's cards counting their queued jobs that have no card there."""
    return render_to_string(
        "generator/partials/jobs_more.html", {"more_queued": _more_queued(user_id, shown)}
    )


def _more_queued(user_id: int, shown: list[Prompt]) -> str:
    # The status filter the partial index prompt_owner_unfinished_turn names, then the one meant.
    unfinished = Prompt.objects.filter(owner_id=user_id, status__in=Prompt.UNFINISHED_STATUSES)
    queued = unfinished.filter(status=Prompt.Status.QUEUED).count()
    more = max(0, queued - sum(p.status == Prompt.Status.QUEUED for p in shown))
    return f"{more:,}" if more else ""


def unfinished_cards(user_id: int) -> str:
    """What a (re)connecting tab needs, in one message ("" when nothing): the cards of the
    unfinished jobs its page shows, as they stand now, and the count of the queued ones it does
    not show. Bounded, however many jobs the user queued."""
    shown = shown_jobs(user_id)
    unfinished = [p for p in reversed(shown) if not p.is_final]  # oldest first, as they run
    more = _more_queued(user_id, shown)
    if not unfinished and not more:
        return ""
    line = render_to_string("generator/partials/jobs_more.html", {"more_queued": more})
    return "".join([*render_cards(unfinished), line])


def render_cards(prompts: list[Prompt]) -> list[str]:
    """Cards as they stand now: queue places from the database, step detail from the cache."""
    positions = queue_positions(prompts)
    lives = load_live_states([p.pk for p in prompts if not p.is_final])
    return [render_card(p, live=lives.get(p.pk), position=positions.get(p.pk)) for p in prompts]
