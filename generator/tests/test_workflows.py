"""Reading a workflow's parameters from its graph."""

import json
from pathlib import Path

import pytest

from generator.workflows import WorkflowError, load_workflow, map_parameters

RECORDED = Path(__file__).resolve().parents[1] / "comfy" / "tests" / "recordings" / "workflows"


def recorded(name: str) -> dict:
    return json.loads((RECORDED / f"{name}.json").read_text())


def test_the_default_text_to_image_graph_maps_every_parameter_to_its_node():
    params = map_parameters(recorded("txt2img"))

    where = {name: (p.node_id, p.input_name) for name, p in params.items()}
    assert where == {
        "prompt": ("6", "text"),
        "negative_prompt": ("7", "text"),
        "seed": ("3", "seed"),
        "steps": ("3", "steps"),
        "cfg": ("3", "cfg"),
        "sampler": ("3", "sampler_name"),
        "scheduler": ("3", "scheduler"),
        "width": ("5", "width"),
        "height": ("5", "height"),
        "batch_size": ("5", "batch_size"),
        "checkpoint": ("4", "ckpt_name"),
    }
    assert params["checkpoint"].label == "Model"


def test_image_to_image_exposes_the_input_image_and_denoise_instead_of_a_size():
    params = map_parameters(recorded("img2img"))

    assert params["image"].node_id == "10"
    assert params["denoise"].default == 0.6
    assert "width" not in params


def test_fill_sets_values_and_our_file_prefix_without_touching_the_template(tmp_path):
    path = tmp_path / "txt2img.json"
    path.write_text(json.dumps(recorded("txt2img")))
    workflow = load_workflow(path)

    graph = workflow.fill({"prompt": "a red fox", "seed": 7, "width": 768}, filename_prefix="comfysite/job1")

    assert graph["6"]["inputs"]["text"] == "a red fox"
    assert graph["3"]["inputs"]["seed"] == 7
    assert graph["5"]["inputs"]["width"] == 768
    assert graph["9"]["inputs"]["filename_prefix"] == "comfysite/job1"
    assert workflow.graph["6"]["inputs"]["text"] != "a red fox"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{not json", "cannot be read"),
        ('{"1": {"inputs": {}}}', "has no class_type"),
        ('{"1": {"class_type": "KSampler", "inputs": {}}}', "no node that saves an output"),
        ("[]", "not a ComfyUI workflow in API format"),
    ],
)
def test_a_broken_workflow_file_is_refused_with_its_reason(tmp_path, content, reason):
    path = tmp_path / "broken.json"
    path.write_text(content)

    with pytest.raises(WorkflowError, match=reason):
        load_workflow(path)
