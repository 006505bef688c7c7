"""Pages and HTMX endpoints of the generator: the form, job cards, cancel, private media."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.db.models.fields.files import FieldFile
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from . import backends
from .banner import banner_html, cached_banner_summary
from .estimates import about
from .forms import GenerateForm
from .history import visible_images
from .http import AuthenticatedRequest
from .jobs import note_place_shown
from .live import job_list, new_card_relay, render_card, render_cards, send_relay, waiting_state
from .models import GeneratedImage, Prompt
from .parsing import parse_id
from .submissions import cancel_job, start_job, wake_bridge
from .workflows import DEFAULT_WORKFLOW, Workflow, WorkflowError, all_workflows, get_workflow

REFINE_WORKFLOW = "img2img"


def _workflow_from(request: AuthenticatedRequest, default: str = DEFAULT_WORKFLOW) -> Workflow:
    name = request.POST.get("workflow") or request.GET.get("workflow") or default
    try:
        return get_workflow(name)
    except WorkflowError:
        raise Http404("No such workflow") from None


def _form(
    request: AuthenticatedRequest,
    workflow: Workflow,
    catalog: backends.NodeCatalog,
    data: Any = None,
    files: Any = None,
    initial: dict[str, Any] | None = None,
) -> GenerateForm:
    return GenerateForm(
        data,
        files,
        workflow=workflow,
        object_info=catalog.object_info,
        user=request.user,
        initial=initial or {},
    )


def _form_context(
    request: AuthenticatedRequest, workflow: Workflow, catalog: backends.NodeCatalog, form: GenerateForm
) -> dict[str, Any]:
    # A refused source is not shown as the one the form starts from (nor sent again).
    source = None if form["source_image"].errors else parse_id(form["source_image"].value())
    source_image = visible_images(request.user).filter(pk=source).first() if source else None
    problems = {name: catalog.problems(w) for name, w in all_workflows().items()}
    return {
        "form": form,
        "workflow": workflow,
        "workflows": [(w, problems[name]) for name, w in all_workflows().items()],
        "problems": problems[workflow.name],
        "source_preview": source_image,
    }


def _initial_from_history(request: AuthenticatedRequest) -> tuple[str, dict[str, Any]]:
    """?reuse=<job> fills the form with a job's settings; ?refine=<image> starts image-to-image."""
    reuse, refine = request.GET.get("reuse"), request.GET.get("refine")
    if reuse:
        prompt = get_object_or_404(Prompt, pk=parse_id(reuse) or 0, owner=request.user)
        initial = {**prompt.params, "prompt": prompt.positive_text, "negative_prompt": prompt.negative_text}
        return prompt.workflow, {**initial, "parent": prompt.pk}
    if refine:
        image = get_object_or_404(
            visible_images(request.user).select_related("prompt"), pk=parse_id(refine) or 0
        )
        prompt = image.prompt
        initial = {"prompt": prompt.positive_text, "negative_prompt": prompt.negative_text}
        return REFINE_WORKFLOW, {**initial, "source_image": image.pk, "parent": prompt.pk}
    return DEFAULT_WORKFLOW, {}


@require_GET
def home(request: AuthenticatedRequest) -> HttpResponse:
    default, initial = _initial_from_history(request)
    workflow = _workflow_from(request, default)
    jobs, _ = job_list(request.user.pk)
    catalog = backends.node_catalog()
    context = _form_context(request, workflow, catalog, _form(request, workflow, catalog, initial=initial))
    return render(request, "generator/home.html", {**context, "jobs": jobs})


@require_GET
def generate_form(request: AuthenticatedRequest) -> HttpResponse:
    """The form for another workflow, swapped in when the user picks one."""
    workflow = _workflow_from(request)
    catalog = backends.node_catalog()
    return render(
        request,
        "generator/partials/generate_form.html",
        _form_context(request, workflow, catalog, _form(request, workflow, catalog)),
    )


@require_POST
def generate(request: AuthenticatedRequest) -> HttpResponse:
    workflow = _workflow_from(request)
    catalog = backends.node_catalog()
    form = _form(request, workflow, catalog, request.POST, request.FILES)
    prompt = start_job(request.user, workflow, catalog, form).prompt
    if prompt is None:
        response = render(
            request, "generator/partials/generate_form.html", _form_context(request, workflow, catalog, form)
        )
        # htmx swaps the form in place of itself, not a new card into the list.
        response["HX-Retarget"] = "#generate-form"
        response["HX-Reswap"] = "outerHTML"
        return response
    positions, estimates = waiting_state([prompt])
    position, seconds_left = positions.get(prompt.pk), estimates.get(prompt.pk)
    # A job just created has no images: no query for them.
    card = render_card(prompt, position=position, images=[], seconds_left=seconds_left)
    if position is not None:  # the card shows it: the bridge need not tell it again
        note_place_shown(prompt.pk, position, about(seconds_left))
    # The card reaches the page through the socket, like every later update of the job, so
    # none of them can come before it (the form swaps nothing in; see generate_form.html).
    # Other tabs of the user get it the same way.
    send_relay(new_card_relay(prompt, card))
    # Only now: the bridge claims the job while this thread is no longer busy rendering.
    wake_bridge()
    return HttpResponse(card)


@require_GET
def job_card(request: AuthenticatedRequest, pk: int) -> HttpResponse:
    prompt = get_object_or_404(Prompt.objects.prefetch_related("images"), pk=pk, owner=request.user)
    return HttpResponse(render_cards([prompt])[0])


@require_POST
def cancel(request: AuthenticatedRequest, pk: int) -> HttpResponse:
    prompt = cancel_job(get_object_or_404(Prompt, pk=pk, owner=request.user))
    return HttpResponse(render_cards([prompt])[0])


def _image_for(request: AuthenticatedRequest, pk: int) -> GeneratedImage:
    return get_object_or_404(visible_images(request.user), pk=pk)


def private_file(stored: FieldFile, content_type: str) -> HttpResponse:
    """The file's bytes, or (MEDIA_SENDFILE) a header telling the web server to send them,
    once this view has checked who may see them."""
    if settings.MEDIA_SENDFILE == "x-accel-redirect":
        response = HttpResponse(content_type=content_type)
        response["X-Accel-Redirect"] = settings.MEDIA_ACCEL_PREFIX + str(stored.name)
    elif settings.MEDIA_SENDFILE == "x-sendfile":
        response = HttpResponse(content_type=content_type)
        response["X-Sendfile"] = stored.path
    else:
        # Read whole: under ASGI a streamed file would be buffered anyway, with a warning.
        with stored.open("rb") as handle:
            response = HttpResponse(handle.read(), content_type=content_type)
    response["Cache-Control"] = "private, max-age=86400"
    response["X-Content-Type-Options"] = "nosniff"
    return response


@require_GET
def image_file(request: AuthenticatedRequest, pk: int) -> HttpResponse:
    image = _image_for(request, pk)
    return private_file(image.file, image.content_type)


@require_GET
def image_thumbnail(request: AuthenticatedRequest, pk: int) -> HttpResponse:
    image = _image_for(request, pk)
    if not image.thumbnail:
        return private_file(image.file, image.content_type)
    return private_file(image.thumbnail, "image/webp")


@login_not_required
@never_cache
@require_GET
def backend_banner(request: HttpRequest) -> HttpResponse:
    """The backend banner alone, which every page polls: also for visitors not signed in (the
    log-in page has it too), who are told nothing of the backends but up, down or demo."""
    summary = cached_banner_summary(signed_in=request.user.is_authenticated)
    return HttpResponse(banner_html(summary, poll=True))
