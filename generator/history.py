"""A user's history: the gallery of their images, image details, and what can be done with them.

Pages are keyset-paginated on (created_at, pk) over the owner's index, so the hundredth page
costs what the first does. Staff may open any image; everybody else only their own, and a
stranger's image is a 404, never a 403 that would confirm it exists.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages
from django.db import transaction
from django.db.models import Count, F, Q, QuerySet
from django.db.models.fields.tuple_lookups import Tuple, TupleGreaterThanOrEqual, TupleLessThan
from django.http import Http404, HttpResponse, QueryDict, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.template.defaultfilters import pluralize
from django.urls import reverse
from django.utils.dateparse import parse_datetime
from django.views.decorators.http import require_GET, require_POST

from .backends import backend_health
from .downloads import download_bytes, download_name, zip_stream
from .http import AuthenticatedRequest
from .models import Backend, GeneratedImage, Prompt
from .parsing import parse_id, parse_ids
from .stats import user_totals
from .workflows import all_workflows

PAGE_SIZE = 40
S = Prompt.Status


class HistoryFilterForm(forms.Form):
    SHOW_CHOICES = [("images", "Images"), ("failed", "Failed jobs"), ("cancelled", "Cancelled jobs")]

    show = forms.ChoiceField(choices=SHOW_CHOICES, required=False)
    q = forms.CharField(label="Search prompts", required=False, max_length=200)
    workflow = forms.ChoiceField(required=False)
    favourites = forms.BooleanField(label="Favourites only", required=False)
    since = forms.DateField(label="From", required=False, widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(label="To", required=False, widget=forms.DateInput(attrs={"type": "date"}))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        workflow_field: forms.ChoiceField = self.fields["workflow"]  # type: ignore[assignment]
        workflow_field.choices = [("", "All workflows")] + [(n, w.title) for n, w in all_workflows().items()]

    def clean_workflow(self) -> str:
        return self.cleaned_data.get("workflow") or ""


def visible_images(user: Any) -> QuerySet[GeneratedImage]:
    """Images whose bytes `user` may fetch: staff everything; owners theirs, minus rejected ones
    (and minus unreviewed ones when the site shows images only after approval)."""
    if user.is_staff:
        return GeneratedImage.objects.all()
    images = GeneratedImage.objects.filter(owner=user).exclude(review_status=GeneratedImage.Review.REJECTED)
    if not settings.SHOW_IMAGES_BEFORE_REVIEW:
        images = images.filter(review_status=GeneratedImage.Review.APPROVED)
    return images


def date_bounds(data: dict[str, Any]) -> Q:
    """Rows made on or after `since` and on or before `until` (dates, whole days in UTC)."""
    condition = Q()
    tz = datetime.UTC
    if data.get("since"):
        condition &= Q(created_at__gte=datetime.datetime.combine(data["since"], datetime.time.min, tz))
    if data.get("until") and data["until"] < datetime.date.max:
        condition &= Q(
            created_at__lt=datetime.datetime.combine(data["until"], datetime.time.min, tz)
            + datetime.timedelta(days=1)
        )
    return condition


def before(created_at: datetime.datetime, pk: int) -> Q:
    """Rows older than (created_at, pk), newest first: `(created_at, id) < (…)`. On PostgreSQL
    the row value is an index condition of (owner, created_at, id), where `created_at < … OR
    (created_at = … AND id < …)` was a filter on every newer row (80,000 read and dropped at
    depth 80k). On SQLite Django writes the OR, whose range SQLite finds.

    `created_at <= …` is implied; it is there for PostgreSQL's estimates, which take a row value
    for a third of the table and a range of two for a ninth, not the stretch it is."""
    return Q(TupleLessThan(Tuple(F("created_at"), F("pk")), (created_at, pk)), created_at__lte=created_at)


def _at_or_after(created_at: datetime.datetime, pk: int) -> Q:
    return Q(
        TupleGreaterThanOrEqual(Tuple(F("created_at"), F("pk")), (created_at, pk)), created_at__gte=created_at
    )


def after_cursor(cursor: str | None) -> Q:
    """Rows strictly older than the cursor `<iso time>_<pk>` (newest first). ValueError if the
    cursor is not one this site made."""
    if not cursor:
        return Q()
    stamp, _, pk = cursor.rpartition("_")
    moment = parse_datetime(stamp)  # ValueError for a well-formed impossible date
    last_id = parse_id(pk)
    # Our cursors carry their UTC offset. Without one the database would guess a time zone (and
    # warn); with an extreme one ("0001-01-01T00:00+23:59") the time is before year 1 in UTC,
    # where converting it for the query raises OverflowError.
    if moment is None or moment.tzinfo is None or last_id is None:
        raise ValueError(f"Not a page cursor: {cursor!r}")
    try:
        moment = moment.astimezone(datetime.UTC)
    except OverflowError:
        raise ValueError(f"Not a page cursor: {cursor!r}") from None
    return before(moment, last_id)


def _tolerant_cursor(cursor: str | None) -> Q:
    """The history page's cursor comes from its own links; one tampered with starts over."""
    try:
        return after_cursor(cursor)
    except ValueError:
        return Q()


