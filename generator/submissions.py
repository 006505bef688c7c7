"""Starting and cancelling jobs: the one path the web form and the API share.

Whatever a job comes from, it is checked by the same form, counted against the same quotas,
stored the same way, and reaches ComfyUI only through the bridge's fair queue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.core.files.base import ContentFile
from django.db import IntegrityError, transaction
from django.utils import timezone

from .backends import NodeCatalog
from .forms import GenerateForm
from .live import BRIDGE_GROUP, Relay, render_cards, send_relay, send_to_group, status_event
from .models import GeneratedImage, IllegalTransition, Prompt
from .quotas import refusal_for_new_job
from .workflows import Workflow

S = Prompt.Status


@dataclass(frozen=True)
class JobStart:
    """What came of a request to start a job: the job, or why not (errors on the form, or a
    quota refusal in words)."""

    prompt: Prompt | None
    form: GenerateForm
    quota_refusal: str | None = None


@dataclass(frozen=True)
class ApiOrigin:
    """How an API request asked for its job: a webhook to call, an idempotency key."""

    webhook_url: str = ""
    idempotency_key: str = ""
    request_digest: str = ""


class DuplicateRequest(Exception):
    """Another request with the same idempotency key created its job first."""


def start_job(
    user: Any, workflow: Workflow, catalog: NodeCatalog, form: GenerateForm, api: ApiOrigin | None = None
) -> JobStart:
    """Validate `form`, check the workflow can run and the user's quota, and queue the job."""
    problems = catalog.problems(workflow)
    if problems:
        form.add_error(None, f"{workflow.title} cannot run here: {'; '.join(problems)}.")
        return JobStart(None, form)
    if not form.is_valid():
        return JobStart(None, form)
    refusal = refusal_for_new_job(user, form.cleaned_data.get("batch_size") or 1)
    if refusal:
        form.add_error(None, refusal)
        return JobStart(None, form, quota_refusal=refusal)
    return JobStart(_create_prompt(user, workflow, form, api), form)


def _create_prompt(user: Any, workflow: Workflow, form: GenerateForm, api: ApiOrigin | None) -> Prompt:
    values = form.job_values()
    prompt = Prompt(
        owner=user,
        workflow=workflow.name,
        positive_text=values.pop("prompt", ""),
        negative_text=values.pop("negative_prompt", ""),
        params=values,
        parent=form.cleaned_data.get("parent") or None,
    )
    if api is not None:
        prompt.via = Prompt.Via.API
        prompt.webhook_url = api.webhook_url
        prompt.idempotency_key = api.idempotency_key
        prompt.request_digest = api.request_digest
    source: GeneratedImage | None = form.cleaned_data.get("source_image")
    if form.cleaned_data.get("image"):
        prompt.source_image.save("upload.png", ContentFile(form.cleaned_data["image"]), save=False)
    elif source is not None:
        with source.file.open("rb") as handle:
            prompt.source_image.save(f"refine-{source.pk}.png", ContentFile(handle.read()), save=False)
        prompt.parent = prompt.parent or source.prompt
    if not prompt.idempotency_key:
        prompt.save()
        return prompt
    try:
        with transaction.atomic():
            prompt.save()
    except IntegrityError:  # the same idempotency key, saved by a request running alongside
        if prompt.source_image:
            prompt.source_image.delete(save=False)
        raise DuplicateRequest from None
    return prompt


def wake_bridge() -> None:
    """Tell the bridge a job is waiting, so it need not poll (it also polls, as a safety net)."""
    send_to_group(BRIDGE_GROUP, {"type": "wake"})


def cancel_job(prompt: Prompt) -> Prompt:
    """Queued: dropped at once. Handed to ComfyUI: the bridge deletes or interrupts it.
    Final: nothing changes. Returns the job as it then stands."""
    if prompt.status == S.QUEUED:
        try:
            prompt.transition_to(S.CANCELLED, error="Cancelled before it started.")
        except IllegalTransition:  # the bridge picked it up meanwhile: cancel it there
            prompt.refresh_from_db()
        else:
            # The bridge never hears of it: tell the owner's other tabs and streams here.
            html = render_cards([prompt])[0]
            send_relay(Relay(prompt.owner_id, html, (status_event(prompt),)))
    if prompt.status in Prompt.ON_BACKEND_STATUSES:
        Prompt.objects.filter(pk=prompt.pk, cancel_requested_at__isnull=True).update(
            cancel_requested_at=timezone.now()
        )
        cancel_message = {"type": "cancel.job", "prompt": prompt.pk}
        send_to_group(BRIDGE_GROUP, cancel_message)
    return Prompt.objects.prefetch_related("images").get(pk=prompt.pk)
