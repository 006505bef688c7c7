"""The generation form, built from a workflow's parameters and ComfyUI's /object_info."""

from __future__ import annotations

import secrets
from typing import Any

from django import forms
from django.core.files.uploadedfile import UploadedFile

from .history import visible_images
from .models import GeneratedImage, Prompt
from .parsing import MAX_ID, parse_id
from .uploads import output_size_problem, png_size, reencoded_image, size_problem
from .workflows import Parameter, Workflow

MAX_SEED = 2**53 - 1  # what a browser's number input holds exactly
SIZE_PRESETS = [
    ("512x512", "512 × 512 · square"),
    ("768x512", "768 × 512 · landscape"),
    ("512x768", "512 × 768 · portrait"),
    ("768x768", "768 × 768 · large square"),
    ("1024x1024", "1024 × 1024 · SDXL square"),
    ("custom", "Custom size…"),
]
# Site limits on top of ComfyUI's own ranges: one user must not occupy a GPU for an hour.
SITE_LIMITS = {
    "steps": (1, 150),
    "cfg": (0.0, 30.0),
    "width": (64, 2048),
    "height": (64, 2048),
    "batch_size": (1, 8),
    "denoise": (0.0, 1.0),
}
HELP = {
    "seed": "Leave empty for a random seed; the seed used is kept with the job.",
    "cfg": "How closely the image follows the prompt.",
    "negative_prompt": "What the image should not contain.",
}


def input_spec(object_info: dict[str, Any], class_type: str, input_name: str) -> tuple[Any, dict[str, Any]]:
    """ComfyUI's declared type and options of one node input: ("INT", {...}) or ([choices], {...})."""
    inputs = object_info.get(class_type, {}).get("input", {})
    for section in ("required", "optional"):
        spec = inputs.get(section, {}).get(input_name)
        if spec:
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if spec[0] == "COMBO":  # newer ComfyUI spells combos this way
                return list(options.get("options", [])), options
            return spec[0], options
    return None, {}


class IdField(forms.IntegerField):
    """A hidden id, read as every id from a request is (generator/parsing.py): ASCII digits that
    fit the database. `int()` would take "١٢" (Arabic-Indic digits) for 12."""

    widget = forms.HiddenInput

    def __init__(self, *, label: str, refusal: str) -> None:
        super().__init__(
            label=label,
            required=False,
            min_value=1,
            max_value=MAX_ID,
            error_messages={"invalid": refusal, "min_value": refusal, "max_value": refusal},
        )

    def to_python(self, value: Any) -> int | None:
        if value in self.empty_values:
            return None
        pk = parse_id(value.strip() if isinstance(value, str) else value)
        if pk is None:
            raise forms.ValidationError(self.error_messages["invalid"], code="invalid")
        return pk


class UploadedImageField(forms.ImageField):
    """An image upload whose checks are ours (generator/uploads.py, in clean_image), so that
    each refusal says why: Django's ImageField says "Upload a valid image" alike for a
    decompression bomb, a truncated file and an SVG. What counts is what Pillow reads in the
    file, not its name: no extension check."""

    default_validators: list[Any] = []

    def to_python(self, data: Any) -> Any:
        return forms.FileField.to_python(self, data)


class OfferedChoiceField(forms.ChoiceField):
    """A choice among what ComfyUI offers (models, samplers…). `note` says so when the value the
    workflow asks for is not among them and another is used instead."""

    note: str = ""


NOT_YOUR_IMAGE = "That image is not one of yours."
NOT_YOUR_JOB = "That earlier job is not one of yours."


def _bounded(name: str, low: Any, high: Any) -> tuple[Any, Any]:
    site_low, site_high = SITE_LIMITS.get(name, (low, high))
    return (
        max(low, site_low) if low is not None else site_low,
        min(high, site_high) if high is not None else site_high,
    )