def cursor_of(created_at: datetime.datetime, pk: int) -> str:
    return f"{created_at.isoformat()}_{pk}"


@dataclass
class HistoryPage:
    rows: list[Any]
    next_cursor: str | None


def keyset_page(rows: QuerySet[Any], cursor: Q, size: int, scanned: Q | None = None) -> HistoryPage:
    """Up to `size` of `rows` older than `cursor`, newest first, with the cursor of the next page.

    `rows` must be narrowed to what an index serves (owner, status, favourites, dates), so the
    cursor is a range of that index. `scanned` are filters no index serves (prompt text,
    workflow): they are applied to the next settings.HISTORY_SCAN_ROWS rows only, and the next
    page goes on after those, so a page may hold fewer than `size` rows, even none; htmx loads
    the next as the last scrolls into view. Reading all of a user's 100,000 images for a rare
    term took 40–70 ms (PostgreSQL's planner did not choose a pg_trgm index for it); 5,000
    rows take a few ms on SQLite and PostgreSQL alike.
    """
    ordered = rows.filter(cursor).order_by("-created_at", "-pk")
    if not scanned:
        return _paged(list(ordered[: size + 1]), size)
    window = settings.HISTORY_SCAN_ROWS
    # The window's last row, and whether any row follows it.
    window_end = list(ordered.values_list("created_at", "pk")[window - 1 : window + 1])
    if window_end:
        ordered = ordered.filter(_at_or_after(*window_end[0]))
    found = list(ordered.filter(scanned)[: size + 1])
    if len(found) > size or len(window_end) < 2:
        return _paged(found, size)
    return HistoryPage(found, cursor_of(*window_end[0]))


def _paged(rows: list[Any], size: int) -> HistoryPage:
    more = len(rows) > size
    rows = rows[:size]
    return HistoryPage(rows, cursor_of(rows[-1].created_at, rows[-1].pk) if more else None)


def prompt_filters(data: dict[str, Any], prompt: str = "") -> Q:
    """The workflow and text filters, on prompts (or on images' prompts, `prompt="prompt__"`).
    No index serves them: pages apply them to a bounded stretch of the user's rows."""
    condition = Q()
    if data.get("workflow"):
        condition &= Q(**{f"{prompt}workflow": data["workflow"]})
    if data.get("q"):
        condition &= Q(**{f"{prompt}positive_text__icontains": data["q"]})
    return condition


def _image_page(user: Any, data: dict[str, Any], cursor: str | None) -> HistoryPage:
    images = GeneratedImage.objects.filter(owner=user).filter(date_bounds(data))
    if data.get("favourites"):
        images = images.filter(is_favourite=True)
    scanned = prompt_filters(data, prompt="prompt__")
    return keyset_page(images.select_related("prompt"), _tolerant_cursor(cursor), PAGE_SIZE, scanned)


def _prompt_page(user: Any, status: str, data: dict[str, Any], cursor: str | None) -> HistoryPage:
    prompts = Prompt.objects.filter(owner=user, status=status).filter(date_bounds(data))
    return keyset_page(prompts, _tolerant_cursor(cursor), PAGE_SIZE, prompt_filters(data))


@require_GET
def history(request: AuthenticatedRequest) -> HttpResponse:
    form = HistoryFilterForm(request.GET or None)
    data = form.cleaned_data if form.is_valid() else {}
    show = data.get("show") or "images"
    cursor = request.GET.get("cursor")
    if show == "images":
        page = _image_page(request.user, data, cursor)
    else:
        page = _prompt_page(request.user, show, data, cursor)
    query = request.GET.copy()
    query.pop("cursor", None)
    context = {
        "form": form,
        "show": show,
        "page": page,
        "query": query.urlencode(),
        "show_unreviewed": settings.SHOW_IMAGES_BEFORE_REVIEW,
        "continued": bool(cursor),
    }
    if request.htmx and cursor:
        return render(request, "generator/partials/history_items.html", context)
    context["totals"] = user_totals(request.user.pk)
    return render(request, "generator/history.html", context)


def _own_image(request: AuthenticatedRequest, pk: int) -> GeneratedImage:
    images = (
        GeneratedImage.objects.all()
        if request.user.is_staff
        else GeneratedImage.objects.filter(owner=request.user)
    )
    return get_object_or_404(images.select_related("prompt", "prompt__parent", "owner"), pk=pk)


@require_GET
def image_detail(request: AuthenticatedRequest, pk: int) -> HttpResponse:
    image = _own_image(request, pk)
    prompt = image.prompt
    context = {
        "image": image,
        "prompt": prompt,
        "children": list(prompt.children.order_by("created_at")[:50]),
        "siblings": list(prompt.images.exclude(pk=image.pk).order_by("node_id", "output_index")),
        "hidden": not visible_images(request.user).filter(pk=image.pk).exists(),
    }
    return render(request, "generator/image_detail.html", context)


