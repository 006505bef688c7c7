"""The REST client against the emulator on a real port: every call, every typed error."""

import asyncio
import socket
import uuid

import httpx
import pytest
from aiohttp import web

from generator.comfy.client import ComfyClient, QueueSnapshot
from generator.comfy.errors import BackendUnreachable, NotFound, ProtocolError, WorkflowRejected
from generator.comfy.events import OutputFile

from .recording import SAMPLES, workflow


@pytest.fixture
async def comfy(emulator):
    async with ComfyClient(emulator.url) as client:
        yield client


def small_txt2img(seed: int = 1, steps: int = 2) -> dict:
    graph = workflow("txt2img")
    graph["3"]["inputs"].update(seed=seed, steps=steps)
    graph["5"]["inputs"].update(width=64, height=64)
    return graph


async def finished(comfy: ComfyClient, prompt_id: str):
    for _ in range(200):
        entry = await comfy.history(prompt_id)
        if entry is not None:
            return entry
        await asyncio.sleep(0.02)
    raise AssertionError("never finished")


async def test_queue_a_prompt_under_our_own_id_then_read_history_and_view(comfy):
    prompt_id = str(uuid.uuid4())

    queued = await comfy.queue_prompt(small_txt2img(), prompt_id=prompt_id, client_id="site")
    entry = await finished(comfy, prompt_id)
    data = await comfy.view(entry.outputs["9"][0])

    assert queued.prompt_id == prompt_id
    assert entry.succeeded
    assert data.startswith(b"\x89PNG")


async def test_queue_and_queue_remaining_show_running_and_waiting_prompts(slow_emulator):
    async with ComfyClient(slow_emulator.url) as comfy:
        first, second = str(uuid.uuid4()), str(uuid.uuid4())
        await comfy.queue_prompt(small_txt2img(1, 20), prompt_id=first, client_id="site")
        await comfy.queue_prompt(small_txt2img(2, 20), prompt_id=second, client_id="site")
        await asyncio.sleep(0.1)

        snapshot = await comfy.queue()

        assert snapshot == QueueSnapshot(running=(first,), pending=(second,))
        assert (snapshot.position(first), snapshot.position(second), snapshot.position("x")) == (0, 1, None)
        assert await comfy.queue_remaining() == 2

        await comfy.delete_from_queue([second])
        assert (await comfy.queue()).pending == ()
        await comfy.interrupt(first)
        entry = await finished(comfy, first)
        assert entry.status_str == "error"
        assert await comfy.history(second) is None


async def test_interrupt_always_names_the_prompt():
    async with ComfyClient("http://127.0.0.1:9") as comfy:
        with pytest.raises(ValueError, match="prompt_id"):
            await comfy.interrupt("")


async def test_history_can_be_deleted(comfy):
    prompt_id = str(uuid.uuid4())
    await comfy.queue_prompt(small_txt2img(), prompt_id=prompt_id, client_id="site")
    await finished(comfy, prompt_id)

    await comfy.delete_history([prompt_id])

    assert await comfy.history(prompt_id) is None


async def test_upload_image_returns_the_name_load_image_takes(comfy):
    image = (SAMPLES / "img2img_input.png").read_bytes()

    plain = await comfy.upload_image(image, "input.png", overwrite=True)
    nested = await comfy.upload_image(image, "input.png", subfolder="site", overwrite=True)

    assert plain.load_image_value == "input.png"
    assert nested.load_image_value == "site/input.png"
    assert (
        "site/input.png"
        in (await comfy.object_info("LoadImage"))["LoadImage"]["input"]["required"]["image"][0]
    )


async def test_object_info_and_system_stats(comfy):
    everything = await comfy.object_info()
    ksampler = await comfy.object_info("KSampler")
    stats = await comfy.system_stats()

    assert "KSampler" in everything
    assert set(ksampler) == {"KSampler"}
    assert stats["system"]["comfyui_version"] == "0.3.64"


async def test_an_unknown_node_class_is_not_found(comfy):
    with pytest.raises(NotFound, match="NoSuchNode"):
        await comfy.object_info("NoSuchNode")


async def test_a_missing_output_file_is_not_found(comfy):
    with pytest.raises(NotFound):
        await comfy.view(OutputFile("nope.png", "", "output"))


async def test_a_rejected_workflow_carries_its_node_errors(comfy):
    graph = small_txt2img()
    graph["3"]["inputs"]["steps"] = 0

    with pytest.raises(WorkflowRejected) as rejected:
        await comfy.queue_prompt(graph, prompt_id=str(uuid.uuid4()), client_id="site")

    assert rejected.value.node_errors["3"]["errors"][0]["type"] == "value_smaller_than_min"
    assert rejected.value.describe(graph) == ["KSampler (node 3): “steps” must be at least 1 (got 0)"]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_comfyui_down_is_backend_unreachable_with_a_readable_message():
    async with ComfyClient(f"http://127.0.0.1:{closed_port()}") as comfy:
        with pytest.raises(BackendUnreachable, match="is unreachable"):
            await comfy.queue()


async def test_a_failing_comfyui_is_backend_unreachable(emulator, comfy):
    emulator.faults.http_500.add("/queue")

    with pytest.raises(BackendUnreachable, match="HTTP 500"):
        await comfy.queue()


async def test_a_slow_view_times_out_as_unreachable(emulator):
    emulator.faults.view_delay = 1.0
    async with ComfyClient(emulator.url, view_timeout=httpx.Timeout(0.2)) as comfy:
        prompt_id = str(uuid.uuid4())
        await comfy.queue_prompt(small_txt2img(), prompt_id=prompt_id, client_id="site")
        entry = await finished(comfy, prompt_id)

        with pytest.raises(BackendUnreachable, match="did not answer in time"):
            await comfy.view(entry.outputs["9"][0])


@pytest.fixture
async def not_comfyui():
    """A server that answers like a misconfigured proxy: HTML where JSON belongs."""

    async def html(request):
        return web.Response(text="<html>502 from a proxy</html>")

    async def wrong_json(request):
        return web.json_response({"hello": "world"})

    app = web.Application()
    app.router.add_get("/queue", html)
    app.router.add_get("/system_stats", wrong_json)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_answers_that_are_not_comfyuis_are_protocol_errors(not_comfyui):
    async with ComfyClient(not_comfyui) as comfy:
        with pytest.raises(ProtocolError, match="not JSON"):
            await comfy.queue()
        with pytest.raises(ProtocolError, match="system"):
            await comfy.system_stats()
