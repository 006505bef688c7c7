"""/api/: the async jobs API and the list of workflows.

Jobs go through generator.submissions like the web form's: the same validation, quotas, fair
queue and bridge. A job of another user is a 404, never a 403 that would confirm it exists.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from typing import Any, Literal

from django.conf import settings
from django.http import HttpResponse, StreamingHttpResponse
from django.utils import timezone
from ninja import Header, Query, Router, Schema, Status
from pydantic import Field

from generator.backends import node_catalog
from generator.history import after_cursor, date_bounds, keyset_page, prompt_filters
from generator.http import AuthenticatedRequest
from generator.models import Prompt
from generator.parsing import parse_id
from generator.submissions import ApiOrigin, DuplicateRequest, cancel_job, start_job, wake_bridge
from generator.webhooks import UnsafeWebhookUrl, check_url
from generator.workflows import all_workflows

from .errors import ApiError, not_found
from .events import finished_event_id, is_final, job_event_stream, owner_and_job
from .params import bound_form, describe_workflow, form_error, workflow_named
from .representation import jobs_data, jobs_visible_to, new_job_data
from .schemas import ErrorOut, JobIn, JobOut, JobPage, WorkflowOut

router = Router(tags=["jobs"])
ERRORS: dict[int, type] = {400: ErrorOut, 401: ErrorOut, 404: ErrorOut, 429: ErrorOut}
QUOTA_RETRY_SECONDS = 60


def site_base(request: AuthenticatedRequest) -> str:
    return f"{request.scheme}://{request.get_host()}"


# One event of the stream, as OpenAPI 3.1 tools read a text/event-stream schema.
SSE_EVENT_SCHEMA = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"enum": ["status", "queue", "progress", "preview", "finished"]},
        "data": {"type": "string", "contentMediaType": "application/json"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
}


def checked_webhook_url(url: str) -> str:
    try:
        return check_url(url)
    except UnsafeWebhookUrl as refused:
        message = f"webhook_url: the site will not call this URL: {refused}."
        raise ApiError(400, message, param="webhook_url", code="webhook_url_refused") from None


def _job_id(pk: int) -> int:
    job_id = parse_id(pk)
    if job_id is None:
        raise not_found()
    return job_id


# -- starting jobs, for this API and the OpenAI-compatible one ------------------------------


def request_digest(*parts: Any) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(
            part if isinstance(part, bytes) else json.dumps(part, sort_keys=True, default=str).encode()
        )
    return digest.hexdigest()


def _replay(user: Any, key: str, digest: str) -> Prompt | None:
    """The job an earlier request with this idempotency key made, if within the window."""
    earlier = Prompt.objects.filter(owner=user, idempotency_key=key).first()
    if earlier is None:
        return None
    if earlier.created_at < timezone.now() - datetime.timedelta(seconds=settings.IDEMPOTENCY_SECONDS):
        Prompt.objects.filter(pk=earlier.pk).update(idempotency_key="")  # expired: free the key
        return None
    if earlier.request_digest != digest:
        raise ApiError(
            422,
            "This Idempotency-Key was used for a different request; use a new key for a new job.",
            code="idempotency_key_reused",
            param="Idempotency-Key",
        )
    return earlier


def start_api_job(
    user: Any,
    workflow_name: str,
    parameters: dict[str, Any],
    *,
    image: Any = None,
    webhook_url: str = "",
    idempotency_key: str = "",
    digest: str = "",
    prepare: Any = None,
) -> tuple[Prompt, bool]:
    """Queue a job for an API request; (job, whether it is new). A replayed idempotency key
    gives the first request's job. `prepare(form_fields, parameters)` may adjust parameters."""
    if idempotency_key and (earlier := _replay(user, idempotency_key, digest)):
        return earlier, False
    workflow = workflow_named(workflow_name)
    catalog = node_catalog()
    form = bound_form(user, workflow, catalog, parameters, image)
    origin = ApiOrigin(webhook_url=webhook_url, idempotency_key=idempotency_key, request_digest=digest)
    try:
        started = start_job(user, workflow, catalog, form, origin)
    except DuplicateRequest:  # a request with the same key, running alongside, won
        earlier = _replay(user, idempotency_key, digest)
        if earlier is None:
            raise
        return earlier, False
    if started.prompt is None:
        if started.quota_refusal:
            raise ApiError(
                429,
                started.quota_refusal,
                type="rate_limit_error",
                code="quota_exceeded",
                headers={"Retry-After": str(QUOTA_RETRY_SECONDS)},
            )
        raise form_error(form)
    wake_bridge()
    return started.prompt, True


# -- routes ---------------------------------------------------------------------------------


@router.get("/workflows", response={200: list[WorkflowOut], 401: ErrorOut}, url_name="workflows")
def list_workflows(request: AuthenticatedRequest) -> list[dict[str, Any]]:
    """Every workflow, with each parameter's type, bounds, choices and default: what the web
    form is built from, and what `parameters` of POST /api/jobs takes."""
    catalog = node_catalog()
    return [describe_workflow(request.user, w, catalog) for w in all_workflows().values()]


