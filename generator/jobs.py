"""The database side of running jobs: synchronous functions the bridge calls in a worker thread.

Every status change goes through Prompt.transition_to, whose conditional update makes a change
that lost a race (a user's cancel, another bridge) raise IllegalTransition instead of winning.
"""

from __future__ import annotations

import contextlib
import io
import logging
import mimetypes
import sqlite3
import uuid
import warnings
from dataclasses import dataclass
from typing import Any

from django.core.files.base import ContentFile
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from .estimates import ADDED_UP, Backlog, about
from .live import (
    LiveState,
    Relay,
    queue_event,
    render_card,
    render_progress,
    save_live_state,
    status_event,
    waiting_state,
)
from .models import GeneratedImage, IllegalTransition, Prompt
from .quotas import users_at_running_limit
from .scheduling import RATE_FIELDS, SiteQueue, front_turn, queued_in_order, rate_params, site_queue
from .workflows import WorkflowError, get_workflow

logger = logging.getLogger(__name__)

THUMBNAIL_SIZE = (384, 384)
# Outputs larger than this are kept without a thumbnail: decoding one takes 4 bytes a pixel.
THUMBNAIL_MAX_PIXELS = 1 << 28
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_SUBMIT_ATTEMPTS = 2
CANDIDATES = 20  # queued jobs looked at per claim: enough to pass over owners at their limit
S = Prompt.Status


@dataclass(frozen=True)
class Job:
    """What the bridge needs to know of a job it drives."""

    pk: int
    owner_id: int
    comfy_prompt_id: str
    workflow: str
    status: str
    cancel_requested: bool
    submit_attempts: int
    params: dict[str, Any]


def _job(prompt: Prompt) -> Job:
    return Job(
        pk=prompt.pk,
        owner_id=prompt.owner_id,
        comfy_prompt_id=str(prompt.comfy_prompt_id or ""),
        workflow=prompt.workflow,
        status=prompt.status,
        cancel_requested=prompt.cancel_requested_at is not None,
        submit_attempts=prompt.submit_attempts,
        params=prompt.params,
    )


@dataclass(frozen=True)
class Submission:
    """A claimed job with what goes to ComfyUI: its graph and, for image workflows, its image."""

    job: Job
    graph: dict[str, Any]
    image: bytes | None = None
    image_input: tuple[str, str] | None = None  # (node id, input name) that names the upload
    others_waiting: bool = True  # whether other jobs were queued behind it when it was claimed

    def with_uploaded_image(self, name: str) -> dict[str, Any]:
        if self.image_input is None:
            return self.graph
        node_id, input_name = self.image_input
        self.graph[node_id]["inputs"][input_name] = name
        return self.graph


def claim_next_job(
    backend_url: str, *, on_demo_backend: bool, queue: SiteQueue | None = None
) -> Submission | None:
    """Move the next queued prompt to `submitted` on this backend; return what to send.
    `queue`: the site's queue if just read.

    The next prompt is the first in the fair order whose owner is below their running limit,
    read from the head of the queue's index: the same few queries however long the queue.
    The row gets its ComfyUI prompt id before anything is sent, so a crash between the POST
    and our next write is found again by reconciliation.
    """
    queue = queue or site_queue()
    blocked_owners = users_at_running_limit(queue.on_backend)
    candidates = list(queued_in_order().exclude(owner_id__in=blocked_owners)[:CANDIDATES])
    for index, prompt in enumerate(candidates):
        try:
            workflow = get_workflow(prompt.workflow)
        except WorkflowError as error:
            _try_transition(prompt, S.FAILED, error=f"This job's workflow is no longer available: {error}.")
            continue
        if not _claim(prompt, backend_url, on_demo_backend):
            continue
        values = {**prompt.params, "prompt": prompt.positive_text, "negative_prompt": prompt.negative_text}
        graph = workflow.fill(values, filename_prefix=f"comfysite/job{prompt.pk}")
        others_waiting = index + 1 < len(candidates)
        image_parameter = workflow.parameters.get("image")
        if image_parameter is None or not prompt.source_image:
            return Submission(_job(prompt), graph, others_waiting=others_waiting)
        with prompt.source_image.open("rb") as handle:
            image = handle.read()
        image_input = (image_parameter.node_id, image_parameter.input_name)
        return Submission(_job(prompt), graph, image, image_input, others_waiting)
    return None


