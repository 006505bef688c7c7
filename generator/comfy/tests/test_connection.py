"""The websocket helper: feature flags, confirmed sid, half-open sockets, reconnects, and the
early-events buffer. First against a scripted /ws that replays recorded messages, then against
the emulator."""

import asyncio
import contextlib
import json
import time
import uuid

import pytest
from aiohttp import WSMsgType, web

from generator.comfy.client import ComfyClient
from generator.comfy.connection import (
    FEATURE_FLAGS,
    ComfyConnection,
    Connected,
    Disconnected,
    PromptEventBuffer,
    websocket_url,
)
from generator.comfy.events import (
    Executing,
    ExecutionError,
    ExecutionStart,
    ExecutionSuccess,
    Preview,
    Progress,
    parse_binary,
    parse_message,
)

from .recording import lines
from .test_client import closed_port, small_txt2img
from .test_events import recorded_frame


class Collector:
    def __init__(self, url: str, client_id: str, **options) -> None:
        options = {"backoff_initial": 0.05, "backoff_max": 0.2, **options}
        self.connection = ComfyConnection(url, client_id, **options)
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


# -- against a scripted /ws ---------------------------------------------------------------------


def recorded_socket_traffic(transcript: str) -> list[str | bytes]:
    """What ComfyUI sent the recording client after its first status, as text and binary frames."""
    traffic: list[str | bytes] = []
    for record in lines(transcript):
        if record.get("dir") != "ws" or record.get("sent") or record.get("socket") not in (None, "A"):
            continue
        if record.get("binary"):
            traffic.append(recorded_frame(record))
        elif "msg" in record:
            traffic.append(json.dumps(record["msg"]))
    return traffic[1:]  # the first status is the scripted server's own, naming our socket


class ScriptedComfyUI:
    """ComfyUI's /ws as recorded: a status naming the socket, then whatever the test scripts.
    POST /prompt sends `early` over the socket before answering, as ComfyUI sometimes does."""

    def __init__(self) -> None:
        self.sid: str | None = None  # None: echo the clientId, as ComfyUI does
        self.answer_pings = True
        self.script: list[str | bytes] = []
        self.early: list[str] = []
        self.received: list[str] = []  # text the client sent, every socket
        self.connections = 0
        self.socket: web.WebSocketResponse | None = None
        self.url = ""

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse(autoping=self.answer_pings)
        await socket.prepare(request)
        self.connections += 1
        self.socket = socket
        status = {
            "status": {"exec_info": {"queue_remaining": 0}},
            "sid": self.sid or request.query["clientId"],
        }
        await socket.send_json({"type": "status", "data": status})
        for frame in self.script:
            await (socket.send_bytes(frame) if isinstance(frame, bytes) else socket.send_str(frame))
        async for message in socket:  # without autoping, pings arrive here and go unanswered
            if message.type == WSMsgType.TEXT:
                self.received.append(message.data)
        return socket

    async def prompt(self, request: web.Request) -> web.Response:
        for text in self.early:
            await self.socket.send_str(text)
        await asyncio.sleep(0.3)
        return web.json_response(
            {"prompt_id": (await request.json())["prompt_id"], "number": 0, "node_errors": {}}
        )


@pytest.fixture
async def scripted():
    server = ScriptedComfyUI()
    app = web.Application()
    app.router.add_get("/ws", server.ws)
    app.router.add_post("/prompt", server.prompt)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    yield server
    await runner.cleanup()


async def test_it_asks_for_tagged_previews_and_confirms_the_id_comfyui_gave_the_socket(scripted):
    async with Collector(scripted.url, "site") as collector:
        await asyncio.sleep(0.05)

    assert collector.events[0] == Connected("site")
    assert scripted.received[0] == FEATURE_FLAGS
    assert json.loads(FEATURE_FLAGS) == {"type": "feature_flags", "data": {"supports_preview_metadata": True}}


@pytest.mark.parametrize("transcript", ["success_txt2img_preview_metadata", "execution_error", "interrupted"])
async def test_recorded_traffic_comes_out_as_the_parsed_events_in_order(scripted, transcript):
    scripted.script = recorded_socket_traffic(transcript)
    expected = [parse_binary(f) if isinstance(f, bytes) else parse_message(f) for f in scripted.script]

    async with Collector(scripted.url, "site") as collector:
        await collector.until(lambda e: isinstance(e, Executing) and e.is_end)

    assert collector.events[1:] == expected
    assert any(isinstance(e, Preview) for e in expected)


async def test_a_socket_comfyui_gave_another_id_is_dropped_and_retried(scripted):
    scripted.sid = "someone-else"
    collector = Collector(scripted.url, "site")
    task = asyncio.create_task(collector._collect())
    try:
        await collector.until(lambda e: isinstance(e, Disconnected), count=2)
    finally:
        await collector.connection.close()
        await task

    assert not any(isinstance(e, Connected) for e in collector.events)
    assert "someone-else" in collector.events[0].reason
    assert scripted.connections >= 2


