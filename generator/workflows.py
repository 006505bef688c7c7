"""ComfyUI workflows in API format, and the form parameters read from their graphs.

A workflow exported with "Export (API)" is a map of node id → {class_type, inputs, _meta}.
We find what a user can set by following the graph from its sampler: the text encoder feeding
`positive` is the prompt, the one feeding `negative` the negative prompt, the latent feeding
`latent_image` gives width/height/batch, the loader at the end of `model` the checkpoint.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from django.conf import settings

logger = logging.getLogger(__name__)

SAMPLER_CLASSES = {"KSampler", "KSamplerAdvanced"}
TEXT_ENCODER_CLASSES = {"CLIPTextEncode"}
LATENT_CLASSES = {"EmptyLatentImage", "EmptySD3LatentImage"}
IMAGE_LOADER_CLASSES = {"LoadImage"}
# Output nodes whose files we keep, and the input that names their files.
SAVE_CLASSES = {"SaveImage", "SaveAnimatedWEBP", "SaveAnimatedPNG", "SaveWEBM", "SaveVideo"}

# Sampler inputs exposed on the form: our parameter name → ComfyUI input name.
SAMPLER_INPUTS = {
    "seed": "seed",
    "steps": "steps",
    "cfg": "cfg",
    "sampler": "sampler_name",
    "scheduler": "scheduler",
}
LATENT_INPUTS = {"width": "width", "height": "height", "batch_size": "batch_size"}


class WorkflowError(ValueError):
    """A workflow file that cannot be used, with the reason in words."""


@dataclass(frozen=True)
class Parameter:
    """One value of a workflow that a user may set: where it goes in the graph.

    `minimum`, `maximum` and `choices` narrow what ComfyUI's /object_info allows (from the
    workflow's sidecar file); `hidden` parameters are fixed to their default and not shown.
    """

    name: str
    node_id: str
    input_name: str
    label: str
    default: Any
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[Any, ...] | None = None
    help: str = ""
    hidden: bool = False


@dataclass
class Workflow:
    name: str
    title: str
    description: str
    graph: dict[str, Any]
    parameters: dict[str, Parameter] = field(default_factory=dict)

    @property
    def save_nodes(self) -> list[str]:
        return [node_id for node_id, node in self.graph.items() if node["class_type"] in SAVE_CLASSES]

    @property
    def node_classes(self) -> set[str]:
        return {node["class_type"] for node in self.graph.values()}

    def node_title(self, node_id: str | None) -> str:
        node = self.graph.get(node_id or "")
        if node is None:
            return f"node {node_id}"
        return node.get("_meta", {}).get("title") or node["class_type"]

    def defaults(self) -> dict[str, Any]:
        return {name: parameter.default for name, parameter in self.parameters.items()}

    @property
    def visible_parameters(self) -> dict[str, Parameter]:
        return {name: p for name, p in self.parameters.items() if not p.hidden}

    @property
    def takes_image(self) -> bool:
        return "image" in self.parameters

    def problems_on(self, node_classes: set[str], object_info: dict[str, Any]) -> list[str]:
        """Why this workflow cannot run on a backend with these nodes and models ([] if it can)."""
        missing = sorted(self.node_classes - node_classes)
        if missing:
            return [f"this ComfyUI lacks the node{'s' if len(missing) > 1 else ''} {', '.join(missing)}"]
        exposed = {(p.node_id, p.input_name) for p in self.parameters.values() if not p.hidden}
        problems = []
        for node_id, node in self.graph.items():
            spec = object_info.get(node["class_type"], {}).get("input", {})
            for input_name, value in node["inputs"].items():
                if node["class_type"] in IMAGE_LOADER_CLASSES or isinstance(value, list):
                    continue  # images are uploaded per job; lists are links
                choices = _combo_choices(spec, input_name)
                if choices is None:
                    continue
                if (node_id, input_name) in exposed and choices:
                    continue
                if value not in choices:
                    problems.append(
                        f"{self.node_title(node_id)} needs {value!r}, which this ComfyUI does not have"
                    )
        return problems

    def fill(self, values: dict[str, Any], *, filename_prefix: str) -> dict[str, Any]:
        """The graph to send to ComfyUI: a copy with `values` and our file name prefix set."""
        graph = copy.deepcopy(self.graph)
        fixed = {name: p.default for name, p in self.parameters.items() if p.hidden}
        for name, value in {**values, **fixed}.items():
            parameter = self.parameters.get(name)
            if parameter is not None and value is not None:
                graph[parameter.node_id]["inputs"][parameter.input_name] = value
        for node_id in self.save_nodes:
            graph[node_id]["inputs"]["filename_prefix"] = filename_prefix
        return graph


def _combo_choices(spec: dict[str, Any], input_name: str) -> list[Any] | None:
    for section in ("required", "optional"):
        declared = spec.get(section, {}).get(input_name)
        if declared and isinstance(declared[0], list):
            return declared[0]
        if declared and declared[0] == "COMBO" and len(declared) > 1:
            return list(declared[1].get("options", []))
    return None


def _linked_node(graph: dict[str, Any], node: dict[str, Any], input_name: str) -> tuple[str, dict] | None:
    link = node.get("inputs", {}).get(input_name)
    if isinstance(link, list) and len(link) == 2 and str(link[0]) in graph:
        return str(link[0]), graph[str(link[0])]
    return None


def _upstream(graph: dict[str, Any], node_id: str, input_name: str, wanted: set[str]) -> str | None:
    """Follow `input_name` links upstream (through LoRAs and the like) to a node of a wanted class."""
    seen: set[str] = set()
    current = node_id
    while current not in seen:
        seen.add(current)
        linked = _linked_node(graph, graph[current], input_name)
        if linked is None:
            return None
        current, node = linked
        if node["class_type"] in wanted:
            return current
    return None


def _checkpoint_loader(graph: dict[str, Any], sampler_id: str) -> str | None:
    seen: set[str] = set()
    current = sampler_id
    while current not in seen:
        seen.add(current)
        linked = _linked_node(graph, graph[current], "model")
        if linked is None:
            return None
        current, node = linked
        if "ckpt_name" in node.get("inputs", {}):
            return current
    return None


# What each parameter is called on the form when its node keeps the title ComfyUI gave it.
FRIENDLY_LABELS = {
    "prompt": "Prompt",
    "negative_prompt": "Negative prompt",
    "seed": "Seed",
    "steps": "Steps",
    "cfg": "CFG scale",
    "sampler": "Sampler",
    "scheduler": "Scheduler",
    "width": "Width",
    "height": "Height",
    "batch_size": "Images",
    "checkpoint": "Model",
    "denoise": "Denoise",
    "image": "Image",
}
SINGLE_VALUE_PARAMETERS = {"prompt", "negative_prompt", "checkpoint", "image"}


def field_label(node: dict[str, Any], name: str, shared_titles: frozenset[str] = frozenset()) -> str:
    """A node's own title labels its field when someone gave it one (“Style”, “Main sampler”).

    Not a title several nodes share: a frontend in another language exports its default titles
    (both text encoders “CLIP文本编码”), and a title two fields carry says nothing about which is
    which. Those fields are labelled by their role (Prompt, Negative prompt)."""
    friendly = FRIENDLY_LABELS.get(name, name.replace("_", " ").capitalize())
    title = _title_of(node)
    if (
        not title
        or title == node["class_type"]
        or title in DEFAULT_TITLES.get(node["class_type"], ())
        or title in shared_titles
    ):
        return friendly
    return title if name in SINGLE_VALUE_PARAMETERS else f"{title}: {friendly.lower()}"


def _title_of(node: dict[str, Any]) -> str:
    meta = node.get("_meta")
    title = meta.get("title", "") if isinstance(meta, dict) else ""
    return title.strip() if isinstance(title, str) else ""


def shared_titles(graph: dict[str, Any]) -> frozenset[str]:
    """Titles more than one node of `graph` carries."""
    counts = Counter(_title_of(node) for node in graph.values())
    return frozenset(title for title, count in counts.items() if title and count > 1)


# ComfyUI's default node titles: these say nothing about what a field is for.
DEFAULT_TITLES = {
    "CheckpointLoaderSimple": ("Load Checkpoint",),
    "CLIPTextEncode": ("CLIP Text Encode (Prompt)",),
    "EmptyLatentImage": ("Empty Latent Image",),
    "KSampler": ("KSampler",),
    "KSamplerAdvanced": ("KSampler (Advanced)",),
    "LoadImage": ("Load Image",),
}


def map_parameters(graph: dict[str, Any]) -> dict[str, Parameter]:
    """Find the user-settable parameters of an API-format graph."""
    parameters: dict[str, Parameter] = {}
    ambiguous = shared_titles(graph)

    def add(name: str, node_id: str, input_name: str) -> None:
        node = graph[node_id]
        default = node["inputs"].get(input_name)
        if isinstance(default, list):  # a link, not a value
            return
        parameters[name] = Parameter(name, node_id, input_name, field_label(node, name, ambiguous), default)

    samplers = sorted(
        (nid for nid, n in graph.items() if n["class_type"] in SAMPLER_CLASSES), key=_node_order
    )
    if samplers:
        sampler_id = samplers[0]
        sampler = graph[sampler_id]
        for role, name in (("positive", "prompt"), ("negative", "negative_prompt")):
            encoder = _upstream(graph, sampler_id, role, TEXT_ENCODER_CLASSES)
            if encoder:
                add(name, encoder, "text")
        seed_input = "noise_seed" if sampler["class_type"] == "KSamplerAdvanced" else "seed"
        for name, input_name in {**SAMPLER_INPUTS, "seed": seed_input}.items():
            if input_name in sampler["inputs"]:
                add(name, sampler_id, input_name)
        latent = _upstream(graph, sampler_id, "latent_image", LATENT_CLASSES)
        if latent:
            for name, input_name in LATENT_INPUTS.items():
                add(name, latent, input_name)
        elif "denoise" in sampler["inputs"]:
            add("denoise", sampler_id, "denoise")
        loader = _checkpoint_loader(graph, sampler_id)
        if loader:
            add("checkpoint", loader, "ckpt_name")
    loaders = sorted(
        (nid for nid, n in graph.items() if n["class_type"] in IMAGE_LOADER_CLASSES), key=_node_order
    )
    if loaders:
        add("image", loaders[0], "image")
    return parameters


def _node_order(node_id: str) -> tuple[int, str]:
    return (int(node_id), node_id) if node_id.isascii() and node_id.isdigit() else (1 << 30, node_id)


def validate_graph(graph: Any) -> None:
    if not isinstance(graph, dict) or not graph:
        raise WorkflowError("it is not a ComfyUI workflow in API format (a map of node ids to nodes)")
    for node_id, node in graph.items():
        if not isinstance(node, dict) or "class_type" not in node or not isinstance(node.get("inputs"), dict):
            raise WorkflowError(
                f"node {node_id} has no class_type or inputs; export the workflow with “Export (API)”"
            )
    if not any(node["class_type"] in SAVE_CLASSES for node in graph.values()):
        raise WorkflowError("it has no node that saves an output (SaveImage or similar)")


def load_workflow(path: Path) -> Workflow:
    try:
        graph = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WorkflowError(f"{path.name} cannot be read: {error}") from error
    meta = _read_sidecar(path)
    try:
        validate_graph(graph)
    except WorkflowError as error:
        raise WorkflowError(f"{path.name}: {error}") from error
    return Workflow(
        name=path.stem,
        title=meta.get("title") or path.stem.replace("_", " ").replace("-", " ").capitalize(),
        description=meta.get("description", ""),
        graph=graph,
        parameters=apply_sidecar(graph, map_parameters(graph), meta, path.name),
    )


SIDECAR_FIELD_KEYS = {
    "label": "label",
    "default": "default",
    "min": "minimum",
    "max": "maximum",
    "help": "help",
}


def apply_sidecar(
    graph: dict[str, Any], parameters: dict[str, Parameter], meta: dict[str, Any], filename: str
) -> dict[str, Parameter]:
    """Overrides from `<name>.form.json`:

    - `inputs`: expose any other node input, `{"scale": {"node": "2", "input": "scale_by", "label": "Scale"}}`
    - `fields`: per parameter `label`, `default`, `min`, `max`, `choices`, `help`
    - `hidden`: parameters fixed to a value and not shown, `{"sampler": "euler"}`
    - `order`: the parameters to show, in this order (the others are hidden at their defaults)
    """
    parameters = dict(parameters)
    for name, where in meta.get("inputs", {}).items():
        node = graph.get(str(where.get("node")))
        if node is None or where.get("input") not in node["inputs"]:
            raise WorkflowError(
                f"{filename}: input {name!r} names node {where.get('node')!r} / {where.get('input')!r}, "
                "which the workflow lacks"
            )
        parameters[name] = Parameter(
            name, str(where["node"]), where["input"], where.get("label", name), node["inputs"][where["input"]]
        )
    for name, overrides in meta.get("fields", {}).items():
        if name not in parameters:
            raise WorkflowError(f"{filename}: field {name!r} is not a parameter of the workflow")
        changes = {SIDECAR_FIELD_KEYS[k]: v for k, v in overrides.items() if k in SIDECAR_FIELD_KEYS}
        if "choices" in overrides:
            changes["choices"] = tuple(overrides["choices"])
        parameters[name] = replace(parameters[name], **changes)
    for name, value in meta.get("hidden", {}).items():
        if name in parameters:
            parameters[name] = replace(parameters[name], default=value, hidden=True)
    order = meta.get("order")
    if order:
        unknown = [name for name in order if name not in parameters]
        if unknown:
            raise WorkflowError(f"{filename}: order names unknown parameters {unknown}")
        shown = {name: parameters[name] for name in order}
        rest = {name: replace(p, hidden=True) for name, p in parameters.items() if name not in shown}
        parameters = {**shown, **rest}
    return parameters


def _read_sidecar(path: Path) -> dict[str, Any]:
    """The optional `<name>.form.json` beside a workflow: title, description and form overrides."""
    sidecar = path.with_name(f"{path.stem}.form.json")
    if not sidecar.exists():
        return {}
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WorkflowError(f"{sidecar.name} cannot be read: {error}") from error
    if not isinstance(meta, dict):
        raise WorkflowError(f"{sidecar.name} must hold a JSON object")
    return meta


@dataclass(frozen=True)
class Registry:
    workflows: dict[str, Workflow]
    problems: dict[str, str]  # file name → why it was skipped


def _signature(directory: Path) -> tuple[tuple[str, int, int], ...]:
    """Names, sizes and times of the workflow files: reload when any of them changes."""
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except FileNotFoundError:
        return ()
    return tuple(
        (e.name, e.stat().st_mtime_ns, e.stat().st_size) for e in entries if e.name.endswith(".json")
    )


@lru_cache(maxsize=4)
def _load_registry(directory: Path, signature: tuple) -> Registry:
    workflows: dict[str, Workflow] = {}
    problems: dict[str, str] = {}
    for path in sorted(directory.glob("*.json")):
        if path.name.endswith(".form.json"):
            continue
        try:
            workflows[path.stem] = load_workflow(path)
        except WorkflowError as error:
            problems[path.name] = str(error)
            logger.error("Workflow %s skipped: %s", path.name, error)
    return Registry(workflows, problems)


def registry() -> Registry:
    directory = Path(settings.WORKFLOWS_DIR)
    return _load_registry(directory, _signature(directory))


def all_workflows() -> dict[str, Workflow]:
    return registry().workflows


def get_workflow(name: str) -> Workflow:
    try:
        return all_workflows()[name]
    except KeyError:
        raise WorkflowError(f"there is no workflow named {name!r}") from None


DEFAULT_WORKFLOW = "txt2img"
