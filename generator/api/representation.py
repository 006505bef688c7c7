"""Jobs as the API shows them: the same state a job's card shows, as data."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db.models import Prefetch, QuerySet
from django.urls import reverse

from generator.history import visible_images
from generator.live import LiveState, load_live_states, queue_positions
from generator.models import GeneratedImage, Prompt

from .links import signed_image_path


def jobs_visible_to(viewer: Any) -> QuerySet[Prompt]:
    """The jobs `viewer` may see (their own; staff every one), each with the images the viewer
    may see, in output order."""
    images = visible_images(viewer).order_by("node_id", "output_index")
    prompts = Prompt.objects.all() if viewer.is_staff else Prompt.objects.filter(owner=viewer)
    return prompts.prefetch_related(Prefetch("images", queryset=images))


def jobs_data(prompts: list[Prompt], base: str = "") -> list[dict[str, Any]]:
    """`prompts` (with their images prefetched) as the API shows them. `base`: the site's origin
    for absolute links ("" for links relative to it)."""
    places = queue_positions(prompts)
    lives = load_live_states([p.pk for p in prompts if not p.is_final])
    return [
        job_data(p, p.images.all(), place=places.get(p.pk), live=lives.get(p.pk), base=base) for p in prompts
    ]


def new_job_data(prompt: Prompt, base: str = "") -> dict[str, Any]:
    """A job just queued, as the API shows it: no images yet, nothing live."""
    return job_data(prompt, (), place=queue_positions([prompt]).get(prompt.pk), live=None, base=base)


def job_data(
    prompt: Prompt,
    images: Iterable[GeneratedImage],
    *,
    place: int | None,
    live: LiveState | None,
    base: str = "",
) -> dict[str, Any]:
    live = live or LiveState()
    running = prompt.status == Prompt.Status.RUNNING
    outputs = []
    for image in images:
        path, expires_at = signed_image_path(image.pk)
        outputs.append(
            {
                "id": image.pk,
                "width": image.width,
                "height": image.height,
                "content_type": image.content_type,
                "bytes": image.bytes,
                "url": base + path,
                "expires_at": expires_at,
            }
        )
    return {
        "id": prompt.pk,
        "object": "job",
        "status": prompt.status,
        "workflow": prompt.workflow,
        "prompt": prompt.positive_text,
        "negative_prompt": prompt.negative_text,
        "parameters": prompt.params,
        "created_at": prompt.created_at,
        "started_at": prompt.started_at,
        "finished_at": prompt.finished_at,
        "queue_place": place,
        "progress": 1.0 if prompt.status == Prompt.Status.SUCCEEDED else (live.progress if running else 0.0),
        "node": live.node_title if running else "",
        "step": live.step if running else 0,
        "steps": live.steps if running else 0,
        "cancelling": prompt.cancel_requested_at is not None and not prompt.is_final,
        "error": prompt.error,
        "webhook_url": prompt.webhook_url or None,
        "outputs": outputs,
        "links": {
            "self": base + reverse("api:job", args=[prompt.pk]),
            "events": base + reverse("api:job_events", args=[prompt.pk]),
        },
    }
