"""The generation form, built from a workflow's parameters and ComfyUI's /object_info."""

from __future__ import annotations

import secrets
from typing import Any

from django import forms

from .workflows import Workflow

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
LABELS = {
    "prompt": "Prompt",
    "negative_prompt": "Negative prompt",
    "seed": "Seed",
    "steps": "Steps",
    "cfg": "CFG scale",
    "sampler": "Sampler",
    "scheduler": "Scheduler",
    "checkpoint": "Model",
    "batch_size": "Images",
    "denoise": "Denoise",
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

    def __init__(self, *args: Any, workflow: Workflow, object_info: dict[str, Any], **kwargs: Any) -> None:
        self.workflow = workflow
        # The workflow's own prompt text is an example, not a value: it shows as a placeholder.
        initial = {**workflow.defaults(), "seed": None, "prompt": "", **kwargs.pop("initial", {})}
        super().__init__(*args, initial=initial, **kwargs)
        params = workflow.parameters
        if "prompt" in params:
            self.fields["prompt"] = forms.CharField(
                label=LABELS["prompt"],
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
                label=LABELS["negative_prompt"],
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
            field = self._field_for(name, parameter.node_id, parameter.input_name, object_info)
            if field is not None:
                self.fields[name] = field

    def _field_for(
        self, name: str, node_id: str, input_name: str, object_info: dict[str, Any]
    ) -> forms.Field | None:
        class_type = self.workflow.graph[node_id]["class_type"]
        kind, options = input_spec(object_info, class_type, input_name)
        label = LABELS.get(name, name.replace("_", " ").capitalize())
        if name == "seed":
            return forms.IntegerField(
                label=label,
                required=False,
                min_value=0,
                max_value=MAX_SEED,
                help_text=HELP["seed"],
                widget=forms.NumberInput(attrs={"placeholder": "random"}),
            )
        if isinstance(kind, list):
            choices = [(choice, choice) for choice in kind if isinstance(choice, str)]
            return forms.ChoiceField(label=label, choices=choices)
        if kind in {"INT", "FLOAT"}:
            low, high = _bounded(name, options.get("min"), options.get("max"))
            field_class = forms.IntegerField if kind == "INT" else forms.FloatField
            step = options.get("step", 1 if kind == "INT" else 0.1)
            return field_class(
                label=label,
                min_value=low,
                max_value=high,
                help_text=HELP.get(name, ""),
                widget=forms.NumberInput(attrs={"step": step}),
            )
        if kind == "STRING":
            return forms.CharField(label=label, max_length=4000)
        return None

    def clean(self) -> dict[str, Any]:
        data = super().clean()
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
        values = {name: value for name, value in self.cleaned_data.items() if name != "size"}
        if "seed" in self.fields and values.get("seed") is None:
            values["seed"] = secrets.randbelow(MAX_SEED)
        return values
