"""ComfyUI's validation errors, as recorded, translated into words a user understands."""

import pytest

from generator.comfy.errors import WorkflowRejected

from .recording import http_errors

RECORDED = {case["name"]: case for case in http_errors()}


def sent_workflow(name: str) -> dict:
    """The workflow of a recorded rejected request (`{}` when none was sent)."""
    return (RECORDED[name]["request"].get("json") or {}).get("prompt") or {}


EXPECTED = {
    "bad_link_missing_node": [
        "KSampler (node 3): “samples” is connected to node 99, which is not in the workflow"
    ],
    "bad_link_type_mismatch": [
        "KSampler (node 3): “model” is connected to a node that gives LATENT, not MODEL"
    ],
    "bad_link_output_index": [
        "KSampler (node 3): “samples” is connected to an output its node does not have"
    ],
    "missing_required_input": ["KSampler (node 3): the required input “seed” is missing"],
    "missing_required_link_input": ["KSampler (node 3): the required input “positive” is missing"],
    "unknown_class_type": [
        "CLIP Text Encode (Prompt) (node 6): this ComfyUI has no node type “NoSuchNodeType” "
        "(is a custom node missing?)"
    ],
    "missing_class_type": [
        "CLIP Text Encode (Prompt) (node 6): the node does not say what type it is (no class_type)"
    ],
    "checkpoint_not_in_list": [
        "Load Checkpoint (node 4): the model 'does-not-exist.safetensors' is not installed on this ComfyUI"
    ],
    "combo_value_not_in_list": [
        "KSampler (node 3): “sampler_name” cannot be 'no_such_sampler': it is not one of the choices"
    ],
    "value_below_min": ["KSampler (node 3): “steps” must be at least 1 (got 0)"],
    "value_above_max": ["Empty Latent Image (node 5): “width” must be at most 16384 (got 100000)"],
    "value_wrong_type": ["KSampler (node 3): “steps” must be a whole number (got 'abc')"],
    "no_output_node": ["The workflow has no output node (such as Save Image), so it would produce nothing."],
    "empty_prompt": ["The workflow has no output node (such as Save Image), so it would produce nothing."],
    "no_prompt_key": ["No workflow was sent."],
    "multiple_errors": [
        "KSampler (node 3): “samples” is connected to node 99, which is not in the workflow",
        "Load Checkpoint (node 4): the model 'nope.safetensors' is not installed on this ComfyUI",
    ],
}


def test_every_recorded_rejection_is_covered():
    assert set(RECORDED) == set(EXPECTED) | {"malformed_json_body"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_node_errors_read_as_sentences_naming_the_node_by_its_title(name):
    body = RECORDED[name]["response"]["json"]
    rejection = WorkflowRejected(body["error"], body["node_errors"])

    assert rejection.describe(sent_workflow(name)) == EXPECTED[name]
    assert str(rejection)  # the exception's own message is readable too


def test_without_the_workflow_nodes_are_named_by_class():
    body = RECORDED["value_below_min"]["response"]["json"]

    assert WorkflowRejected(body["error"], body["node_errors"]).describe() == [
        "KSampler (node 3): “steps” must be at least 1 (got 0)"
    ]


def test_an_unknown_node_type_without_the_workflow_names_the_node_by_id():
    body = RECORDED["unknown_class_type"]["response"]["json"]

    assert WorkflowRejected(body["error"], body["node_errors"]).describe() == [
        "Node 6: this ComfyUI has no node type “NoSuchNodeType” (is a custom node missing?)"
    ]


def test_an_unknown_error_type_falls_back_to_comfyuis_own_words():
    rejection = WorkflowRejected(
        {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation"},
        {
            "8": {
                "class_type": "VAEDecode",
                "errors": [{"type": "new_in_0_4", "message": "Odd", "details": "vae"}],
            }
        },
    )

    assert rejection.describe() == ["VAEDecode (node 8): Odd (vae)"]
