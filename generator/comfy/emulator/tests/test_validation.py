"""POST /prompt validation: the 17 recorded rejections answered byte for byte as ComfyUI 0.3.64
did, and the rules behind them on cases the recordings do not cover."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from generator.comfy.emulator.validation import Validator
from generator.comfy.tests.recording import http_errors, workflow

from .transcripts import Listener

OBJECT_INFO = json.loads((Path(__file__).resolve().parents[2] / "data" / "object_info.json").read_text())


@pytest.fixture
async def http(emulator):
    async with httpx.AsyncClient(base_url=emulator.url) as client:
        yield client


@pytest.mark.parametrize("case", http_errors(), ids=lambda case: case["name"])
async def test_each_recorded_rejection_is_answered_identically(emulator, http, case):
    request, expected = case["request"], case["response"]
    async with Listener(emulator.url, "watcher") as watcher:
        if "body_text" in request:
            headers = {"content-type": "application/json"}
            response = await http.post("/prompt", content=request["body_text"], headers=headers)
        else:
            response = await http.post("/prompt", json=request["json"])
        await asyncio.sleep(0.05)

    assert response.status_code == expected["status"]
    assert response.headers["content-type"] == expected["content_type"]
    if "json" in expected:
        assert response.json() == expected["json"]  # every field, tracebacks included
    else:
        assert response.text == expected["text"]
    assert emulator.queue.remaining == 0
    assert len(watcher.received) == 1  # the status on connect: a rejection announces nothing


def validate(prompt: dict[str, Any], checks: dict | None = None):
    return Validator(prompt, OBJECT_INFO, checks or {}).validate_prompt()


def test_values_are_converted_in_place_as_comfyui_stores_them():
    prompt = workflow("txt2img")
    verdict = validate(prompt)

    assert verdict.error is None
    assert verdict.outputs == ["9"]
    assert prompt["3"]["inputs"]["cfg"] == 8.0
    assert isinstance(prompt["3"]["inputs"]["cfg"], float)


def test_an_output_node_with_its_own_error_names_it_in_the_details():
    prompt = workflow("txt2img")
    del prompt["9"]["inputs"]["filename_prefix"]

    verdict = validate(prompt)

    assert verdict.error is not None
    assert verdict.error["details"] == "Required input is missing: filename_prefix"
    assert verdict.node_errors["9"]["errors"][0]["type"] == "required_input_missing"


def test_a_valid_output_is_kept_and_the_other_reported():
    """ComfyUI accepts a prompt when some outputs are valid; node_errors lists the others."""
    prompt = workflow("txt2img")
    prompt["10"] = {"class_type": "SaveImage", "inputs": {"filename_prefix": "x", "images": ["99", 0]}}

    verdict = validate(prompt)

    assert verdict.error is None
    assert verdict.outputs == ["9"]
    entry = verdict.node_errors["10"]
    assert entry["errors"][0]["type"] == "exception_during_validation"
    assert entry["errors"][0]["details"] == "'99'"
    assert entry["dependent_outputs"] == ["10"]


def test_a_failing_output_is_listed_under_every_node_with_errors():
    prompt = workflow("txt2img")
    prompt["4"]["inputs"]["ckpt_name"] = "nope.safetensors"
    prompt["10"] = copy.deepcopy(prompt["9"])

    verdict = validate(prompt)

    assert verdict.node_errors["4"]["dependent_outputs"] == ["9", "10"]


def test_load_image_checks_the_file_like_its_validate_inputs():
    prompt = workflow("img2img")
    verdict = validate(prompt, {("LoadImage", "image"): lambda value: f"Invalid image file: {value}"})

    error = verdict.node_errors["10"]["errors"][0]
    assert error["type"] == "custom_validation_failed"
    assert error["details"] == "image - Invalid image file: harness_input.png"


def test_broken_links_and_cycles_are_refused_not_crashed_on():
    prompt = workflow("txt2img")
    prompt["3"]["inputs"]["model"] = ["4"]
    assert validate(prompt).node_errors["3"]["errors"][0]["type"] == "bad_linked_input"

    looped = workflow("txt2img")
    looped["8"]["inputs"]["samples"] = ["3", 0]
    looped["3"]["inputs"]["latent_image"] = ["8", 0]
    verdict = validate(looped)
    assert verdict.error is not None
    assert verdict.error["type"] == "prompt_outputs_failed_validation"


async def test_a_prompt_that_is_not_an_object_is_a_500_like_comfyui(http):
    response = await http.post("/prompt", json={"prompt": {"3": 5}})
    assert (response.status_code, response.text) == (
        500,
        "500 Internal Server Error\n\nServer got itself in trouble",
    )


async def test_numbers_count_up_and_front_goes_first(emulator, http):
    emulator.step_seconds = 0.05
    prompts = []
    for seed in range(3):
        prompt = workflow("txt2img")
        prompt["3"]["inputs"].update(seed=seed, steps=3)
        prompts.append(prompt)
    first = (await http.post("/prompt", json={"prompt": prompts[0]})).json()
    second = (await http.post("/prompt", json={"prompt": prompts[1]})).json()
    front = (await http.post("/prompt", json={"prompt": prompts[2], "front": True})).json()

    assert [first["number"], second["number"], front["number"]] == [0, 1, -2]
    pending = (await http.get("/queue")).json()["queue_pending"]
    assert [item[1] for item in pending] == [front["prompt_id"], second["prompt_id"]]
