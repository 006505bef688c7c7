"""The /ws endpoint's rules beyond the recorded scenarios: ids, reconnects, feature flags."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import websockets

from generator.comfy.emulator import Emulator
from generator.comfy.tests.recording import workflow

from .transcripts import Listener


@pytest.fixture
async def emu():
    async with Emulator(step_seconds=0.05) as emulator:
        yield emulator


def long_prompt(steps: int = 10) -> dict:
    prompt = workflow("txt2img")
    prompt["3"]["inputs"]["steps"] = steps
    prompt["5"]["inputs"].update(width=64, height=64)
    return prompt


async def test_without_a_client_id_the_server_makes_one_up(emu):
    async with websockets.connect(emu.url.replace("http", "ws") + "/api/ws") as socket:
        status = json.loads(await socket.recv())

    assert status["type"] == "status"
    assert len(status["data"]["sid"]) == 32  # uuid4().hex
    assert status["data"]["status"] == {"exec_info": {"queue_remaining": 0}}


async def test_a_reconnect_replaces_the_old_socket_and_learns_the_running_node(emu):
    async with Listener(emu.url, "me") as old, httpx.AsyncClient(base_url=emu.url) as http:
        response = await http.post("/prompt", json={"prompt": long_prompt(), "client_id": "me"})
        prompt_id = response.json()["prompt_id"]
        await old.wait_for(lambda m: m["type"] == "progress")
        async with Listener(emu.url, "me") as new:
            await new.wait_for_end(prompt_id)
            count_when_replaced = len(old.received)

        assert new.messages[1] == {"type": "executing", "data": {"node": "3"}}  # where the prompt is
        assert not old.closed.is_set()  # left open, as ComfyUI leaves it
        assert len(old.received) == count_when_replaced


async def test_feature_flags_count_only_as_the_first_message(emu):
    async with websockets.connect(f"{emu.ws_url}?clientId=late") as socket:
        await socket.recv()  # status
        await socket.send(json.dumps({"type": "hello"}))
        await socket.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await socket.recv()
        assert not emu.hub.supports_preview_metadata("late")


async def test_previews_can_be_switched_off(emu):
    emu.settings.preview = False
    async with Listener(emu.url, "me") as listener, httpx.AsyncClient(base_url=emu.url) as http:
        response = await http.post("/prompt", json={"prompt": long_prompt(3), "client_id": "me"})
        await listener.wait_for_end(response.json()["prompt_id"])

    assert [p["value"] for p in listener.of_type("progress")] == [1, 2, 3]
    assert not [r for r in listener.received if r.get("binary")]


async def test_without_a_client_id_previews_are_type_one_even_for_metadata_clients(emu):
    async with (
        Listener(emu.url, "meta", preview_metadata=True) as listener,
        httpx.AsyncClient(base_url=emu.url) as http,
    ):
        await http.post("/prompt", json={"prompt": long_prompt(2)})
        await emu.wait_idle()

    assert {r["type"] for r in listener.received if r.get("binary")} == {1}