def _claim(prompt: Prompt, backend_url: str, on_demo_backend: bool) -> bool:
    """Exactly one bridge wins a job: the conditional update of transition_to guards every
    database. On PostgreSQL the row is first locked with SKIP LOCKED, so bridges claiming at
    once pass over each other's rows instead of queueing on them."""
    if not connection.features.has_select_for_update_skip_locked:  # SQLite: the update alone decides
        return _mark_submitted(prompt, backend_url, on_demo_backend)
    with transaction.atomic():
        locked = Prompt.objects.select_for_update(skip_locked=True).filter(pk=prompt.pk, status=S.QUEUED)
        return bool(locked.values_list("pk")) and _mark_submitted(prompt, backend_url, on_demo_backend)


def _mark_submitted(prompt: Prompt, backend_url: str, on_demo_backend: bool) -> bool:
    return _try_transition(
        prompt,
        S.SUBMITTED,
        comfy_prompt_id=uuid.uuid4(),
        backend=backend_url,
        on_demo_backend=on_demo_backend,
        submit_attempts=prompt.submit_attempts + 1,
    )


def release_jobs_on(backend_url: str, reason: str) -> list[int]:
    """A backend that died: its unfinished jobs go back to the queue (or fail on a second loss)."""
    moved = [job.pk for job in jobs_on_backend(backend_url)]
    for pk in moved:
        requeue_or_fail(pk, reason)
    return moved


def cancel_requested(pks: list[int]) -> list[int]:
    """Of these jobs, those whose owner asked to cancel them."""
    return list(
        Prompt.objects.filter(pk__in=pks, cancel_requested_at__isnull=False).values_list("pk", flat=True)
    )


def jobs_on_backend(backend_url: str) -> list[Job]:
    prompts = Prompt.objects.filter(backend=backend_url, status__in=Prompt.ON_BACKEND_STATUSES).order_by("pk")
    return [_job(p) for p in prompts]


def unknown_prompt_ids(prompt_ids: list[str]) -> list[str]:
    """Of these ComfyUI prompt ids, those no job of ours waits on (on any backend): copies left
    in a ComfyUI's queue by a job that was sent elsewhere since, or given up."""
    valid = []
    for prompt_id in prompt_ids:
        with contextlib.suppress(ValueError):
            valid.append(uuid.UUID(prompt_id))
    live = Prompt.objects.filter(comfy_prompt_id__in=valid, status__in=Prompt.ON_BACKEND_STATUSES)
    known = {str(value) for value in live.values_list("comfy_prompt_id", flat=True)}
    return [prompt_id for prompt_id in prompt_ids if prompt_id not in known]


def get_job(pk: int) -> Job:
    return _job(Prompt.objects.get(pk=pk))


def _try_transition(prompt: Prompt, status: str, **changes: Any) -> bool:
    try:
        prompt.transition_to(status, **changes)
    except IllegalTransition as error:
        logger.info("%s", error)
        return False
    return True


def transition(pk: int, status: str, **changes: Any) -> bool:
    """Move job `pk` to `status` if that is still legal; False when it is not (already final...)."""
    prompt = Prompt.objects.get(pk=pk)
    if prompt.status == status:
        return False
    return _try_transition(prompt, status, **changes)


def requeue_or_fail(pk: int, reason: str) -> str:
    """A job its backend lost: back to the queue for one more try, or failed with `reason`."""
    prompt = Prompt.objects.get(pk=pk)
    if prompt.cancel_requested_at is not None:
        _try_transition(prompt, S.CANCELLED, error="Cancelled.")
    elif prompt.submit_attempts >= MAX_SUBMIT_ATTEMPTS:
        _try_transition(prompt, S.FAILED, error=reason)
    else:
        # Ahead of every queued job: it had its turn already.
        first = front_turn()
        turn = prompt.turn if first is None else min(prompt.turn, first - 1)
        _try_transition(prompt, S.QUEUED, turn=turn)
    return prompt.status


def unsubmit(pk: int) -> None:
    """The POST to ComfyUI never arrived (backend down): the job waits again, no try counted."""
    prompt = Prompt.objects.get(pk=pk)
    if _try_transition(prompt, S.QUEUED):
        Prompt.objects.filter(pk=pk).update(submit_attempts=F("submit_attempts") - 1)


def stored_output_indexes(pk: int, node_id: str) -> set[int]:
    """Which outputs of node `node_id` of job `pk` are stored already."""
    stored = GeneratedImage.objects.filter(prompt_id=pk, node_id=node_id)
    return set(stored.values_list("output_index", flat=True))


def _open_output(data: bytes) -> Image.Image:
    """An output ComfyUI made, opened (not decoded). Pillow refuses images over twice its
    MAX_IMAGE_PIXELS, a guard for files from strangers; an upscaled output is ours and may be
    that big (185 megapixels), so a PNG is opened past the guard, and bounded by
    THUMBNAIL_MAX_PIXELS instead before anything decodes it."""
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        if not data.startswith(PNG_SIGNATURE):
            raise
        return PngImagePlugin.PngImageFile(io.BytesIO(data))


