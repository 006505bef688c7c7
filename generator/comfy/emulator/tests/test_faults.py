"""Each fault switch does what it says: the site's reliability tests stand on them."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
import websockets

from generator.comfy.emulator import Emulator
from generator.comfy.tests.recording import workflow

from .transcripts import SAMPLE_INPUT, Listener


def small(seed: int = 1, steps: int = 2) -> dict:
    prompt = workflow("txt2img")
    prompt["3"]["inputs"].update(seed=seed, steps=steps)
    prompt["5"]["inputs"].update(width=64, height=64)
    return prompt


@pytest.fixture
async def emu():
    async with Emulator(step_seconds=0.05) as emulator:
        yield emulator


@pytest.fixture
async def http(emu):
    async with httpx.AsyncClient(base_url=emu.url) as client:
        yield client


async def queue(http: httpx.AsyncClient, prompt: dict, client_id: str | None = "watcher") -> str:
    body = {"prompt": prompt} if client_id is None else {"prompt": prompt, "client_id": client_id}
    response = await http.post("/prompt", json=body)
    assert response.status_code == 200, response.text
    return response.json()["prompt_id"]


async def test_drop_ws_after_closes_the_first_socket_at_n_messages_then_turns_off(emu, http):
    emu.faults.drop_ws_after = 4
    async with Listener(emu.url, "watcher") as first:
        await queue(http, small())
        async with asyncio.timeout(5):
            await first.closed.wait()

    assert len(first.received) == 4
    assert first.socket.close_code == 1000  # a clean close
    assert emu.faults.drop_ws_after is None
    async with Listener(emu.url, "watcher") as second:
        prompt_id = await queue(http, small(2))
        await second.wait_for_end(prompt_id)
        assert not second.closed.is_set()


async def test_drop_ws_after_without_drop_once_drops_every_socket(emu, http):
    emu.faults.drop_ws_after = 2
    emu.faults.drop_once = False
    for client in ("a", "a", "b"):  # reconnects too
        async with Listener(emu.url, client) as listener:
            await queue(http, small(), client)
            async with asyncio.timeout(5):
                await listener.closed.wait()
        assert len(listener.received) == 2
    assert emu.faults.drop_ws_after == 2


async def test_an_abrupt_drop_sends_no_close_frame(emu, http):
    emu.faults.drop_ws_after = 3
    emu.faults.drop_abruptly = True
    async with Listener(emu.url, "watcher") as listener:
        await queue(http, small())
        async with asyncio.timeout(5):
            await listener.closed.wait()

    assert listener.socket.close_code == 1006
    assert listener.socket.protocol.close_rcvd is None


async def test_answer_500_on_a_chosen_endpoint(emu, http):
    emu.faults.http_500.add("/prompt")

    for path in ("/prompt", "/api/prompt"):
        response = await http.post(path, json={"prompt": small()})
        assert (response.status_code, response.text) == (
            500,
            "500 Internal Server Error\n\nServer got itself in trouble",
        )
        assert (await http.get(path)).status_code == 500  # every method
    assert (await http.get("/queue")).status_code == 200
    assert emu.queue.remaining == 0

    emu.faults.http_500 = {"*"}
    assert (await http.get("/system_stats")).status_code == 500
    async with Listener(emu.url, "still") as listener:  # the websocket is not an HTTP endpoint
        assert listener.received
    emu.faults.reset()
    assert (await http.get("/system_stats")).status_code == 200


async def test_a_slow_view(emu, http):
    prompt_id = await queue(http, small(), None)
    await emu.wait_idle()
    image = emu.history[prompt_id]["outputs"]["9"]["images"][0]
    emu.faults.view_delay = 0.3

    started = time.monotonic()
    response = await http.get("/view", params=image)

    assert response.status_code == 200
    assert time.monotonic() - started >= 0.3


async def test_a_late_answer_to_post_prompt_lets_events_arrive_first(emu, http):
    emu.faults.prompt_answer_delay = 0.3
    async with Listener(emu.url, "watcher") as listener:
        prompt_id = await queue(http, small())
        seen_before_answer = [m["type"] for m in listener.messages]

        await listener.wait_for_end(prompt_id)
    assert "execution_start" in seen_before_answer


async def test_refuse_connections_for_a_while_then_serve_on_the_same_port(emu, http):
    port = emu.port
    prompt_id = await queue(http, small(steps=10), None)
    async with Listener(emu.url, "watcher") as listener:
        await emu.faults.refuse_connections(0.5)
        async with asyncio.timeout(2):
            await listener.closed.wait()
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient(base_url=emu.url) as fresh:
                await fresh.get("/queue")
        with pytest.raises(ConnectionRefusedError):
            await websockets.connect(emu.ws_url)

    await asyncio.sleep(0.7)
    async with httpx.AsyncClient(base_url=emu.url) as again:
        assert (await again.get("/prompt")).status_code == 200
    assert emu.port == port
    await emu.wait_idle()
    assert emu.history[prompt_id]["status"]["status_str"] == "success"  # it ran on meanwhile


async def test_restart_loses_queue_history_and_sockets_but_keeps_files(emu, http):
    await http.post("/upload/image", files={"image": ("kept.png", SAMPLE_INPUT, "image/png")})
    done = await queue(http, small(1), None)
    await emu.wait_idle()
    image = emu.history[done]["outputs"]["9"]["images"][0]
    async with Listener(emu.url, "watcher") as listener:
        running = await queue(http, small(2, steps=20))
        waiting = await queue(http, small(3, steps=20))
        await listener.wait_for(lambda m: m["type"] == "progress")

        await emu.faults.restart()

        async with asyncio.timeout(2):
            await listener.closed.wait()
    assert listener.socket.close_code == 1006  # the server went away, no goodbye
    assert (await http.get("/queue")).json() == {"queue_running": [], "queue_pending": []}
    assert (await http.get("/history")).json() == {}
    await asyncio.sleep(0.3)
    assert running not in emu.history
    assert waiting not in emu.history
    assert (await http.get("/view", params=image)).status_code == 200
    assert (await http.get("/view", params={"filename": "kept.png", "type": "input"})).content == SAMPLE_INPUT
    after = (await http.post("/prompt", json={"prompt": small(4)})).json()
    assert after["number"] == 0  # the counter starts again


async def test_restart_with_downtime_refuses_connections(emu, http):
    await emu.restart(down_seconds=0.4)
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(base_url=emu.url) as fresh:
            await fresh.get("/queue")
    await asyncio.sleep(0.6)
    async with httpx.AsyncClient(base_url=emu.url) as again:
        assert (await again.get("/queue")).status_code == 200


@pytest.mark.parametrize("target", ["8", "VAEDecode"])
async def test_fail_a_node_by_id_or_class(emu, http, target):
    emu.faults.fail_node = target
    async with Listener(emu.url, "watcher") as listener:
        prompt_id = await queue(http, small())
        await listener.wait_for_end(prompt_id)

    error = listener.of_type("execution_error")[0]
    assert (error["node_id"], error["node_type"]) == ("8", "VAEDecode")
    assert (error["exception_type"], error["exception_message"]) == (
        "RuntimeError",
        "Emulated failure (fault switch)\n",
    )
    assert error["traceback"][-1].startswith('  File "ComfyUI/nodes.py"')
    assert error["executed"] == ["4", "5", "7", "6", "3"]
    assert set(error["current_inputs"]) == {"samples", "vae"}
    assert not listener.of_type("execution_success")
    assert emu.history[prompt_id]["status"]["status_str"] == "error"


async def test_fail_a_sampler_mid_way_with_another_exception(emu, http):
    emu.faults.fail_node = "KSampler"
    emu.faults.fail_at_step = 3
    emu.faults.fail_type = "torch.OutOfMemoryError"
    emu.faults.fail_message = "Allocation on device"
    async with Listener(emu.url, "watcher") as listener:
        prompt_id = await queue(http, small(steps=5))
        await listener.wait_for_end(prompt_id)

    assert [p["value"] for p in listener.of_type("progress")] == [1, 2]
    error = listener.of_type("execution_error")[0]
    assert (error["node_id"], error["exception_type"]) == ("3", "torch.OutOfMemoryError")


async def test_forgetting_the_sockets_leaves_them_open_and_silent(emu, http):
    async with Listener(emu.url, "watcher") as listener:
        emu.faults.forget_sockets()
        prompt_id = await queue(http, small())
        await emu.wait_idle()
        assert prompt_id in emu.history
        assert not listener.closed.is_set()
        assert [m["type"] for m in listener.messages] == ["status"]


async def test_a_slow_validation_queues_the_prompt_only_after_its_delay(emu, http):
    emu.faults.prompt_queue_delay = 0.5
    emu.faults.prompt_answer_delay = 0.3
    started = time.monotonic()
    post = asyncio.create_task(queue(http, small()))
    await asyncio.sleep(0.3)
    assert emu.queue.remaining == 0  # still "validating"
    assert not emu.history

    prompt_id = await post

    assert time.monotonic() - started >= 0.8  # queued after 0.5 s, answered 0.3 s later
    await emu.wait_idle()
    assert prompt_id in emu.history
