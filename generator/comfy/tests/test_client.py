"""The REST client: first against the recorded answers of a real ComfyUI, replayed by a tiny
server, then against the emulator on a real port: every call, every typed error."""

import asyncio
import json
import socket
import uuid

import httpx
import pytest
from aiohttp import web

from generator.comfy.client import ComfyClient, QueuedPrompt, QueueSnapshot
from generator.comfy.errors import BackendUnreachable, ComfyError, NotFound, ProtocolError, WorkflowRejected
from generator.comfy.events import OutputFile

from .recording import RECORDINGS, SAMPLES, http_errors, http_exchanges, workflow
from .test_errors import EXPECTED

# -- against recorded answers ------------------------------------------------------------------


class RecordedComfyUI:
    """Answers each (method, path) with a response recorded from ComfyUI 0.3.64, and keeps what
    it was sent. Unknown routes answer 404, as aiohttp does."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, str], dict] = {}
        self.received: list[tuple[str, str, object]] = []  # method, path with query, body
        self.delay = 0.0  # seconds before answering anything
        self.url = ""

    def answer(self, method: str, path: str, response: dict) -> None:
        self.answers[(method, path)] = response

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.content_type == "multipart/form-data":
            form = await request.post()
            body: object = {k: getattr(v, "filename", v) for k, v in form.items()}
        else:
            raw = await request.read()
            body = json.loads(raw) if raw else None
        self.received.append((request.method, request.path_qs, body))
        await asyncio.sleep(self.delay)
        recorded = self.answers.get((request.method, request.path))
        if recorded is None:
            return web.Response(status=404)
        if "json" in recorded:
            return web.json_response(recorded["json"], status=recorded["status"])
        if "image" in recorded:
            return web.Response(body=recorded["body"], content_type="image/png")
        return web.Response(status=recorded["status"], text=recorded.get("text") or None)


@pytest.fixture
async def recorded():
    server = RecordedComfyUI()
    app = web.Application()
    app.router.add_route("*", "/{path:.*}", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    yield server
    await runner.cleanup()


def exchange(transcript: str, method: str, path_start: str, index: int = 0) -> dict:
    found = [
        e for e in http_exchanges(transcript) if e["method"] == method and e["path"].startswith(path_start)
    ]
    return found[index]


HTTP_MISC = json.loads((RECORDINGS / "http_misc.json").read_text())
REJECTIONS = {case["name"]: case for case in http_errors()}


@pytest.mark.parametrize("name", sorted(REJECTIONS))
async def test_every_recorded_rejection_raises_a_typed_error(recorded, name):
    case = REJECTIONS[name]
    recorded.answer("POST", "/prompt", case["response"])
    graph = (case["request"].get("json") or {}).get("prompt", {})

    async with ComfyClient(recorded.url) as comfy:
        with pytest.raises(ComfyError) as raised:
            await comfy.queue_prompt(graph, prompt_id="our-id", client_id="site")

    if case["response"]["status"] == 500:  # ComfyUI's answer to a body that is not JSON
        assert isinstance(raised.value, BackendUnreachable)
        assert "HTTP 500" in str(raised.value)
    else:
        assert isinstance(raised.value, WorkflowRejected)
        assert raised.value.describe(graph) == EXPECTED[name]


async def test_queue_prompt_sends_our_prompt_id_and_client_id_and_reads_the_number(recorded):
    answer = exchange("success_txt2img", "POST", "/prompt")["response"]
    recorded.answer("POST", "/prompt", answer)
    graph = workflow("txt2img")

    async with ComfyClient(recorded.url) as comfy:
        queued = await comfy.queue_prompt(
            graph, prompt_id=answer["json"]["prompt_id"], client_id="site", extra_data={"k": 1}
        )

    assert queued == QueuedPrompt(answer["json"]["prompt_id"], 0)
    assert recorded.received == [
        (
            "POST",
            "/prompt",
            {
                "prompt": graph,
                "client_id": "site",
                "prompt_id": answer["json"]["prompt_id"],
                "extra_data": {"k": 1},
            },
        )
    ]


async def test_front_asks_comfyui_to_put_the_prompt_first(recorded):
    recorded.answer("POST", "/prompt", exchange("success_txt2img", "POST", "/prompt")["response"])

    async with ComfyClient(recorded.url) as comfy:
        await comfy.queue_prompt({}, prompt_id="p", client_id="site", front=True)

    assert recorded.received[0][2]["front"] is True


async def test_a_recorded_queue_gives_running_and_pending_ids_in_order(recorded):
    answer = exchange("queue_delete", "GET", "/queue")["response"]
    recorded.answer("GET", "/queue", answer)
    recorded.answer("GET", "/prompt", exchange("queue_delete", "GET", "/prompt")["response"])

    async with ComfyClient(recorded.url) as comfy:
        snapshot = await comfy.queue()
        remaining = await comfy.queue_remaining()

    running = tuple(item[1] for item in answer["json"]["queue_running"])
    pending = tuple(item[1] for item in answer["json"]["queue_pending"])
    items = [*answer["json"]["queue_running"], *answer["json"]["queue_pending"]]
    owners = {item[1]: item[3]["client_id"] for item in items}
    assert snapshot == QueueSnapshot(running, pending, owners, {item[1]: item[3] for item in items})
    assert set(snapshot.client_ids.values()) == {"harness-8ccab5bd"}  # who queued each one
    assert (len(running), len(pending), remaining) == (1, 2, 3)
    assert [snapshot.position(p) for p in (*running, *pending)] == [0, 1, 2]


@pytest.mark.parametrize(
    ("transcript", "sample"),
    [("success_txt2img", "txt2img_ComfyUI_00001_.png"), ("img2img", "img2img_ComfyUI_img2img_00001_.png")],
)
async def test_recorded_history_leads_to_the_output_file_through_view(recorded, transcript, sample):
    history = exchange(transcript, "GET", "/history/")
    prompt_id = history["path"].rsplit("/", 1)[1]
    recorded.answer("GET", history["path"], history["response"])
    png = (SAMPLES / sample).read_bytes()
    recorded.answer("GET", "/view", {"status": 200, "image": True, "body": png})

    async with ComfyClient(recorded.url) as comfy:
        entry = await comfy.history(prompt_id)
        (output,) = entry.outputs["9"]
        data = await comfy.view(output)

    assert entry.succeeded
    assert data == png
    viewed = httpx.URL(recorded.received[-1][1]).params
    assert dict(viewed) == {"filename": output.filename, "subfolder": "", "type": "output"}


async def test_history_of_an_unknown_or_deleted_prompt_is_none(recorded):
    recorded.answer("GET", "/history/gone", HTTP_MISC["GET /history/{deleted id}"])

    async with ComfyClient(recorded.url) as comfy:
        assert await comfy.history("gone") is None


async def test_recorded_not_found_and_path_traversal_answers_raise_not_found(recorded):
    recorded.answer("GET", "/object_info/NoSuchNode", HTTP_MISC["GET /object_info/NoSuchNode"])
    recorded.answer("GET", "/view", HTTP_MISC["GET /view?filename=does_not_exist.png&type=output"])

    async with ComfyClient(recorded.url) as comfy:
        with pytest.raises(NotFound, match="NoSuchNode"):
            await comfy.object_info("NoSuchNode")
        with pytest.raises(NotFound, match=r"does_not_exist\.png"):
            await comfy.view(OutputFile("does_not_exist.png", "", "output"))
        recorded.answer("GET", "/view", HTTP_MISC["GET /view?filename=..%2F..%2Fetc%2Fpasswd&type=output"])
        with pytest.raises(NotFound, match="passwd"):
            await comfy.view(OutputFile("../../etc/passwd", "", "output"))


async def test_upload_sends_comfyuis_form_fields_and_reads_the_stored_name(recorded):
    upload = exchange("img2img", "POST", "/upload/image", index=3)  # the one into a subfolder
    recorded.answer("POST", "/upload/image", upload["response"])

    async with ComfyClient(recorded.url) as comfy:
        stored = await comfy.upload_image(b"png bytes", "sub_input.png", subfolder="harness", overwrite=True)

    assert stored.load_image_value == "harness/sub_input.png"
    assert recorded.received[0][2] == {
        "image": "sub_input.png",
        "type": "input",
        "subfolder": "harness",
        "overwrite": "true",
    }


async def test_an_upload_comfyui_refuses_is_a_readable_error(recorded):
    recorded.answer("POST", "/upload/image", HTTP_MISC["POST /upload/image (subfolder escapes input dir)"])

    async with ComfyClient(recorded.url) as comfy:
        with pytest.raises(ComfyError, match=r"refused the upload of 'x\.png'"):
            await comfy.upload_image(b"x", "x.png", subfolder="../..")


async def test_interrupt_and_deletes_send_the_bodies_comfyui_expects(recorded):
    empty_ok = HTTP_MISC["POST /history {delete:[id]}"]
    for path in ("/interrupt", "/queue", "/history"):
        recorded.answer("POST", path, empty_ok)

    async with ComfyClient(recorded.url) as comfy:
        await comfy.interrupt("running-id")
        await comfy.delete_from_queue(["a", "b"])
        await comfy.delete_history(["c"])

    assert recorded.received == [
        ("POST", "/interrupt", {"prompt_id": "running-id"}),
        ("POST", "/queue", {"delete": ["a", "b"]}),
        ("POST", "/history", {"delete": ["c"]}),
    ]


async def test_recorded_system_stats_are_passed_through(recorded):
    recorded.answer("GET", "/system_stats", HTTP_MISC["GET /system_stats"])

    async with ComfyClient(recorded.url) as comfy:
        stats = await comfy.system_stats()

    assert stats == HTTP_MISC["GET /system_stats"]["json"]


async def test_a_comfyui_too_slow_to_answer_is_unreachable(recorded):
    recorded.answer("GET", "/queue", HTTP_MISC["GET /queue"])
    recorded.delay = 2.0

    async with ComfyClient(recorded.url, timeout=0.2) as comfy:
        with pytest.raises(BackendUnreachable, match="did not answer in time"):
            await comfy.queue()


# -- against the emulator ------------------------------------------------------------------------


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
        await comfy.queue_prompt(
            small_txt2img(2, 20), prompt_id=second, client_id="site", extra_data={"tag": {"job": 2}}
        )
        await asyncio.sleep(0.1)

        snapshot = await comfy.queue()

        assert snapshot == QueueSnapshot(
            running=(first,),
            pending=(second,),
            client_ids={first: "site", second: "site"},
            extra_data={first: {"client_id": "site"}, second: {"tag": {"job": 2}, "client_id": "site"}},
        )
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
    assert "input.png" in (await comfy.object_info("LoadImage"))["LoadImage"]["input"]["required"]["image"][0]
    assert await comfy.view(OutputFile("input.png", "site", "input")) == image


async def test_an_upload_keeps_a_name_with_spaces_and_accents(comfy):
    image = (SAMPLES / "img2img_input.png").read_bytes()

    stored = await comfy.upload_image(image, "my café photo.png", overwrite=True)

    assert stored.load_image_value == "my café photo.png"
    assert await comfy.view(OutputFile("my café photo.png", "", "input")) == image


async def test_an_upload_into_a_folder_outside_the_input_folder_is_refused(comfy):
    with pytest.raises(ComfyError, match="refused the upload"):
        await comfy.upload_image(b"png", "x.png", subfolder="../outside")


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
    async with ComfyClient(emulator.url, view_timeout=0.2) as comfy:
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
