"""The emulator against the recordings of the real ComfyUI 0.3.64: each recorded scenario is
replayed on a real socket, and the client must receive the same messages in the same order,
with the same keys and the same values where they do not depend on ids, clocks or pixels."""

from __future__ import annotations

import asyncio
import copy
import io
import uuid
from typing import Any

import httpx
import pytest
from PIL import Image

from generator.comfy.emulator import Emulator
from generator.comfy.tests.recording import lines

from .transcripts import (
    SAMPLE_INPUT,
    Listener,
    normalise,
    recorded,
    recorded_cached,
    recorded_prompt_request,
    recorded_requests,
    recorded_response,
    shape,
)

STEP = 0.05  # seconds per sampler step: quick, yet time to act between steps


@pytest.fixture
async def emu():
    async with Emulator(step_seconds=STEP) as emulator:
        yield emulator


@pytest.fixture
async def http(emu):
    async with httpx.AsyncClient(base_url=emu.url) as client:
        yield client


async def warm_up(emu: Emulator, http: httpx.AsyncClient, prompt: dict[str, Any], cached: list[str]) -> None:
    """Leave exactly `cached` of the prompt's nodes in the emulator's cache, as they were on the
    recorded server: run a prompt in which every other node differs."""
    if not cached:
        return
    warm = copy.deepcopy(prompt)
    for node_id, node in warm.items():
        if node_id in cached:
            continue
        node["inputs"]["_warm_up"] = 1  # undeclared: the node ignores it, its cache key does not
        if node["class_type"] == "SaveImage":
            node["inputs"]["filename_prefix"] = "warm_up"
        if node["class_type"] == "LoadImage":
            node["inputs"]["image"] = "example.png"
    response = await http.post("/prompt", json={"prompt": warm})
    assert response.status_code == 200, response.text
    async with asyncio.timeout(10):
        await emu.wait_idle()


async def submit(http: httpx.AsyncClient, name: str, client_id: str | None, index: int = 0) -> str:
    body = recorded_prompt_request(name, index)
    if client_id is not None:
        body["client_id"] = client_id
    response = await http.post("/prompt", json=body)
    assert response.status_code == 200, response.text
    assert set(response.json()) == {"prompt_id", "number", "node_errors"}
    return response.json()["prompt_id"]


async def history_of(http: httpx.AsyncClient, prompt_id: str) -> dict[str, Any]:
    return (await http.get(f"/history/{prompt_id}")).json()[prompt_id]


def recorded_history(name: str) -> dict[str, Any]:
    return next(iter(recorded_response(name, "GET", "/history/")["json"].values()))


def assert_history_like_recorded(entry: dict[str, Any], name: str) -> None:
    want = recorded_history(name)
    assert shape(entry) == shape(want)
    assert entry["status"]["status_str"] == want["status"]["status_str"]
    assert entry["status"]["completed"] == want["status"]["completed"]
    assert [m[0] for m in entry["status"]["messages"]] == [m[0] for m in want["status"]["messages"]]
    assert entry["meta"] == want["meta"]
    assert entry["prompt"][2] == want["prompt"][2]  # the prompt as validated: cfg 8 -> 8.0
    assert entry["prompt"][4] == want["prompt"][4]


async def test_a_first_run_matches_the_recording(emu, http):
    name = "success_txt2img"
    async with Listener(emu.url, "harness-1") as client:
        assert (await http.get("/queue")).json() == recorded_response(name, "GET", "/queue")["json"]
        prompt_id = await submit(http, name, "harness-1")
        await client.wait_for(lambda m: m["type"] == "executing" and m["data"]["node"] == "4")
        queue = (await http.get("/queue")).json()
        assert (await http.get("/prompt")).json() == {"exec_info": {"queue_remaining": 1}}
        await client.wait_for_end(prompt_id)

    assert client.normalised() == recorded(name)
    while_running = recorded_requests(name, "GET", "/queue")[1]["response"]["json"]
    assert shape(queue) == shape(while_running)
    recorded_prompt = while_running["queue_running"][0][2]
    assert queue["queue_running"][0][2:] == [recorded_prompt, {"client_id": "harness-1"}, ["9"]]
    assert (await http.get("/queue")).json() == {"queue_running": [], "queue_pending": []}
    entry = await history_of(http, prompt_id)
    assert_history_like_recorded(entry, name)
    assert entry["outputs"] == recorded_history(name)["outputs"]  # ComfyUI_00001_.png
    view = await http.get("/view", params=entry["outputs"]["9"]["images"][0])
    assert view.headers["content-type"] == "image/png"
    picture = Image.open(io.BytesIO(view.content))
    assert (picture.format, picture.size, picture.mode) == ("PNG", (128, 128), "RGB")
    assert list(picture.text) == ["prompt"]


