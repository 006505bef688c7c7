"""The other endpoints, against http_misc.json and ComfyUI's rules for files."""

from __future__ import annotations

import io
import json
import uuid

import httpx
import pytest
from PIL import Image

from generator.comfy.tests.recording import RECORDINGS, workflow

from .transcripts import SAMPLE_INPUT, Listener, shape

MISC = json.loads((RECORDINGS / "http_misc.json").read_text())


@pytest.fixture
async def http(emulator):
    async with httpx.AsyncClient(base_url=emulator.url) as client:
        yield client


async def run(emulator, http: httpx.AsyncClient, prompt: dict, **body) -> dict:
    prompt_id = (await http.post("/prompt", json={"prompt": prompt, **body})).json()["prompt_id"]
    await emulator.wait_idle()
    return (await http.get(f"/history/{prompt_id}")).json()[prompt_id]


@pytest.mark.parametrize(
    "key",
    [
        "GET /prompt",
        "GET /queue",
        "GET /history?max_items=2",
        "GET /embeddings",
        "GET /models",
        "GET /models/checkpoints",
        "GET /features",
        "GET /history/00000000-0000-0000-0000-000000000000",
        "GET /object_info/NoSuchNode",
    ],
)
async def test_answers_as_recorded(http, key):
    path = key.split(" ", 1)[1]
    for prefix in ("", "/api"):
        response = await http.get(prefix + path)
        assert (response.status_code, response.headers["content-type"]) == (200, MISC[key]["content_type"])
        assert response.json() == MISC[key]["json"]


async def test_system_stats_has_the_recorded_shape_and_says_it_is_the_emulator(http):
    stats = (await http.get("/api/system_stats")).json()
    recorded = MISC["GET /system_stats"]["json"]

    assert set(stats["system"]) == set(recorded["system"]) | {"emulator"}
    assert {k: v for k, v in shape(stats).items() if k != "system"} == {
        k: v for k, v in shape(recorded).items() if k != "system"
    }
    assert stats["system"]["comfyui_version"] == "0.3.64"
    assert stats["system"]["emulator"] is True
    assert "emulator" in stats["devices"][0]["name"]


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"filename": "does_not_exist.png", "type": "output"}, 404),
        ({"filename": "../../etc/passwd", "type": "output"}, 400),
        ({"filename": "/etc/passwd"}, 400),
        ({"filename": "x.png", "type": "nowhere"}, 400),
        ({"filename": "example.png", "type": "input", "subfolder": "../.."}, 403),
        ({}, 404),
    ],
)
async def test_view_refusals_have_empty_bodies(http, params, status):
    response = await http.get("/view", params=params)
    assert (response.status_code, response.content) == (status, b"")
    assert "content-type" not in response.headers or status not in (400, 404)


async def test_view_serves_inputs_outputs_and_annotated_names(emulator, http):
    entry = await run(emulator, http, workflow("txt2img"))
    image = entry["outputs"]["9"]["images"][0]

    view = await http.get("/view", params=image)
    assert view.headers["content-disposition"] == f'filename="{image["filename"]}"'
    annotated = await http.get("/view", params={"filename": f"{image['filename']} [output]", "type": "input"})
    assert annotated.content == view.content
    example = await http.get("/view", params={"filename": "example.png", "type": "input"})
    assert Image.open(io.BytesIO(example.content)).size == (512, 512)


@pytest.mark.parametrize(
    ("data", "files", "status"),
    [
        ({"type": "input"}, None, 400),  # no image field
        ({"subfolder": "../.."}, {"image": ("x.png", b"x", "image/png")}, 400),  # escapes input/
        ({}, {"image": ("../x.png", b"x", "image/png")}, 400),
        ({"type": "elsewhere"}, {"image": ("x.png", b"x", "image/png")}, 500),  # ComfyUI crashes here
    ],
)
async def test_upload_refusals(http, data, files, status):
    response = await http.post("/upload/image", data=data, files=files)
    assert response.status_code == status
    if status == 400:
        assert response.content == b""


