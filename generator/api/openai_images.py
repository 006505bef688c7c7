"""/v1/images/: OpenAI's Images API, answered by this site's workflows.

`POST /v1/images/generations` and `POST /v1/images/edits` take OpenAI's request bodies and
answer in its response shape, so OpenAI's own client works with only `base_url` and `api_key`
set. `model` names a workflow (or is left out); the extension fields `workflow` and
`parameters` reach every parameter the web form has. The request waits for the job, however
long it takes; a client that gives up leaves the job running, and it stays in its history.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from ninja import File, Form, Header, Router
from ninja.files import UploadedFile

from generator.http import AuthenticatedRequest
from generator.workflows import DEFAULT_WORKFLOW, Workflow

from .errors import ApiError
from .events import wait_until_final
from .jobs import request_digest, site_base, start_api_job
from .params import workflow_named
from .schemas import ErrorOut, ImageGenerationIn, ImagesOut

router = Router(tags=["OpenAI-compatible images"])
RESPONSES: dict[int, type] = {200: ImagesOut, 400: ErrorOut, 401: ErrorOut, 422: ErrorOut, 429: ErrorOut}
EDIT_WORKFLOW = "img2img"
MAX_N = 10


def _workflow_name(model: str | None, workflow: str | None, default: str) -> str:
    if model and workflow and model != workflow:
        raise ApiError(400, "model and workflow name different workflows; give one.", param="model")
    name = workflow or model or default
    workflow_named(name, param="workflow" if workflow else "model")
    return name


def _openai_parameters(
    workflow: Workflow, prompt: str, n: int | None, size: str | None, parameters: dict[str, Any]
) -> dict[str, Any]:
    """OpenAI's fields as the workflow's parameters: `n` is the batch size, `size` width and
    height. A workflow whose size comes from its input image ignores `size`."""
    values = {**parameters, "prompt": prompt}
    visible = workflow.visible_parameters
    if n is not None and n != 1:
        if not 1 <= n <= MAX_N:
            raise ApiError(400, f"n: must be between 1 and {MAX_N}.", param="n")
        if "batch_size" not in visible:
            raise ApiError(400, f"n: {workflow.name} makes one image per request.", param="n")
        values["batch_size"] = n
    if size and size != "auto":
        width, sep, height = size.lower().partition("x")
        if not (sep and width.isascii() and width.isdigit() and height.isascii() and height.isdigit()):
            raise ApiError(400, 'size: must look like "512x768" (width x height) or "auto".', param="size")
        if {"width", "height"} <= set(visible):
            values.update(width=int(width), height=int(height), size="custom")
        elif not workflow.takes_image:
            raise ApiError(400, f"size: {workflow.name} has a fixed size.", param="size")
    return values


async def _answer(
    request: AuthenticatedRequest, prompt_id: int, response_format: str | None
) -> dict[str, Any]:
    job = await wait_until_final(request.user, prompt_id, site_base(request))
    if job is None:
        raise ApiError(422, "The job was deleted before it finished.", code="job_deleted")
    if job["status"] != "succeeded":
        raise ApiError(
            422,
            job["error"] or f"The job ended {job['status']}.",
            type="generation_failed",
            code=f"job_{job['status']}",
            extra={"job": job["id"]},
        )
    if response_format == "b64_json":
        encoded = await sync_to_async(_encoded_files)([output["id"] for output in job["outputs"]])
        data = [{"b64_json": value} for value in encoded]
    else:
        data = [{"url": output["url"]} for output in job["outputs"]]
    return {"created": int(time.time()), "data": data}


def _encoded_files(image_ids: list[int]) -> list[str]:
    from generator.models import GeneratedImage

    images = GeneratedImage.objects.in_bulk(image_ids)
    encoded = []
    for image_id in image_ids:
        with images[image_id].file.open("rb") as handle:
            encoded.append(base64.b64encode(handle.read()).decode())
    return encoded


@router.post("/images/generations", response=RESPONSES, url_name="image_generations")
async def create_images(
    request: AuthenticatedRequest,
    body: ImageGenerationIn,
    idempotency_key: str | None = Header(None, alias="Idempotency-Key", max_length=255),
) -> dict[str, Any]:
    """Make images from a prompt (OpenAI's `images.generate`). Waits for the job."""
    name = _workflow_name(body.model, body.workflow, DEFAULT_WORKFLOW)
    values = _openai_parameters(workflow_named(name), body.prompt, body.n, body.size, body.parameters)
    digest = request_digest("generations", name, values)
    prompt, _ = await sync_to_async(start_api_job)(
        request.user, name, values, idempotency_key=idempotency_key or "", digest=digest
    )
    return await _answer(request, prompt.pk, body.response_format)


@router.post("/images/edits", response=RESPONSES, url_name="image_edits")
async def edit_image(
    request: AuthenticatedRequest,
    image: File[UploadedFile],
    prompt: Form[str],
    model: Form[str | None] = None,
    n: Form[int | None] = None,
    size: Form[str | None] = None,
    response_format: Form[str | None] = "url",
    user: Form[str | None] = None,
    workflow: Form[str | None] = None,
    parameters: Form[str | None] = None,
    idempotency_key: str | None = Header(None, alias="Idempotency-Key", max_length=255),
) -> dict[str, Any]:
    """Repaint an uploaded image from a prompt (OpenAI's `images.edit`): image to image by
    default, or any workflow that takes an image. `parameters` is a JSON object. Waits for the
    job."""
    if response_format not in (None, "url", "b64_json"):
        raise ApiError(400, 'response_format: must be "url" or "b64_json".', param="response_format")
    if len(prompt) > 4000:
        raise ApiError(400, "prompt: at most 4000 characters.", param="prompt")
    name = _workflow_name(model, workflow, EDIT_WORKFLOW)
    chosen = workflow_named(name)
    if not chosen.takes_image:
        raise ApiError(400, f"{name} does not take an image; use /v1/images/generations.", param="workflow")
    given = {**_bracketed(request.POST, "parameters"), **_json_object(parameters)}
    values = _openai_parameters(chosen, prompt, n, size, given)
    upload = image.read(settings.MAX_UPLOAD_BYTES + 1)
    image.seek(0)
    digest = request_digest("edits", name, values, upload)
    job, _ = await sync_to_async(start_api_job)(
        request.user, name, values, image=image, idempotency_key=idempotency_key or "", digest=digest
    )
    return await _answer(request, job.pk, response_format)


def _bracketed(form: Any, name: str) -> dict[str, str]:
    """`parameters[steps]=4` form fields, as OpenAI's client sends an `extra_body` object in a
    multipart request."""
    prefix = f"{name}["
    return {key[len(prefix) : -1]: form[key] for key in form if key.startswith(prefix) and key.endswith("]")}


def _json_object(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise ApiError(400, "parameters: must be a JSON object.", param="parameters")
    return value