async def test_a_half_open_socket_is_noticed_by_its_unanswered_pings(scripted):
    scripted.answer_pings = False  # the socket stays open but nothing comes back

    async with Collector(scripted.url, "site", ping_interval=0.1, ping_timeout=0.1) as collector:
        await collector.until(lambda e: isinstance(e, Disconnected), within=3)
        await collector.until(lambda e: isinstance(e, Connected), count=2, within=3)

    assert "keepalive ping timeout" in next(e for e in collector.events if isinstance(e, Disconnected)).reason


async def test_close_ends_events_at_once_even_while_waiting_to_reconnect():
    connection = ComfyConnection(f"http://127.0.0.1:{closed_port()}", "site", backoff_initial=30)
    events = connection.events()
    assert isinstance(await anext(events), Disconnected)  # now waiting ~30 s to retry

    started = time.monotonic()
    waiting = asyncio.create_task(anext(events, None))
    await asyncio.sleep(0.05)
    await connection.close()

    assert await asyncio.wait_for(waiting, 2) is None
    assert time.monotonic() - started < 2


async def test_events_that_beat_the_post_answer_are_held_until_the_prompt_is_registered(scripted):
    """As recorded in execution_error_bad_image.jsonl: status, execution_start and even
    executing can come before POST /prompt has answered."""
    messages = [json.dumps(r["msg"]) for r in lines("execution_error_bad_image") if "msg" in r][1:]
    scripted.early = messages
    registered: set[str] = set()
    buffer = PromptEventBuffer()
    delivered: list = []

    async with Collector(scripted.url, "site") as collector, ComfyClient(scripted.url) as comfy:
        prompt_id = json.loads(next(m for m in messages if "execution_start" in m))["data"]["prompt_id"]
        post = asyncio.create_task(comfy.queue_prompt({}, prompt_id=prompt_id, client_id="site"))
        await collector.until(lambda e: isinstance(e, Executing) and e.is_end)
        assert not post.done()  # every event of the run came before the answer
        for event in collector.events:
            event_prompt = getattr(event, "prompt_id", None)
            if event_prompt and event_prompt not in registered:
                buffer.hold(event_prompt, event)
        await post
        registered.add(prompt_id)
        delivered.extend(buffer.release(prompt_id))

    kinds = [type(e) for e in delivered]
    assert kinds[0] is ExecutionStart
    assert ExecutionError in kinds
    assert delivered[-1] == Executing(prompt_id, None, None)
    assert buffer.release(prompt_id) == []


def test_the_buffer_keeps_only_the_newest_preview_and_a_bounded_number_of_events():
    buffer = PromptEventBuffer(max_events=3)
    start, first, newest = (
        ExecutionStart("p"),
        Preview(b"1", "image/jpeg", "p"),
        Preview(b"2", "image/jpeg", "p"),
    )
    for event in (start, first, Progress("p", "3", 1, 20), newest, Progress("p", "3", 2, 20)):
        buffer.hold("p", event)

    assert buffer.release("p") == [start, Progress("p", "3", 1, 20), newest]


def test_the_buffer_forgets_old_and_excess_prompts():
    buffer = PromptEventBuffer(max_prompts=2, max_age=0.05)
    for n in range(3):
        buffer.hold(f"p{n}", ExecutionStart(f"p{n}"))

    assert buffer.release("p0") == []  # one prompt too many: the oldest went
    assert buffer.release("p2") == [ExecutionStart("p2")]
    time.sleep(0.1)
    assert buffer.release("p1") == []  # held too long


def test_websocket_urls_follow_the_http_scheme():
    assert websocket_url("http://127.0.0.1:8188", "a b") == "ws://127.0.0.1:8188/ws?clientId=a%20b"
    assert websocket_url("https://gpu.example.com/comfy/", "x") == "wss://gpu.example.com/comfy/ws?clientId=x"


# -- against the emulator ------------------------------------------------------------------------


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


@pytest.mark.parametrize("abruptly", [False, True], ids=["closed", "cut"])
async def test_a_dropped_websocket_reconnects_and_says_so(emulator, abruptly):
    async with Collector(emulator.url, "site-2") as collector, ComfyClient(emulator.url) as comfy:
        emulator.faults.drop_ws_after = 5
        emulator.faults.drop_once = True
        emulator.faults.drop_abruptly = abruptly  # a crash or a broken network: no close frame
        await comfy.queue_prompt(small_txt2img(), prompt_id=str(uuid.uuid4()), client_id="site-2")
        await collector.until(lambda e: isinstance(e, Disconnected))
        await collector.until(lambda e: isinstance(e, Connected), count=2)
        dropped = next(e for e in collector.events if isinstance(e, Disconnected))
        assert ("no close frame" in dropped.reason) == abruptly

        # The new socket works: the next prompt's events arrive.
        second = str(uuid.uuid4())
        await comfy.queue_prompt(small_txt2img(seed=2), prompt_id=second, client_id="site-2")
        await collector.until(lambda e: isinstance(e, ExecutionSuccess) and e.prompt_id == second)


async def test_comfyui_refusing_connections_is_retried_until_it_is_back(emulator):
    async with Collector(emulator.url, "site-3") as collector:
        await emulator.refuse_connections(0.6)
        await collector.until(lambda e: isinstance(e, Disconnected) and "cannot connect" in e.reason)
        await collector.until(lambda e: isinstance(e, Connected), count=2, within=10)