def _thumbnail(data: bytes) -> tuple[bytes | None, int | None, int | None]:
    """A small WebP of the first frame, and the full size. Never fails: what cannot be read or
    is too big to decode has no thumbnail (and no size when even that cannot be read)."""
    width = height = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with _open_output(data) as image:
                width, height = image.size
                if width * height > THUMBNAIL_MAX_PIXELS:
                    logger.warning("No thumbnail for a %d×%d output: too big to decode", width, height)
                    return None, width, height
                target = "RGBA" if image.mode in ("RGBA", "LA", "P") else "RGB"
                frame = image if image.mode == target else image.convert(target)
                frame.thumbnail(THUMBNAIL_SIZE)  # decodes (reduced on the way for JPEG)
                out = io.BytesIO()
                frame.save(out, "WEBP", quality=80, method=2)  # method 4: 50% slower, 3% smaller
                return out.getvalue(), width, height
    except (UnidentifiedImageError, Image.DecompressionBombError):
        return None, width, height
    except Exception:  # an output is never dropped for its thumbnail
        logger.exception("No thumbnail for an output of %s bytes", len(data))
        return None, width, height


def store_output(job: Job, node_id: str, index: int, filename: str, data: bytes) -> GeneratedImage | None:
    """Keep one output file byte for byte, with a thumbnail. Importing twice stores it once."""
    thumbnail, width, height = _thumbnail(data)
    content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    image = GeneratedImage(
        prompt_id=job.pk,
        owner_id=job.owner_id,
        node_id=node_id,
        output_index=index,
        width=width,
        height=height,
        bytes=len(data),
        content_type=content_type,
    )
    image.file.save(filename.rsplit("/", 1)[-1], ContentFile(data), save=False)
    if thumbnail is not None:
        image.thumbnail.save(f"{filename.rsplit('.', 1)[0]}.webp", ContentFile(thumbnail), save=False)
    try:
        with transaction.atomic():
            image.save()
    except IntegrityError:  # imported meanwhile (reconcile and event at once): keep the first
        image.file.delete(save=False)
        if image.thumbnail:
            image.thumbnail.delete(save=False)
        return None
    return image


def card_html(pk: int, live: LiveState | None = None) -> Relay:
    """Job `pk`'s card as it stands now, for its owner; `live` is kept for tabs that connect
    later."""
    prompt = Prompt.objects.prefetch_related("images").get(pk=pk)
    return _card(prompt, live)


def advance(pk: int, status: str, live: LiveState | None = None, **changes: Any) -> Relay:
    """Move job `pk` to `status` if that is still legal, and render its card as it then stands
    (the job's real state when the move lost a race, e.g. to a cancel)."""
    prompt = Prompt.objects.prefetch_related("images").get(pk=pk)
    if prompt.status != status:
        _try_transition(prompt, status, **changes)
    return _card(prompt, live)


def _card(prompt: Prompt, live: LiveState | None) -> Relay:
    if live is not None:
        save_live_state(prompt.pk, live)
    positions, estimates = waiting_state([prompt])
    position = positions.get(prompt.pk)
    html = render_card(prompt, live=live, position=position, seconds_left=estimates.get(prompt.pk))
    return Relay(prompt.owner_id, html, (status_event(prompt, position),))


def moved_queue_places(looked_at: int | None = None) -> list[Relay]:
    """When the queue moves: for each user with a queued job whose place or estimate changed
    since it was last told, one message with the status line of each such job.

    Looks at the first `looked_at` queued jobs (all of them when None), in one read of the
    queue's index: the bridge looks far back only now and then (see places_looked_at). The
    places and estimates last told are kept on the jobs' rows, so that every bridge, in this
    process or another, tells each change once, and nothing forgets them; a user's lines travel
    together, not one per job. An estimate is told as its words ("about 40 s"): a change that
    does not change the words is no message.
    """
    with transaction.atomic():
        _one_round_at_a_time()
        queue = site_queue()
        in_order = queued_in_order().values_list(
            "pk", "owner_id", "told_place", "told_estimate", "cancel_requested_at", *RATE_FIELDS
        )
        rows = list(in_order if looked_at is None else in_order[:looked_at])
        estimates = _queue_estimates(queue, rows)
        lines: dict[int, list[tuple[int, str]]] = {}
        events: dict[int, list[dict[str, Any]]] = {}
        told: list[tuple[int, int, str]] = []
        for place, (pk, owner_id, told_place, told_estimate, cancel_at, *_) in enumerate(
            rows, queue.waiting_in_comfy + 1
        ):
            words = about(estimates.get(pk))
            if not worth_telling(told_place, place) and words == told_estimate:
                continue
            prompt = Prompt(pk=pk, owner_id=owner_id, status=S.QUEUED, cancel_requested_at=cancel_at)
            line = render_progress(prompt, live=LiveState(), position=place, seconds_left=estimates.get(pk))
            lines.setdefault(owner_id, []).append((pk, line))
            events.setdefault(owner_id, []).append(queue_event(pk, place))
            told.append((pk, place, words))
        _note_told(told)
    return [
        Relay(owner_id, "".join(html for _, html in owned), tuple(events[owner_id]), lines=tuple(owned))
        for owner_id, owned in lines.items()
    ]


