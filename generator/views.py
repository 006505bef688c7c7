"""Pages and HTMX endpoints of the generator: the form, job cards, cancel, private media."""

from __future__ import annotations

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db.models import Prefetch
from django.db.models.fields.files import FieldFile
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from . import backends
from .forms import GenerateForm
from .history import visible_images
from .live import BRIDGE_GROUP, load_live_states, queue_positions, render_card
from .models import GeneratedImage, Prompt
from .workflows import DEFAULT_WORKFLOW, WorkflowError, all_workflows, get_workflow

RECENT_JOBS = 20


def _workflow_from(request: HttpRequest):
    name = request.POST.get("workflow") or request.GET.get("workflow") or DEFAULT_WORKFLOW
    try:
        return get_workflow(name)
    except WorkflowError:
        raise Http404("No such workflow") from None


def _form(request: HttpRequest, workflow, data=None) -> GenerateForm:
    return GenerateForm(data, workflow=workflow, object_info=backends.object_info())


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    workflow = _workflow_from(request)
    prompts = list(
        Prompt.objects.filter(owner=request.user).prefetch_related(
            Prefetch("images", queryset=GeneratedImage.objects.order_by("node_id", "output_index"))
        )[:RECENT_JOBS]
    )
    positions = queue_positions(prompts)
    lives = load_live_states([p.pk for p in prompts if not p.is_final])
    cards = [render_card(p, live=lives.get(p.pk), position=positions.get(p.pk)) for p in prompts]
    return render(
        request,
        "generator/home.html",
        {
            "form": _form(request, workflow),
            "workflow": workflow,
            "workflows": all_workflows(),
            "cards": cards,
        },
    )


@require_POST
def generate(request: HttpRequest) -> HttpResponse:
    workflow = _workflow_from(request)
    form = _form(request, workflow, request.POST)
    if not form.is_valid():
        response = render(
            request, "generator/partials/generate_form.html", {"form": form, "workflow": workflow}
        )
        # htmx swaps the form in place of itself, not a new card into the list.
        response["HX-Retarget"] = "#generate-form"
        response["HX-Reswap"] = "outerHTML"
        return response
    values = form.job_values()
    prompt = Prompt.objects.create(
        owner=request.user,
        workflow=workflow.name,
        positive_text=values.pop("prompt", ""),
        negative_text=values.pop("negative_prompt", ""),
        params=values,
    )
    _wake_bridge()
    positions = queue_positions([prompt])
    return HttpResponse(render_card(prompt, position=positions.get(prompt.pk)))


@require_GET
def job_card(request: HttpRequest, pk: int) -> HttpResponse:
    prompt = get_object_or_404(Prompt.objects.prefetch_related("images"), pk=pk, owner=request.user)
    live = load_live_states([prompt.pk]).get(prompt.pk)
    return HttpResponse(render_card(prompt, live=live, position=queue_positions([prompt]).get(prompt.pk)))


@require_POST
def cancel(request: HttpRequest, pk: int) -> HttpResponse:
    """Queued: dropped at once. Handed to ComfyUI: the bridge deletes or interrupts it."""
    prompt = get_object_or_404(Prompt, pk=pk, owner=request.user)
    if prompt.status == Prompt.Status.QUEUED:
        updated = Prompt.objects.filter(pk=pk, status=Prompt.Status.QUEUED).update(
            status=Prompt.Status.CANCELLED, finished_at=timezone.now(), error="Cancelled before it started."
        )
        if not updated:  # the bridge picked it up meanwhile: cancel it there
            prompt.refresh_from_db()
    if prompt.status in (Prompt.Status.SUBMITTED, Prompt.Status.RUNNING):
        Prompt.objects.filter(pk=pk, cancel_requested_at__isnull=True).update(
            cancel_requested_at=timezone.now()
        )
        async_to_sync(get_channel_layer().group_send)(BRIDGE_GROUP, {"type": "cancel.job", "prompt": pk})
    return _card_response(pk)


def _card_response(pk: int) -> HttpResponse:
    prompt = Prompt.objects.prefetch_related("images").get(pk=pk)
    live = load_live_states([pk]).get(pk)
    return HttpResponse(render_card(prompt, live=live, position=queue_positions([prompt]).get(pk)))


def _wake_bridge() -> None:
    """Tell the bridge a job is waiting, so it need not poll (it also polls, as a safety net)."""
    async_to_sync(get_channel_layer().group_send)(BRIDGE_GROUP, {"type": "wake"})


def _image_for(request: HttpRequest, pk: int) -> GeneratedImage:
    return get_object_or_404(visible_images(request.user), pk=pk)


def _private_file(stored: FieldFile, content_type: str) -> HttpResponse:
    # Read whole: under ASGI a streamed file would be buffered anyway, with a warning.
    with stored.open("rb") as handle:
        response = HttpResponse(handle.read(), content_type=content_type)
    response["Cache-Control"] = "private, max-age=86400"
    response["X-Content-Type-Options"] = "nosniff"
    return response


@require_GET
def image_file(request: HttpRequest, pk: int) -> HttpResponse:
    image = _image_for(request, pk)
    return _private_file(image.file, image.content_type)


@require_GET
def image_thumbnail(request: HttpRequest, pk: int) -> HttpResponse:
    image = _image_for(request, pk)
    if not image.thumbnail:
        return _private_file(image.file, image.content_type)
    return _private_file(image.thumbnail, "image/webp")