async def test_uploads_are_not_checked_and_overwrite_only_when_asked(http):
    first = await http.post("/upload/image", files={"image": ("a.png", b"text, not a picture", "image/png")})
    again = await http.post("/upload/image", files={"image": ("a.png", b"other text", "image/png")})
    replaced = await http.post(
        "/upload/image", data={"overwrite": "1"}, files={"image": ("a.png", b"third", "image/png")}
    )
    to_temp = await http.post(
        "/upload/image", data={"type": "temp"}, files={"image": ("a.png", b"t", "image/png")}
    )

    assert [r.json()["name"] for r in (first, again, replaced)] == ["a.png", "a (1).png", "a.png"]
    assert to_temp.json() == {"name": "a.png", "subfolder": "", "type": "temp"}
    view = await http.get("/view", params={"filename": "a.png", "type": "input"})
    assert view.content == b"third"


async def test_object_info_lists_the_input_images_like_comfyui(http):
    await http.post("/upload/image", files={"image": ("mine.png", SAMPLE_INPUT, "image/png")})
    await http.post("/upload/image", files={"image": ("notes.txt", b"x", "text/plain")})
    await http.post(
        "/upload/image", data={"subfolder": "sub"}, files={"image": ("deep.png", SAMPLE_INPUT, "image/png")}
    )

    info = (await http.get("/object_info/LoadImage")).json()
    # Files directly in input/ that look like images; subfolders are not listed.
    assert info["LoadImage"]["input"]["required"]["image"][0] == ["example.png", "mine.png"]
    everything = (await http.get("/object_info")).json()
    assert {"KSampler", "SaveImage", "LoadImage", "ImageScaleBy"} <= set(everything)


async def test_queue_and_history_deletion(emulator, http):
    entry = await run(emulator, http, workflow("txt2img"))
    prompt_id = entry["prompt"][1]
    other = await run(emulator, http, {**workflow("txt2img"), "10": workflow("txt2img")["9"]})

    assert list((await http.get("/history", params={"max_items": 1})).json()) == [other["prompt"][1]]
    assert list((await http.get("/history", params={"max_items": 1, "offset": 0})).json()) == [prompt_id]
    deleted = await http.post("/history", json={"delete": [prompt_id]})
    assert (deleted.status_code, deleted.content) == (200, b"")
    assert (await http.get(f"/history/{prompt_id}")).json() == {}
    await http.post("/history", json={"clear": True})
    assert (await http.get("/history")).json() == {}


@pytest.mark.parametrize("path", ["/queue", "/history"])
async def test_posting_a_body_that_is_not_json_is_a_500(http, path):
    response = await http.post(path, content=b"{nope", headers={"content-type": "application/json"})
    assert response.status_code == 500


async def test_interrupt_with_a_body_that_is_not_json_is_global(emulator, http):
    emulator.step_seconds = 0.05
    prompt = workflow("txt2img")
    prompt["3"]["inputs"]["steps"] = 20
    async with Listener(emulator.url, "watcher") as watcher:
        response = await http.post("/prompt", json={"prompt": prompt, "client_id": "watcher"})
        prompt_id = response.json()["prompt_id"]
        await watcher.wait_for(lambda m: m["type"] == "progress")
        response = await http.post("/interrupt", content=b"not json")
        await watcher.wait_for_end(prompt_id)

    assert response.status_code == 200
    assert emulator.history[prompt_id]["status"]["status_str"] == "error"


async def test_our_own_prompt_id_and_extra_data_are_kept(emulator, http):
    prompt_id = str(uuid.uuid4())
    extra = {"extra_pnginfo": {"workflow": {"nodes": []}}, "api_key_comfy_org": "secret"}
    response = await http.post(
        "/prompt",
        json={"prompt": workflow("txt2img"), "prompt_id": prompt_id, "client_id": "me", "extra_data": extra},
    )
    await emulator.wait_idle()

    assert response.json() == {"prompt_id": prompt_id, "number": 0, "node_errors": {}}
    entry = emulator.history[prompt_id]
    # Sensitive keys never show in the queue or the history.
    assert entry["prompt"][3] == {"extra_pnginfo": {"workflow": {"nodes": []}}, "client_id": "me"}
    image = entry["outputs"]["9"]["images"][0]
    picture = Image.open(io.BytesIO((await http.get("/view", params=image)).content))
    assert json.loads(picture.text["workflow"]) == {"nodes": []}
    assert json.loads(picture.text["prompt"]) == entry["prompt"][2]
