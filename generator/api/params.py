"""An API request's parameters through the web form's own validation.

Each workflow's parameters are the fields its form has: the same names, bounds, choices and
messages. A parameter left out takes the value the form would show at first.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from django import forms
from django.conf import settings
from django.core.exceptions import NON_FIELD_ERRORS
from django.core.files.uploadedfile import SimpleUploadedFile, UploadedFile

from generator.backends import NodeCatalog
from generator.forms import GenerateForm
from generator.workflows import Workflow, WorkflowError, all_workflows, get_workflow

from .errors import ApiError

# Not on the form a user sees, but settable: refine one of your images, or name the job it
# continues.
ID_PARAMETERS = {"source_image": "image_id", "parent": "job_id"}


def workflow_named(name: str, param: str = "workflow") -> Workflow:
    try:
        return get_workflow(name)
    except WorkflowError:
        names = ", ".join(sorted(all_workflows()))
        raise ApiError(
            400, f"There is no workflow {name!r}; there are: {names}.", param=param, code="model_not_found"
        ) from None


def empty_form(user: Any, workflow: Workflow, catalog: NodeCatalog) -> GenerateForm:
    return GenerateForm(workflow=workflow, object_info=catalog.object_info, user=user)


def bound_form(
    user: Any,
    workflow: Workflow,
    catalog: NodeCatalog,
    parameters: dict[str, Any],
    image: UploadedFile | None = None,
) -> GenerateForm:
    """The workflow's form filled from `parameters`; unknown names and non-scalar values are
    refused here, everything else by the form."""
    template = empty_form(user, workflow, catalog)
    parameters = dict(parameters)
    for name, value in parameters.items():
        if name not in template.fields:
            known = ", ".join(n for n in template.fields if n != "image") + (
                ", image" if workflow.takes_image else ""
            )
            raise ApiError(
                400,
                f"{workflow.name} has no parameter {name!r}; it takes: {known}.",
                param=name,
                code="unknown",
            )
        if isinstance(value, (list, dict)):
            raise ApiError(400, f"{name}: must be a single value, not a list or object.", param=name)
    if "image" in parameters:
        image = _decoded_image(parameters.pop("image"))
    data = {
        name: template.get_initial_for_field(field, name)
        for name, field in template.fields.items()
        if not isinstance(field, forms.FileField)
    }
    data.update(parameters)
    if "size" in template.fields and "size" not in parameters and {"width", "height"} & set(parameters):
        data["size"] = "custom"
    data = {name: "" if value is None else value for name, value in data.items()}
    if image is not None:
        # Clients name uploads anything (or nothing); what counts is what Pillow reads in it.
        image.name = "upload.png"
    files = {"image": image} if image is not None else {}
    return GenerateForm(data, files, workflow=workflow, object_info=catalog.object_info, user=user)


def _decoded_image(value: Any) -> UploadedFile | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise ApiError(400, "image: must be a base64-encoded picture.", param="image")
    encoded = value.partition(",")[2] if value.startswith("data:") else value
    if len(encoded) * 3 // 4 > settings.MAX_UPLOAD_BYTES + 3:
        limit = settings.MAX_UPLOAD_BYTES / (1024 * 1024)
        raise ApiError(400, f"image: images may be at most {limit:.1f} MB.", param="image", code="too_large")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "image: not valid base64.", param="image") from None
    return SimpleUploadedFile("upload.png", data)


def form_error(form: GenerateForm) -> ApiError:
    """The form's first error as an API error naming the parameter; all of them in `fields`."""
    errors = {name: [str(m) for m in messages] for name, messages in form.errors.items()}
    name, messages = next(iter(errors.items()))
    param = None if name == NON_FIELD_ERRORS else name
    message = f"{param}: {messages[0]}" if param else messages[0]
    return ApiError(400, message, param=param, code="invalid", extra={"fields": errors})


FIELD_TYPES = [
    (forms.ImageField, "image"),
    (forms.IntegerField, "integer"),
    (forms.FloatField, "number"),
]


def describe_workflow(user: Any, workflow: Workflow, catalog: NodeCatalog) -> dict[str, Any]:
    """A workflow as GET /api/workflows lists it: what its form is built from."""
    form = empty_form(user, workflow, catalog)
    parameters = []
    for name, field in form.fields.items():
        kind = ID_PARAMETERS.get(name) or next(
            (t for cls, t in FIELD_TYPES if isinstance(field, cls)), "string"
        )
        choices = [str(value) for value, _ in field.choices] if isinstance(field, forms.ChoiceField) else None  # type: ignore[misc, union-attr]
        parameters.append(
            {
                "name": name,
                "label": str(field.label or name.replace("_", " ").capitalize()),
                "type": kind,
                "required": bool(field.required) and name not in ("image",),
                "default": form.get_initial_for_field(field, name) if kind not in ("image",) else None,
                "minimum": getattr(field, "min_value", None),
                "maximum": getattr(field, "max_value", None),
                "choices": choices,
                "help": str(field.help_text or ""),
            }
        )
    problems = catalog.problems(workflow)
    return {
        "name": workflow.name,
        "title": workflow.title,
        "description": workflow.description,
        "takes_image": workflow.takes_image,
        "available": not problems,
        "problems": problems,
        "notes": form.notes,
        "parameters": parameters,
    }