@router.post("/jobs", response={202: JobOut, **ERRORS, 422: ErrorOut}, url_name="jobs")
def create_job(
    request: AuthenticatedRequest,
    response: HttpResponse,
    body: JobIn,
    idempotency_key: str | None = Header(None, alias="Idempotency-Key", max_length=255),
) -> Any:
    """Queue a job and answer at once (202). Follow it with GET /api/jobs/{id}, its event
    stream, or a webhook. The same `Idempotency-Key` within 24 hours gives the same job."""
    webhook_url = checked_webhook_url(body.webhook_url) if body.webhook_url else ""
    digest = request_digest(body.workflow, body.parameters, webhook_url)
    prompt, created = start_api_job(
        request.user,
        body.workflow,
        body.parameters,
        webhook_url=webhook_url,
        idempotency_key=idempotency_key or "",
        digest=digest,
    )
    if created:
        job = new_job_data(prompt, site_base(request))
    else:
        job = jobs_data(list(jobs_visible_to(request.user).filter(pk=prompt.pk)), site_base(request))[0]
    response["Location"] = job["links"]["self"]
    if not created:
        response["Idempotent-Replayed"] = "true"
    return Status(202, job)


class JobFilters(Schema):
    status: Literal["queued", "submitted", "running", "succeeded", "failed", "cancelled"] | None = None
    workflow: str | None = Field(None, max_length=100)
    q: str | None = Field(None, max_length=200, description="Search in prompts.")
    since: datetime.date | None = Field(None, description="Made on or after this day (UTC).")
    until: datetime.date | None = Field(None, description="Made on or before this day (UTC).")
    cursor: str | None = Field(None, max_length=100, description="`next_cursor` of the previous page.")
    limit: int = Field(20, ge=1, le=100)


@router.get("/jobs", response={200: JobPage, **ERRORS}, url_name="job_list")
def list_jobs(request: AuthenticatedRequest, filters: Query[JobFilters]) -> dict[str, Any]:
    """Your jobs, newest first, a page at a time; filters as on the history page. A page may
    hold fewer than `limit` jobs, even none, while `next_cursor` is not null: a filtered page
    looks through a bounded stretch of your jobs. Follow `next_cursor` until it is null."""
    try:
        older = after_cursor(filters.cursor)
    except ValueError:
        raise ApiError(400, "cursor: not a cursor this API gave.", param="cursor") from None
    prompts = jobs_visible_to(request.user).filter(date_bounds(filters.dict()), owner=request.user)
    if filters.status:
        prompts = prompts.filter(status=filters.status)
    page = keyset_page(prompts, older, filters.limit, prompt_filters(filters.dict()))
    return {
        "object": "list",
        "data": jobs_data(page.rows, site_base(request)),
        "next_cursor": page.next_cursor,
    }


def _visible_job(request: AuthenticatedRequest, pk: int) -> Prompt:
    prompt = jobs_visible_to(request.user).filter(pk=_job_id(pk)).first()
    if prompt is None:
        raise not_found()
    return prompt


@router.get("/jobs/{pk}", response={200: JobOut, **ERRORS}, url_name="job")
def get_job(request: AuthenticatedRequest, pk: int) -> dict[str, Any]:
    """The job now: status, queue place, progress, error in words, outputs with links."""
    return jobs_data([_visible_job(request, pk)], site_base(request))[0]


@router.delete("/jobs/{pk}", response={200: JobOut, **ERRORS}, url_name="job_cancel")
def delete_job(request: AuthenticatedRequest, pk: int) -> dict[str, Any]:
    """Cancel, as the web page's Cancel button does: a queued job is dropped at once (status
    `cancelled`); one handed to ComfyUI is deleted from its queue or interrupted (`cancelling`
    is true until the bridge confirms); a job that has ended stays as it is."""
    cancel_job(_visible_job(request, pk))
    return jobs_data([_visible_job(request, pk)], site_base(request))[0]


@router.get(
    "/jobs/{pk}/events",
    response={200: None, 204: None, **ERRORS},
    url_name="job_events",
    openapi_extra={
        "responses": {
            "200": {
                "description": "Server-Sent Events: `status` (the job now, as GET /api/jobs/{id}), "
                "`queue` {place}, `progress` {status, node, step, steps, progress}, `preview` "
                "{mime_type, data (base64)}, and `finished` (the job as it ended), after which "
                "the stream ends. Reconnect with `Last-Event-ID` to resume: you get the job's "
                "state now, then what follows; 204 once you have seen `finished`.",
                "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}},
            },
        }
    },
)
async def job_events(
    request: AuthenticatedRequest,
    pk: int,
    last_event_id: str | None = Header(None, alias="Last-Event-ID", max_length=40),
) -> HttpResponse | StreamingHttpResponse:
    """The job's progress as it happens, as the web card shows it."""
    base = site_base(request)
    found = await owner_and_job(request.user, _job_id(pk), base)
    if found is None:
        raise not_found()
    owner_id, job = found
    if is_final(job) and last_event_id == finished_event_id(job):
        return HttpResponse(status=204)  # seen it end: EventSource stops reconnecting on 204
    response = StreamingHttpResponse(
        job_event_stream(request.user, owner_id, pk, base), content_type="text/event-stream"
    )
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    return response
