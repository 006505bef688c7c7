"""The generation form, built from a workflow's parameters and ComfyUI's /object_info."""

from __future__ import annotations

import secrets
from typing import Any

from django import forms
from django.core.files.uploadedfile import UploadedFile

from .models import GeneratedImage, Prompt
from .parsing import MAX_ID
from .uploads import reencoded_image
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


def _bounded(name: str, low: Any, high: Any) -> tuple[Any, Any]:
    site_low, site_high = SITE_LIMITS.get(name, (low, high))
    return (
        max(low, site_low) if low is not None else site_low,
        min(high, site_high) if high is not None else site_high,
    )


class GenerateForm(forms.Form):
    """Fields appear only for parameters the workflow has; choices and ranges come from ComfyUI."""

    source_image = forms.IntegerField(required=False, min_value=1, max_value=MAX_ID, widget=forms.HiddenInput)
    parent = forms.IntegerField(required=False, min_value=1, max_value=MAX_ID, widget=forms.HiddenInput)

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
            self.fields["image"] = forms.ImageField(
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
            choices = [(choice, choice) for choice in kind if isinstance(choice, str)]
            return forms.ChoiceField(label=label, choices=choices, help_text=help_text)
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

    def clean_source_image(self) -> GeneratedImage | None:
        pk = self.cleaned_data.get("source_image")
        if pk is None:
            return None
        image = GeneratedImage.objects.filter(pk=pk, owner=self.user).first()
        if image is None:
            raise forms.ValidationError("That image is not one of yours.")
        return image

    def clean_parent(self) -> Prompt | None:
        pk = self.cleaned_data.get("parent")
        return Prompt.objects.filter(pk=pk, owner=self.user).first() if pk else None

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
        return data

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