def _note_told(told: list[tuple[int, int, str]], batch: int = 500) -> None:
    """Keep on each row the place and estimate words told (pk, place, words): one UPDATE from a
    VALUES list per batch. Django's bulk_update writes a CASE of every row for each column,
    which took 130 of a round's 210 ms for 245 rows on SQLite."""
    if connection.vendor == "sqlite" and sqlite3.sqlite_version_info < (3, 33):  # no UPDATE FROM
        changed = [Prompt(pk=pk, told_place=place, told_estimate=words) for pk, place, words in told]
        Prompt.objects.bulk_update(changed, ["told_place", "told_estimate"], batch_size=batch)
        return
    table = connection.ops.quote_name(Prompt._meta.db_table)
    for start in range(0, len(told), batch):
        rows = told[start : start + batch]
        values = ", ".join(["(%s, %s, %s)"] * len(rows))
        with connection.cursor() as cursor:
            cursor.execute(
                f"WITH told (id, place, words) AS (VALUES {values}) UPDATE {table} SET "
                f"told_place = told.place, told_estimate = told.words FROM told WHERE {table}.id = told.id",
                [value for row in rows for value in row],
            )


def _one_round_at_a_time() -> None:
    """Hold the round of telling places until the transaction ends. Bridges in other processes
    share the queue and what was told: two rounds at once would both read the places last told
    before either wrote, and tell each move twice, or write an older place over a newer one.
    (Within a process the bridges take turns by a lock; SQLite takes one writer at a time.)"""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [PLACES_LOCK_KEY])


PLACES_LOCK_KEY = 0x636F6D6679  # any number the site's other advisory locks do not use


def _queue_estimates(queue: SiteQueue, rows: list[tuple[Any, ...]]) -> dict[int, float]:
    """Seconds to done of queued jobs, `rows` read from the front in the fair order (pk, then
    four columns, then RATE_FIELDS): added up for the first ADDED_UP, and from their average
    behind them, as a card rendered alone estimates them (estimates.seconds_to_done)."""
    backlog = Backlog.load(queue)
    if backlog is None:
        return {}
    front = backlog.front(row[:1] + row[5:] for row in rows[:ADDED_UP])
    estimates = dict(front.done)
    for ahead, (pk, *_, workflow, width, height, steps) in enumerate(rows[ADDED_UP:], ADDED_UP):
        seconds = backlog.behind(front, ahead, workflow, rate_params(width, height, steps))
        if seconds is not None:
            estimates[pk] = seconds
    return estimates


FRONT_LOOKED_AT = 40  # queued jobs looked at in every round of telling places


def places_looked_at(round_number: int) -> int:
    """How far back round `round_number` (1, 2, 3...) of a bridge's telling of places looks:
    the first 40 jobs every round, 80 every second round, 160 every fourth, and so on. Far back
    only a move of a tenth of the place is told (worth_telling), which takes that many moves: a
    round reads about 40 rows per doubling of the queue, not every row, and the back of the
    queue is still told about each tenth of its way. What was told is kept on the rows, so a
    bridge that starts again goes on where the last one stopped."""
    depth = FRONT_LOOKED_AT
    while round_number > 0 and round_number % 2 == 0:
        round_number //= 2
        depth *= 2
    return depth


EVERY_PLACE_FROM = 20  # nearer the front than this, every move is told


def worth_telling(told: int | None, place: int | None) -> bool:
    """Near the front, every move; further back, moves of a tenth of the place at least: at
    #150 nobody needs to watch each step, and telling each one flooded hundreds of tabs."""
    if told is None or place is None or told <= EVERY_PLACE_FROM or place <= EVERY_PLACE_FROM:
        return told != place
    return abs(told - place) >= told // 10


def note_place_shown(prompt_id: int, place: int, estimate: str = "") -> None:
    """The place (and estimate, in words) the card of a job just posted shows: the queue's next
    move tells only a change. Only if none was told yet: a bridge may have told a newer place
    since the card was rendered."""
    Prompt.objects.filter(pk=prompt_id, told_place__isnull=True).update(
        told_place=place, told_estimate=estimate
    )
