"""The websocket helper: feature flags, confirmed sid, reconnects, and the early-events buffer."""

import asyncio
import contextlib
import uuid

from generator.comfy.client import ComfyClient
from generator.comfy.connection import ComfyConnection, Connected, Disconnected, PromptEventBuffer
from generator.comfy.events import Executing, ExecutionStart, ExecutionSuccess, Preview

from .test_client import small_txt2img


class Collector:
    def __init__(self, url: str, client_id: str) -> None:
        self.connection = ComfyConnection(url, client_id, backoff_initial=0.05, backoff_max=0.2)
        self.events: list = []
        self.changed = asyncio.Event()

    async def __aenter__(self):
        self.task = asyncio.create_task(self._collect())
        await self.until(lambda e: isinstance(e, Connected))
        return self

    async def __aexit__(self, *exc):
        await self.connection.close()
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def _collect(self):
        async for event in self.connection.events():
            self.events.append(event)
            self.changed.set()

    async def until(self, predicate, count: int = 1, within: float = 10.0):
        async def wait():
            while sum(1 for e in self.events if predicate(e)) < count:
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(wait(), within)


async def test_it_connects_confirms_its_id_and_gets_tagged_previews(emulator):
    async with Collector(emulator.url, "site-1") as collector, ComfyClient(emulator.url) as comfy:
        prompt_id = str(uuid.uuid4())
        await comfy.queue_prompt(small_txt2img(), prompt_id=prompt_id, client_id="site-1")
        await collector.until(lambda e: isinstance(e, Executing) and e.is_end)

    assert collector.events[0] == Connected("site-1")
    previews = [e for e in collector.events if isinstance(e, Preview)]
    assert previews
    assert all(p.prompt_id == prompt_id for p in previews)  # feature flags were sent: type-4 frames
    assert any(isinstance(e, ExecutionSuccess) for e in collector.events)


async def test_a_dropped_websocket_reconnects_and_says_so(emulator):
    async with Collector(emulator.url, "site-2") as collector, ComfyClient(emulator.url) as comfy:
        emulator.faults.drop_ws_after = 5
        await comfy.queue_prompt(small_txt2img(), prompt_id=str(uuid.uuid4()), client_id="site-2")
        await collector.until(lambda e: isinstance(e, Disconnected))
        await collector.until(lambda e: isinstance(e, Connected), count=2)

        # The new socket works: the next prompt's events arrive.
        second = str(uuid.uuid4())
        await comfy.queue_prompt(small_txt2img(seed=2), prompt_id=second, client_id="site-2")
        await collector.until(lambda e: isinstance(e, ExecutionSuccess) and e.prompt_id == second)


async def test_comfyui_refusing_connections_is_retried_until_it_is_back(emulator):
    async with Collector(emulator.url, "site-3") as collector:
        await emulator.refuse_connections(0.6)
        await collector.until(lambda e: isinstance(e, Disconnected) and "cannot connect" in e.reason)
        await collector.until(lambda e: isinstance(e, Connected), count=2, within=10)


async def test_events_can_arrive_before_the_post_that_queued_them_answers(emulator):
    """ComfyUI may report a prompt on the socket while the POST that queued it is still on its
    way back (execution_error_bad_image.jsonl); the buffer keeps such events until it is known."""
    emulator.faults.prompt_answer_delay = 0.5
    buffer = PromptEventBuffer()

    async with Collector(emulator.url, "site-4") as collector, ComfyClient(emulator.url) as comfy:
        prompt_id = str(uuid.uuid4())
        post = asyncio.create_task(
            comfy.queue_prompt(small_txt2img(), prompt_id=prompt_id, client_id="site-4")
        )
        await collector.until(lambda e: isinstance(e, ExecutionStart))
        assert not post.done()  # the event came first
        early = [e for e in collector.events if getattr(e, "prompt_id", None) == prompt_id]
        for event in early:
            buffer.hold(prompt_id, event)
        await post

        assert buffer.release(prompt_id) == early
        assert isinstance(early[0], ExecutionStart)


def test_the_buffer_forgets_old_and_excess_prompts():
    buffer = PromptEventBuffer(max_prompts=2, max_age=60)
    for n in range(3):
        buffer.hold(f"p{n}", ExecutionStart(f"p{n}"))

    assert buffer.release("p0") == []
    assert buffer.release("p2") == [ExecutionStart("p2")]


def test_websocket_urls_follow_the_http_scheme():
    from generator.comfy.connection import websocket_url

    assert websocket_url("http://127.0.0.1:8188", "a b") == "ws://127.0.0.1:8188/ws?clientId=a%20b"
    assert websocket_url("https://gpu.example.com/comfy/", "x") == "wss://gpu.example.com/comfy/ws?clientId=x"
