"""What the API takes and answers, as pydantic schemas: django-ninja derives the OpenAPI
schema from these and from the handlers' signatures."""

from __future__ import annotations

import datetime
from typing import Any, Literal

from ninja import Schema
from pydantic import Field


class ErrorDetail(Schema):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorOut(Schema):
    error: ErrorDetail


# -- workflows ------------------------------------------------------------------------------


class ParameterOut(Schema):
    name: str
    label: str
    type: Literal["integer", "number", "string", "image", "image_id", "job_id"]
    required: bool
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    choices: list[str] | None = None
    help: str = ""


class WorkflowOut(Schema):
    name: str
    title: str
    description: str
    takes_image: bool
    available: bool
    problems: list[str]
    # What the parameters' defaults replace of what the workflow asks for, e.g. a model this
    # ComfyUI lacks: "This workflow asks for the model “sdxl.safetensors”, which ComfyUI doesn't
    # have; using “v1-5-pruned-emaonly.safetensors”."
    notes: list[str] = []
    parameters: list[ParameterOut]


# -- jobs -----------------------------------------------------------------------------------


class JobIn(Schema):
    workflow: str = Field("txt2img", max_length=100, description="A name from GET /api/workflows.")
    parameters: dict[str, Any] = Field(
        default_factory=dict,
        description="The workflow's parameters (see GET /api/workflows); any left out take their "
        "defaults. `image` is a base64-encoded picture (PNG, JPEG or WebP) for workflows that "
        "take one, or `source_image` the id of one of your images.",
    )
    webhook_url: str | None = Field(
        None, max_length=2000, description="Called (POST, signed) when the job ends."
    )


class OutputOut(Schema):
    id: int
    width: int | None
    height: int | None
    content_type: str
    bytes: int
    url: str = Field(description="A signed link, valid until `expires_at`; no key needed.")
    expires_at: datetime.datetime


class JobLinks(Schema):
    self: str
    events: str


class JobOut(Schema):
    id: int
    object: Literal["job"] = "job"
    status: Literal["queued", "submitted", "running", "succeeded", "failed", "cancelled"]
    workflow: str
    prompt: str
    negative_prompt: str
    parameters: dict[str, Any]
    created_at: datetime.datetime
    started_at: datetime.datetime | None
    finished_at: datetime.datetime | None
    queue_place: int | None = Field(description="1-based place in the site's queue while queued.")
    progress: float = Field(description="Of the whole workflow, 0 to 1.")
    node: str = Field(description="The node running now, while running.")
    step: int
    steps: int
    cancelling: bool
    error: str = Field(description="Why it failed or was cancelled, in words.")
    webhook_url: str | None
    outputs: list[OutputOut]
    links: JobLinks


class JobPage(Schema):
    object: Literal["list"] = "list"
    data: list[JobOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next (older) page.")


# -- OpenAI-compatible images ---------------------------------------------------------------


class ImageGenerationIn(Schema):
    prompt: str = Field(min_length=1, max_length=4000)
    model: str | None = Field(None, max_length=100, description="A workflow name, or left out.")
    n: int | None = Field(1, description="Images to make: the workflow's batch size.")
    size: str | None = Field(None, max_length=20, description='"WxH", e.g. "512x768", or "auto".')
    response_format: Literal["url", "b64_json"] | None = "url"
    user: str | None = Field(None, max_length=200, description="Accepted and ignored.")
    workflow: str | None = Field(None, max_length=100, description="Extension: a workflow name.")
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="Extension: the workflow's other parameters."
    )


class ImageDatum(Schema):
    b64_json: str | None = None
    url: str | None = None


class ImagesOut(Schema):
    created: int
    data: list[ImageDatum]
