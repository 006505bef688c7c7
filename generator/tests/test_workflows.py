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


@pytest.fixture
def workflows_dir(tmp_path, settings):
    settings.WORKFLOWS_DIR = tmp_path
    return tmp_path


def write(directory, name, content):
    path = directory / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_the_shipped_workflows_all_load_with_descriptions():
    from generator.workflows import all_workflows, registry

    workflows = all_workflows()

    assert set(workflows) == {"txt2img", "img2img", "upscale"}
    assert all(w.description for w in workflows.values())
    assert registry().problems == {}
    assert workflows["upscale"].parameters["scale"].input_name == "scale_by"
    assert workflows["img2img"].takes_image


def test_a_sidecar_relabels_bounds_hides_and_orders_fields(workflows_dir):
    from generator.workflows import get_workflow

    write(workflows_dir, "fast.json", recorded("txt2img"))
    write(
        workflows_dir,
        "fast.form.json",
        {
            "title": "Fast sketch",
            "fields": {"steps": {"label": "Quality", "max": 12, "default": 6}},
            "hidden": {"sampler": "euler_ancestral"},
            "order": ["prompt", "steps", "seed"],
        },
    )

    workflow = get_workflow("fast")

    assert workflow.title == "Fast sketch"
    assert list(workflow.visible_parameters) == ["prompt", "steps", "seed"]
    assert (workflow.parameters["steps"].label, workflow.parameters["steps"].maximum) == ("Quality", 12)
    graph = workflow.fill({}, filename_prefix="x")
    assert graph["3"]["inputs"]["sampler_name"] == "euler_ancestral"


def test_the_registry_notices_new_and_broken_files_without_a_restart(workflows_dir, caplog):
    from generator.workflows import all_workflows, registry

    write(workflows_dir, "one.json", recorded("txt2img"))
    assert set(all_workflows()) == {"one"}

    write(workflows_dir, "two.json", recorded("img2img"))
    write(workflows_dir, "broken.json", "{oops")

    assert set(all_workflows()) == {"one", "two"}
    assert "cannot be read" in registry().problems["broken.json"]
    assert "broken.json" in caplog.text


def test_a_workflow_with_an_unknown_node_or_missing_model_is_unavailable_with_the_reason():
    graph = recorded("txt2img")
    graph["3"]["class_type"] = "FancySampler"
    with_unknown = map_parameters(graph)  # mapping does not crash on it
    assert "seed" not in with_unknown

    from generator.backends import bundled_object_info
    from generator.workflows import Workflow

    info = bundled_object_info()
    unknown = Workflow("x", "X", "", graph, {})
    assert unknown.problems_on(set(info), info) == ["this ComfyUI lacks the node FancySampler"]

    upscale = recorded("txt2img")
    upscale["4"]["inputs"]["ckpt_name"] = "sdxl.safetensors"
    hidden_model = Workflow("y", "Y", "", upscale, {})  # the checkpoint is not a form field here
    assert hidden_model.problems_on(set(info), info) == [
        "Load Checkpoint needs 'sdxl.safetensors', which this ComfyUI does not have"
    ]


@pytest.mark.django_db
def test_staff_see_broken_workflow_files_in_the_admin(client, staff_user, workflows_dir):
    write(workflows_dir, "good.json", recorded("txt2img"))
    write(workflows_dir, "broken.json", "{oops")
    client.force_login(staff_user)

    page = client.get("/admin/")

    assert "broken.json" in page.text
    assert "cannot be read" in page.text