@require_POST
def toggle_favourite(request: AuthenticatedRequest, pk: int) -> HttpResponse:
    image = _own_image(request, pk)
    if image.owner_id != request.user.pk:
        raise Http404
    image.is_favourite = not image.is_favourite
    image.save(update_fields=["is_favourite"])
    return render(request, "generator/partials/favourite_button.html", {"image": image})


def delete_images(images: QuerySet[GeneratedImage]) -> int:
    """Delete images and their files. Files go only once the rows are gone for good."""
    doomed = list(images)
    with transaction.atomic():
        GeneratedImage.objects.filter(pk__in=[i.pk for i in doomed]).delete()

        def remove_files() -> None:
            for image in doomed:
                image.file.delete(save=False)
                if image.thumbnail:
                    image.thumbnail.delete(save=False)

        transaction.on_commit(remove_files)
    return len(doomed)


@require_POST
def delete_image(request: AuthenticatedRequest, pk: int) -> HttpResponse:
    image = _own_image(request, pk)
    if image.owner_id != request.user.pk and not request.user.is_staff:
        raise Http404
    delete_images(GeneratedImage.objects.filter(pk=image.pk))
    messages.success(request, "Image deleted.")
    if request.htmx:
        response = HttpResponse(status=204)
        response["HX-Redirect"] = reverse("history")
        return response
    return redirect("history")


@require_GET
def download_image(request: AuthenticatedRequest, pk: int) -> HttpResponse:
    image = get_object_or_404(visible_images(request.user), pk=pk)
    response = HttpResponse(download_bytes(image), content_type=image.content_type)
    response["Content-Disposition"] = f'attachment; filename="{download_name(image)}"'
    return response


MAX_BULK = 500


@require_POST
def bulk_action(request: AuthenticatedRequest) -> HttpResponseBase:
    ids = parse_ids(request.POST.getlist("images"))[:MAX_BULK]
    images = GeneratedImage.objects.filter(owner=request.user, pk__in=ids)
    action = request.POST.get("action")
    if not ids:
        messages.error(request, "Select some images first.")
    elif action == "delete":
        deleted = delete_images(images)
        messages.success(request, f"Deleted {deleted} image{pluralize(deleted)}.")
    elif action == "favourite":
        marked = images.update(is_favourite=True)
        messages.success(
            request, f"Marked {marked} image{pluralize(marked)} as favourite{pluralize(marked)}."
        )
    elif action == "zip":
        downloadable = visible_images(request.user).filter(pk__in=ids)
        if downloadable.exists():
            return _zip_response(downloadable)
        messages.error(request, "None of the selected images can be downloaded: moderators removed them.")
    return redirect(_history_url(request.POST.get("query", "")))


def _history_url(query: str) -> str:
    """The history page with the filters it showed, sent back by the bulk form. Only valid
    filters are kept, one value each: the query is anyone's to write, and a long one would make
    a redirect Django refuses (over 16,384 characters: a 400 and an error in the log)."""
    filters = QueryDict(query)
    form = HistoryFilterForm(filters)
    if not form.is_valid():
        return reverse("history")
    kept = QueryDict(mutable=True)
    for name in form.fields:
        if filters.get(name):
            kept[name] = filters[name]
    return f"{reverse('history')}?{kept.urlencode()}" if kept else reverse("history")


def _zip_response(images: QuerySet[GeneratedImage]) -> StreamingHttpResponse:
    """Streamed an image at a time: six 143 MB zips built in memory took the process from 368 to
    1,184 MB and held every other page of its thread back for 2.4 s."""
    response = StreamingHttpResponse(
        zip_stream(images.select_related("prompt")), content_type="application/zip"
    )
    response["Content-Disposition"] = 'attachment; filename="comfysite-images.zip"'
    return response


@require_GET
def staff_overview(request: AuthenticatedRequest) -> HttpResponse:
    if not request.user.is_staff:
        raise Http404
    by_status = dict(Prompt.objects.values_list("status").annotate(n=Count("pk")).order_by())
    jobs_by_backend = {
        row["backend"]: row
        for row in Prompt.objects.exclude(backend="")
        .values("backend")
        .annotate(
            total=Count("pk"),
            running=Count("pk", filter=Q(status=S.RUNNING)),
            waiting=Count("pk", filter=Q(status=S.SUBMITTED)),
            failed=Count("pk", filter=Q(status=S.FAILED)),
        )
        .order_by()
    }
    backends = [
        {"backend": backend, "health": backend_health(backend), "jobs": jobs_by_backend.get(backend.url, {})}
        for backend in Backend.objects.defer("object_info", "node_classes")
    ]
    context = {
        "by_status": [(label, by_status.get(value, 0)) for value, label in S.choices],
        "backends": backends,
        "pending_review": GeneratedImage.objects.filter(review_status=GeneratedImage.Review.PENDING).count(),
    }
    return render(request, "generator/staff_overview.html", context)