async def test_an_identical_rerun_is_served_from_cache_as_recorded(emu, http):
    name = "cached_rerun"
    first = await submit(http, name, None)
    async with asyncio.timeout(10):
        await emu.wait_idle()
    async with Listener(emu.url, "harness-2") as client:
        prompt_id = await submit(http, name, "harness-2")
        await client.wait_for_end(prompt_id)

    assert client.normalised() == recorded(name)
    entry = await history_of(http, prompt_id)
    assert_history_like_recorded(entry, name)
    assert entry["outputs"] == (await history_of(http, first))["outputs"]  # the same file, not a new one
    assert client.of_type("executed")[0]["output"]["images"][0]["filename"] == "ComfyUI_00001_.png"


async def test_previews_with_metadata_match_the_recording(emu, http):
    name = "success_txt2img_preview_metadata"
    await warm_up(emu, http, recorded_prompt_request(name)["prompt"], recorded_cached(name))
    async with Listener(emu.url, "harness-3", preview_metadata=True) as client:
        prompt_id = await submit(http, name, "harness-3")
        await client.wait_for_end(prompt_id)

    assert client.normalised() == recorded(name)
    frames = [r for r in client.received if r.get("binary")]
    assert {f["header_hex"] for f in frames} == {"00000004000000a6"}  # metadata_len 166, as recorded
    assert frames[0]["metadata"] == {
        "node_id": "3",
        "prompt_id": prompt_id,
        "display_node_id": "3",
        "parent_node_id": None,
        "real_node_id": "3",
        "image_type": "image/jpeg",
    }
    preview = Image.open(io.BytesIO(frames[0]["payload"]))
    assert (preview.format, preview.size) == ("JPEG", (512, 512))
    assert_history_like_recorded(await history_of(http, prompt_id), name)


async def test_type_one_previews_are_jpeg_scaled_to_512(emu, http):
    async with Listener(emu.url, "harness-4") as client:
        prompt_id = await submit(http, "success_txt2img", "harness-4")
        await client.wait_for_end(prompt_id)

    frames = [r for r in client.received if r.get("binary")]
    assert len(frames) == 3
    assert {(f["header_hex"], f["image_format"]) for f in frames} == {("0000000100000001", 1)}
    preview = Image.open(io.BytesIO(frames[0]["payload"]))
    assert (preview.format, preview.size, preview.mode) == ("JPEG", (512, 512), "RGB")


async def test_without_client_id_only_the_recorded_messages_are_broadcast(emu, http):
    name = "no_client_id"
    # Nobody was told what was cached; the progress shows 5, 3, 8 and 9 ran.
    await warm_up(emu, http, recorded_prompt_request(name)["prompt"], ["4", "6", "7"])
    async with Listener(emu.url, "harness-listener-a") as a, Listener(emu.url, "harness-listener-b") as b:
        prompt_id = await submit(http, name, None)
        async with asyncio.timeout(10):
            await emu.wait_idle()

    assert a.normalised() == recorded(name, "A")
    assert b.normalised() == recorded(name, "B")
    assert_history_like_recorded(await history_of(http, prompt_id), name)


async def test_uploads_answer_as_recorded(http):
    exchanges = recorded_requests("img2img", "POST", "/upload/image")
    uploads = [
        ({"type": "input", "overwrite": "true"}, "harness_input.png", SAMPLE_INPUT),
        ({}, "harness_input.png", SAMPLE_INPUT),  # same bytes: the same file
        ({}, "harness_input.png", b"\x89PNG other bytes"),  # other bytes: renamed
        ({"subfolder": "harness", "type": "input", "overwrite": "true"}, "sub_input.png", SAMPLE_INPUT),
    ]
    for (data, filename, content), exchange in zip(uploads, exchanges, strict=True):
        response = await http.post(
            "/upload/image", data=data, files={"image": (filename, content, "image/png")}
        )
        assert response.status_code == exchange["response"]["status"]
        assert response.json() == exchange["response"]["json"]
    sub = await http.get(
        "/view", params={"filename": "sub_input.png", "subfolder": "harness", "type": "input"}
    )
    assert sub.content == SAMPLE_INPUT