class GenerateForm(forms.Form):
    """Fields appear only for parameters the workflow has; choices and ranges come from ComfyUI."""

    # Set by Refine and Reuse settings. Hidden, so their errors show at the top of the form.
    source_image = IdField(label="Source image", refusal=NOT_YOUR_IMAGE)
    parent = IdField(label="Parent job", refusal=NOT_YOUR_JOB)

    def __init__(
        self, *args: Any, workflow: Workflow, object_info: dict[str, Any], user: Any = None, **kwargs: Any
    ) -> None:
        self.workflow = workflow
        self.user = user
        # The workflow's own prompt text is an example, not a value: it shows as a placeholder.
        # The workflow's example image file name is not an upload: never an initial value.
        defaults = {k: v for k, v in workflow.defaults().items() if k != "image"}
        initial = {**defaults, "seed": None, "prompt": "", **kwargs.pop("initial", {})}
        kwargs["initial"] = initial
        super().__init__(*args, **kwargs)
        params = workflow.visible_parameters
        if workflow.takes_image:
            self.fields["image"] = UploadedImageField(
                label="Image to start from",
                required=False,
                help_text="PNG, JPEG or WebP. Or use Refine on one of your images.",
                widget=forms.ClearableFileInput(attrs={"accept": "image/png,image/jpeg,image/webp"}),
            )
        if "prompt" in params:
            self.fields["prompt"] = forms.CharField(
                label=params["prompt"].label,
                max_length=4000,
                widget=forms.Textarea(
                    attrs={
                        "rows": 3,
                        "placeholder": params["prompt"].default or "Describe the image you want…",
                    }
                ),
            )
        if "negative_prompt" in params:
            self.fields["negative_prompt"] = forms.CharField(
                label=params["negative_prompt"].label,
                max_length=4000,
                required=False,
                help_text=HELP["negative_prompt"],
                widget=forms.Textarea(attrs={"rows": 2}),
            )
        if "width" in params and "height" in params:
            size = f"{initial.get('width')}x{initial.get('height')}"
            self.fields["size"] = forms.ChoiceField(label="Size", choices=SIZE_PRESETS)
            self.initial.setdefault("size", size if size in dict(SIZE_PRESETS) else "custom")
        for name, parameter in params.items():
            if name in self.fields or name in {"prompt", "negative_prompt", "image"}:
                continue
            field = self._field_for(parameter, object_info)
            if field is not None:
                self.fields[name] = field

    def _field_for(self, parameter: Parameter, object_info: dict[str, Any]) -> forms.Field | None:
        name = parameter.name
        class_type = self.workflow.graph[parameter.node_id]["class_type"]
        kind, options = input_spec(object_info, class_type, parameter.input_name)
        label = parameter.label
        help_text = parameter.help or HELP.get(name, "")
        if parameter.choices is not None:
            allowed = kind if isinstance(kind, list) else list(parameter.choices)
            kind = [choice for choice in allowed if choice in parameter.choices]
        if name == "seed":
            return forms.IntegerField(
                label=label,
                required=False,
                min_value=0,
                max_value=MAX_SEED,
                help_text=help_text,
                widget=forms.NumberInput(attrs={"placeholder": "random"}),
            )
        if isinstance(kind, list):
            offered = [choice for choice in kind if isinstance(choice, str)]
            field = OfferedChoiceField(
                label=label, choices=[(choice, choice) for choice in offered], help_text=help_text
            )
            field.note = self._use_offered_choice(parameter, offered)
            return field
        if kind in {"INT", "FLOAT"}:
            low, high = _bounded(name, options.get("min"), options.get("max"))
            low = parameter.minimum if parameter.minimum is not None else low
            high = parameter.maximum if parameter.maximum is not None else high
            field_class: Any = forms.IntegerField if kind == "INT" else forms.FloatField
            step = options.get("step", 1 if kind == "INT" else 0.1)
            return field_class(
                label=label,
                min_value=low,
                max_value=high,
                help_text=help_text,
                widget=forms.NumberInput(attrs={"step": step}),
            )
        if kind == "STRING":
            return forms.CharField(label=label, max_length=4000, help_text=help_text)
        return None

    def _use_offered_choice(self, parameter: Parameter, offered: list[str]) -> str:
        """When the value asked for (by the workflow, or the settings being reused) is not one
        ComfyUI offers, start from the first it offers, as a browser would show it, and say so
        (the note); "" when nothing was replaced."""
        asked = self.initial.get(parameter.name)
        if asked is None or asked in offered or not offered:
            return ""
        self.initial[parameter.name] = offered[0]
        who = "This workflow asks" if asked == parameter.default else "The settings you reuse ask"
        return (
            f"{who} for the {parameter.label.lower()} “{asked}”, which ComfyUI doesn't have; "
            f"using “{offered[0]}”."
        )

    @property
    def notes(self) -> list[str]:
        """What the form changed of what was asked for (see OfferedChoiceField)."""
        return [
            field.note
            for field in self.fields.values()
            if isinstance(field, OfferedChoiceField) and field.note
        ]

    def clean_source_image(self) -> GeneratedImage | None:
        """One of the images the user may see: a rejected image must not come back into view as
        the source of a copy (an upscale at ×1 is a pixel-identical one)."""
        pk = self.cleaned_data.get("source_image")
        if pk is None:
            return None
        image = visible_images(self.user).filter(pk=pk).first() if self.user is not None else None
        if image is None:
            raise forms.ValidationError(self._refused_source_reason(pk))
        problem = size_problem(image.width, image.height) if image.width and image.height else None
        if problem:
            raise forms.ValidationError(problem)
        return image

    def _refused_source_reason(self, pk: int) -> str:
        own = GeneratedImage.objects.filter(pk=pk, owner=self.user).first() if self.user is not None else None
        if own is None:
            return NOT_YOUR_IMAGE
        if own.review_status == GeneratedImage.Review.REJECTED:
            return "That image was removed by a moderator; it cannot be used to start from."
        return "That image is waiting for a moderator's review; it can be used once approved."

    def clean_parent(self) -> Prompt | None:
        pk = self.cleaned_data.get("parent")
        if pk is None:
            return None
        parent = Prompt.objects.filter(pk=pk, owner=self.user).first() if self.user is not None else None
        if parent is None:
            raise forms.ValidationError(NOT_YOUR_JOB)
        return parent

    def clean_image(self) -> bytes | None:
        upload = self.cleaned_data.get("image")
        return reencoded_image(upload) if isinstance(upload, UploadedFile) else None

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        image_errors = {"image", "source_image"} & set(self.errors)
        if self.workflow.takes_image and not (data.get("image") or data.get("source_image") or image_errors):
            self.add_error("image", "Choose an image to start from.")
        size = data.get("size")
        if size and size != "custom":
            width, height = (int(part) for part in size.split("x"))
            data["width"], data["height"] = width, height
        for name in ("width", "height"):
            value = data.get(name)
            if isinstance(value, int) and value % 8:
                self.add_error(name, "Must be a multiple of 8.")
        self._check_output_size()
        return data

    def _input_size(self) -> tuple[int, int] | None:
        data = self.cleaned_data
        if data.get("image"):
            return png_size(data["image"])
        source = data.get("source_image")
        if isinstance(source, GeneratedImage) and source.width and source.height:
            return source.width, source.height
        return None

    def _output_scale(self) -> float | None:
        """How many times larger than its input image the workflow's result is: the product of
        its nodes' `scale_by` inputs (ComfyUI's ImageScaleBy and LatentUpscaleBy), each as set
        on the form or as the workflow fixes it. None while a scale on the form is invalid (its
        own error shows). Model upscalers (ImageUpscaleWithModel) scale by their model's factor,
        which the graph does not say; no shipped workflow uses one."""
        set_by = {(p.node_id, p.input_name): name for name, p in self.workflow.parameters.items()}
        scale = 1.0
        for node_id, node in self.workflow.graph.items():
            value = node.get("inputs", {}).get("scale_by")
            name = set_by.get((node_id, "scale_by"))
            if name is not None:
                value = (
                    self.cleaned_data.get(name)
                    if name in self.fields
                    else self.workflow.parameters[name].default
                )
                if value is None:
                    return None
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                scale *= value
        return scale

    def _check_output_size(self) -> None:
        """Refuse here, with the reason, an input the workflow would scale past what the site
        can store and show (4096² upscaled ×4 is 268 megapixels), not by a failed job later."""
        size, scale = self._input_size(), self._output_scale()
        problem = output_size_problem(*size, scale) if size and scale else None
        if problem:
            # On the scale when the form has one: that is what the user can change.
            scales = [name for name, p in self.workflow.parameters.items() if p.input_name == "scale_by"]
            fields = [name for name in (*scales, "image") if name in self.fields]
            self.add_error(fields[0] if fields else None, problem)

    def job_values(self) -> dict[str, Any]:
        """The parameters to store with the job: every exposed value, the seed drawn if empty."""
        values = {
            name: value
            for name, value in self.cleaned_data.items()
            if name not in {"size", "image", "source_image", "parent"}
        }
        if "seed" in self.fields and values.get("seed") is None:
            values["seed"] = secrets.randbelow(MAX_SEED)
        return values
