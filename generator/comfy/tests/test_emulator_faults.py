"""Each fault switch of the emulator does what it says (the reliability tests depend on them)."""

import asyncio
import uuid

import httpx
import pytest

from generator.comfy.client import ComfyClient
from generator.comfy.errors import BackendUnreachable

from .test_client import finished, small_txt2img
from .test_connection import Collector


async def test_answer_500_on_a_chosen_endpoint(emulator):
    emulator.faults.http_500.add("/view")
    async with httpx.AsyncClient(base_url=emulator.url) as http:
        assert (await http.get("/view", params={"filename": "x.png"})).status_code == 500
        assert (await http.get("/api/view", params={"filename": "x.png"})).status_code == 500
        assert (await http.get("/queue")).status_code == 200


async def test_slow_view(emulator):
    emulator.faults.view_delay = 0.4
    async with ComfyClient(emulator.url) as comfy:
        prompt_id = str(uuid.uuid4())
        await comfy.queue_prompt(small_txt2img(), prompt_id=prompt_id, client_id="x")
        entry = await finished(comfy, prompt_id)
        started = asyncio.get_running_loop().time()
        await comfy.view(entry.outputs["9"][0])
        assert asyncio.get_running_loop().time() - started >= 0.4


async def test_refuse_connections_for_a_while(emulator):
    async with ComfyClient(emulator.url) as comfy:
        await emulator.refuse_connections(0.5)
        with pytest.raises(BackendUnreachable):
            await comfy.queue()
        await asyncio.sleep(0.7)
        assert (await comfy.queue()).running == ()


async def test_restart_loses_queue_and_history_but_keeps_files(slow_emulator):
    async with ComfyClient(slow_emulator.url) as comfy:
        done, running, waiting = (str(uuid.uuid4()) for _ in range(3))
        await comfy.queue_prompt(small_txt2img(1, 1), prompt_id=done, client_id="x")
        entry = await finished(comfy, done)
        await comfy.queue_prompt(small_txt2img(2, 20), prompt_id=running, client_id="x")
        await comfy.queue_prompt(small_txt2img(3, 20), prompt_id=waiting, client_id="x")

        await slow_emulator.restart()

        assert await comfy.history(done) is None
        assert (await comfy.queue()).running == ()
        assert (await comfy.queue()).pending == ()
        assert (await comfy.view(entry.outputs["9"][0])).startswith(b"\x89PNG")


async def test_fail_a_node_at_execution_time(emulator):
    emulator.faults.fail_node = "KSampler"
    async with ComfyClient(emulator.url) as comfy:
        prompt_id = str(uuid.uuid4())
        await comfy.queue_prompt(small_txt2img(), prompt_id=prompt_id, client_id="x")
        entry = await finished(comfy, prompt_id)

    assert entry.failure.node_type == "KSampler"
    assert entry.failure.exception_type == "RuntimeError"


async def test_drop_the_websocket_after_n_messages(emulator):
    from generator.comfy.connection import Disconnected

    emulator.faults.drop_ws_after = 3
    async with Collector(emulator.url, "x") as collector, ComfyClient(emulator.url) as comfy:
        await comfy.queue_prompt(small_txt2img(), prompt_id=str(uuid.uuid4()), client_id="x")
        await collector.until(lambda e: isinstance(e, Disconnected))

    assert emulator.faults.drop_ws_after is None  # one drop, then the switch is off again