async def test_image_to_image_with_an_upload_matches_the_recording(emu, http):
    name = "img2img"
    upload = await http.post(
        "/upload/image",
        data={"type": "input", "overwrite": "true"},
        files={"image": ("harness_input.png", SAMPLE_INPUT, "image/png")},
    )
    assert upload.json() == {"name": "harness_input.png", "subfolder": "", "type": "input"}
    await warm_up(emu, http, recorded_prompt_request(name)["prompt"], recorded_cached(name))
    async with Listener(emu.url, "harness-5") as client:
        prompt_id = await submit(http, name, "harness-5")
        await client.wait_for_end(prompt_id)

    assert client.normalised() == recorded(name)
    entry = await history_of(http, prompt_id)
    assert_history_like_recorded(entry, name)
    output = entry["outputs"]["9"]["images"][0]
    assert output == {"filename": "ComfyUI_img2img_00001_.png", "subfolder": "", "type": "output"}
    picture = Image.open(io.BytesIO((await http.get("/view", params=output)).content))
    assert (picture.size, list(picture.text)) == ((128, 128), ["prompt"])  # the input's size
    source = await http.get(
        "/view", params={"filename": "harness_input.png", "type": "input", "subfolder": ""}
    )
    assert source.content == SAMPLE_INPUT


async def test_interrupting_the_running_prompt_by_id_matches_the_recording(emu, http):
    name = "interrupted"
    await warm_up(emu, http, recorded_prompt_request(name)["prompt"], recorded_cached(name))
    async with Listener(emu.url, "harness-6") as client:
        prompt_id = await submit(http, name, "harness-6")
        await client.wait_for(lambda m: m["type"] == "progress")
        other = await http.post("/interrupt", json={"prompt_id": "00000000-0000-0000-0000-000000000000"})
        mine = await http.post("/interrupt", json={"prompt_id": prompt_id})
        await client.wait_for_end(prompt_id)

    assert (other.status_code, other.content, mine.status_code, mine.content) == (200, b"", 200, b"")
    assert client.normalised() == recorded(name)
    entry = await history_of(http, prompt_id)
    assert_history_like_recorded(entry, name)
    assert entry["outputs"] == {}
    assert (await http.get("/queue")).json() == {"queue_running": [], "queue_pending": []}


async def test_interrupting_another_prompt_id_changes_nothing(emu, http):
    async with Listener(emu.url, "harness-7") as client:
        body = recorded_prompt_request("interrupted")
        body["prompt"]["3"]["inputs"]["steps"] = 4
        prompt_id = (await http.post("/prompt", json={**body, "client_id": "harness-7"})).json()["prompt_id"]
        await client.wait_for(lambda m: m["type"] == "progress")
        await http.post("/interrupt", json={"prompt_id": str(uuid.uuid4())})
        await client.wait_for_end(prompt_id)

    assert [p["value"] for p in client.of_type("progress")] == [1, 2, 3, 4]
    assert client.of_type("execution_success")
    assert not client.of_type("execution_interrupted")


async def test_a_global_interrupt_matches_the_recording(emu, http):
    name = "interrupted_global"
    await warm_up(emu, http, recorded_prompt_request(name)["prompt"], recorded_cached(name))
    async with Listener(emu.url, "harness-8") as client:
        prompt_id = await submit(http, name, "harness-8")
        await client.wait_for(lambda m: m["type"] == "progress")
        response = await http.post("/interrupt")
        await client.wait_for_end(prompt_id)

    assert (response.status_code, response.content) == (200, b"")
    assert client.normalised() == recorded(name)
    assert_history_like_recorded(await history_of(http, prompt_id), name)


