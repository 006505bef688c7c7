"""The pictures: deterministic, sized like ComfyUI's, saved like SaveImage saves them."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import pytest
from PIL import Image

from generator.comfy.emulator import Emulator
from generator.comfy.tests.recording import workflow

from .transcripts import Listener

PROJECT_WORKFLOWS = Path(__file__).resolve().parents[4] / "workflows"


@pytest.fixture
async def http(emulator):
    async with httpx.AsyncClient(base_url=emulator.url) as client:
        yield client


def txt2img(
    seed: int = 1, width: int = 128, height: int = 128, batch: int = 1, prefix: str = "ComfyUI"
) -> dict:
    prompt = workflow("txt2img")
    prompt["3"]["inputs"].update(seed=seed, steps=2)
    prompt["5"]["inputs"].update(width=width, height=height, batch_size=batch)
    prompt["9"]["inputs"]["filename_prefix"] = prefix
    return prompt


async def run(emulator: Emulator, http: httpx.AsyncClient, prompt: dict) -> dict:
    response = await http.post("/prompt", json={"prompt": prompt})
    assert response.status_code == 200, response.text
    await emulator.wait_idle()
    return emulator.history[response.json()["prompt_id"]]


async def pictures(http: httpx.AsyncClient, entry: dict, node: str = "9") -> list[Image.Image]:
    found = []
    for image in entry["outputs"][node]["images"]:
        response = await http.get("/view", params=image)
        found.append(Image.open(io.BytesIO(response.content)))
    return found


async def test_the_same_prompt_and_seed_give_the_same_png_anywhere(emulator, http):
    first = await run(emulator, http, txt2img(seed=5))
    async with Emulator() as other, httpx.AsyncClient(base_url=other.url) as other_http:
        second = await run(other, other_http, txt2img(seed=5))
        same = (await other_http.get("/view", params=second["outputs"]["9"]["images"][0])).content
    reseeded = await run(emulator, http, txt2img(seed=6))

    mine = (await http.get("/view", params=first["outputs"]["9"]["images"][0])).content
    assert mine == same
    assert (await pictures(http, reseeded))[0].tobytes() != Image.open(io.BytesIO(mine)).tobytes()


@pytest.mark.parametrize(("size", "expected"), [((200, 136), (200, 136)), ((100, 70), (96, 64))])
async def test_the_size_is_the_latent_size(emulator, http, size, expected):
    entry = await run(emulator, http, txt2img(width=size[0], height=size[1]))
    picture = (await pictures(http, entry))[0]

    assert (picture.format, picture.size, picture.mode) == ("PNG", expected, "RGB")


async def test_a_batch_saves_one_file_each_and_the_counter_goes_on(emulator, http):
    first = await run(emulator, http, txt2img(seed=1, batch=3))
    second = await run(emulator, http, txt2img(seed=2, batch=1))

    names = [i["filename"] for i in first["outputs"]["9"]["images"] + second["outputs"]["9"]["images"]]
    assert names == [f"ComfyUI_{n:05}_.png" for n in (1, 2, 3, 4)]
    batch = await pictures(http, first)
    assert len({p.tobytes() for p in batch}) == 3  # each picture of a batch differs


async def test_the_png_carries_the_prompt_and_the_workflow(emulator, http):
    response = await http.post(
        "/prompt", json={"prompt": txt2img(), "extra_data": {"extra_pnginfo": {"workflow": {"version": 0.4}}}}
    )
    await emulator.wait_idle()
    entry = emulator.history[response.json()["prompt_id"]]
    picture = (await pictures(http, entry))[0]

    assert list(picture.text) == ["prompt", "workflow"]
    assert json.loads(picture.text["prompt"]) == entry["prompt"][2]
    assert json.loads(picture.text["workflow"]) == {"version": 0.4}


async def test_every_picture_is_marked_as_a_demo(emulator, http):
    picture = (await pictures(http, await run(emulator, http, txt2img(width=512, height=512))))[0]
    corner = picture.crop(
        (picture.width * 2 // 3, picture.height - picture.height // 12, picture.width, picture.height)
    )
    colours = corner.getcolors(maxcolors=100_000) or []
    label = sum(count for count, colour in colours if colour == (20, 20, 24))
    text = sum(count for count, colour in colours if min(colour) > 200)

    assert label > 200  # the dark label box
    assert text > 50  # and letters on it


async def test_image_to_image_takes_the_input_size_cropped_to_eights(emulator, http):
    source = io.BytesIO()
    Image.new("RGB", (130, 70), (200, 40, 40)).save(source, "PNG")
    await http.post("/upload/image", files={"image": ("odd.png", source.getvalue(), "image/png")})
    prompt = workflow("img2img")
    prompt["10"]["inputs"]["image"] = "odd.png"
    prompt["3"]["inputs"]["steps"] = 2

    picture = (await pictures(http, await run(emulator, http, prompt)))[0]
    assert picture.size == (128, 64)


async def test_the_upscale_workflow_scales_the_picture(emulator, http):
    prompt = json.loads((PROJECT_WORKFLOWS / "upscale.json").read_text())
    picture = (await pictures(http, await run(emulator, http, prompt), node="3"))[0]

    assert picture.size == (1024, 1024)  # example.png is 512 x 512, scaled by 2


async def test_preview_image_writes_temp_files(emulator, http):
    prompt = txt2img()
    prompt["9"] = {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}

    entry = await run(emulator, http, prompt)
    image = entry["outputs"]["9"]["images"][0]

    assert image["type"] == "temp"
    assert image["filename"].startswith("ComfyUI_temp_")
    assert image["filename"].endswith("_00001_.png")
    assert (await http.get("/view", params=image)).status_code == 200


async def test_a_prefix_may_name_a_subfolder_and_the_size(emulator, http):
    entry = await run(emulator, http, txt2img(prefix="demo/run_%width%x%height%"))
    image = entry["outputs"]["9"]["images"][0]

    assert image == {"filename": "run_128x128_00001_.png", "subfolder": "demo", "type": "output"}
    assert (await http.get("/view", params=image)).status_code == 200


async def test_a_picture_too_big_for_the_demo_machine_runs_out_of_memory(emulator, http):
    async with Listener(emulator.url, "watcher") as listener:
        prompt = txt2img(width=16384, height=16384)
        prompt_id = (await http.post("/prompt", json={"prompt": prompt, "client_id": "watcher"})).json()[
            "prompt_id"
        ]
        await listener.wait_for_end(prompt_id, within=30)

    error = listener.of_type("execution_error")[0]
    assert (error["node_type"], error["exception_type"]) == ("VAEDecode", "torch.OutOfMemoryError")
    assert "ran out of memory" in error["exception_message"]