async def test_queue_deletion_matches_the_recording(emu, http):
    name = "queue_delete"
    await warm_up(emu, http, recorded_prompt_request(name)["prompt"], recorded_cached(name))
    queues = [r["response"]["json"] for r in recorded_requests(name, "GET", "/queue")]
    # The running job must outlast the eight requests below on a busy machine (at 0.05 s a step
    # it sometimes ended before the interrupt); the interrupt still lands at its next step.
    emu.step_seconds = 0.25
    async with Listener(emu.url, "harness-9") as client:
        running = await submit(http, name, "harness-9")
        await client.wait_for(lambda m: m["type"] == "executing" and m["data"]["node"] == "3")
        second = await submit(http, name, "harness-9", 1)
        third = await submit(http, name, "harness-9", 2)
        seen = [(await http.get("/queue")).json()]
        assert (await http.get("/prompt")).json() == {"exec_info": {"queue_remaining": 3}}
        assert (await http.post("/queue", json={"delete": [second]})).content == b""
        seen.append((await http.get("/queue")).json())
        await http.post("/queue", json={"delete": [running, "no-such-id"]})  # running, unknown: ignored
        seen.append((await http.get("/queue")).json())
        await http.post("/queue", json={"clear": True})
        seen.append((await http.get("/queue")).json())
        await client.wait_for(lambda m: m["type"] == "progress")
        await http.post("/interrupt")
        await client.wait_for_end(running)
        seen.append((await http.get("/queue")).json())

    assert client.normalised() == recorded(name)
    assert [shape(q) for q in seen] == [shape(q) for q in queues]
    assert [item[1] for item in seen[0]["queue_pending"]] == [second, third]
    assert [item[1] for item in seen[1]["queue_pending"]] == [third]
    assert (await http.get(f"/history/{second}")).json() == {}
    assert (await http.get(f"/history/{third}")).json() == {}


async def test_a_save_outside_the_output_folder_fails_as_recorded(emu, http):
    name = "execution_error"
    await warm_up(emu, http, recorded_prompt_request(name)["prompt"], recorded_cached(name))
    async with Listener(emu.url, "harness-10") as client:
        prompt_id = await submit(http, name, "harness-10")
        await client.wait_for_end(prompt_id)

    assert client.normalised() == recorded(name)
    assert_error_like_recorded(client.of_type("execution_error")[0], name)
    entry = await history_of(http, prompt_id)
    assert_history_like_recorded(entry, name)
    assert entry["outputs"] == {}


def assert_error_like_recorded(error: dict[str, Any], name: str) -> None:
    messages = recorded_history(name)["status"]["messages"]
    want = next(data for event, data in messages if event == "execution_error")
    assert error["exception_message"] == want["exception_message"]
    assert error["exception_type"] == want["exception_type"]
    assert error["traceback"] == want["traceback"]
    assert list(error["current_inputs"]) == list(want["current_inputs"])
    for input_name, values in want["current_inputs"].items():
        if "tensor(" not in str(values):  # widget values and the prompt's repr, not pixels
            assert error["current_inputs"][input_name] == values


async def test_a_text_file_named_png_fails_in_load_image_as_recorded(emu, http):
    name = "execution_error_bad_image"
    upload = await http.post(
        "/upload/image",
        data={"overwrite": "true"},
        files={"image": ("not_really.png", b"not an image, text", "image/png")},
    )
    assert upload.json() == {"name": "not_really.png", "subfolder": "", "type": "input"}  # not checked
    await warm_up(emu, http, recorded_prompt_request(name)["prompt"], recorded_cached(name))
    async with Listener(emu.url, "harness-11") as client:
        prompt_id = await submit(http, name, "harness-11")
        await client.wait_for_end(prompt_id)

    assert client.normalised() == recorded(name)
    assert_error_like_recorded(client.of_type("execution_error")[0], name)
    assert_history_like_recorded(await history_of(http, prompt_id), name)


def test_the_comparison_keeps_what_matters_and_ignores_ids():
    record = next(r for r in lines("success_txt2img") if r.get("msg", {}).get("type") == "progress_state")
    line = normalise(record)

    other_ids = copy.deepcopy(record)
    other_ids["msg"]["data"]["prompt_id"] = "another"
    for state in other_ids["msg"]["data"]["nodes"].values():
        state["prompt_id"] = "another"
    assert normalise(other_ids) == line
    missing_key = copy.deepcopy(record)
    del missing_key["msg"]["data"]["nodes"]["4"]["real_node_id"]
    assert normalise(missing_key) != line
    int_not_float = copy.deepcopy(record)
    int_not_float["msg"]["data"]["nodes"]["4"]["value"] = 0
    assert normalise(int_not_float) != line
