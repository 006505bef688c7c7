"""The emulator against the recordings: the same scenarios, the same messages in the same order
with the same keys (ids, times and image bytes aside), and the same rejections."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import uuid
from typing import Any

import httpx
import pytest
import websockets

from generator.comfy.emulator import Emulator

from .recording import RECORDINGS, binary_frames, http_errors, lines, received_messages

STEP = 0.15


def shape(record: dict[str, Any]) -> tuple:
    """What must match: the message type, its data's keys, and the status/sid structure."""
    if record.get("binary"):
        return ("binary", record["type"])
    message = record["msg"]
    data = message["data"]
    keys = tuple(sorted(data))
    if message["type"] == "status":
        return ("status", keys, tuple(sorted(data["status"]["exec_info"])))
    return (message["type"], keys)


def recorded_shapes(name: str, socket: str | None = None) -> list[tuple]:
    records = [
        r
        for r in lines(name)
        if r.get("dir") == "ws"
        and ("msg" in r or r.get("binary"))
        and not r.get("sent")
        and r.get("socket") == socket
    ]
    return [shape(r) for r in records]


def recorded_request(name: str, index: int = 0, path: str = "/prompt") -> dict[str, Any]:
    return [r for r in lines(name) if r.get("dir") == "http" and r["method"] == "POST" and r["path"] == path][
        index
    ]["request_json"]


def recorded_cached(name: str) -> list[str]:
    return next(m["data"]["nodes"] for m in received_messages(name) if m["type"] == "execution_cached")


class Listener:
    """A websocket client that records what it receives, as the recording harness did."""

    def __init__(self, url: str, client_id: str, *, metadata: bool = False) -> None:
        self.url = url.replace("http://", "ws://") + f"/ws?clientId={client_id}"
        self.metadata = metadata
        self.received: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()

    async def __aenter__(self) -> Listener:
        self.socket = await websockets.connect(self.url)
        if self.metadata:
            await self.socket.send(
                json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
            )
        self.task = asyncio.create_task(self._read())
        await self.wait_for(lambda m: m.get("type") == "status")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.socket.close()
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def _read(self) -> None:
        async for message in self.socket:
            if isinstance(message, bytes):
                kind = int.from_bytes(message[:4], "big")
                self.received.append({"binary": True, "type": kind})
            else:
                self.received.append({"msg": json.loads(message)})
            self.arrived.set()

    async def wait_for(self, predicate, within: float = 10.0) -> None:
        async def waiting() -> None:
            seen = 0
            while True:
                for record in self.received[seen:]:
                    if "msg" in record and predicate(record["msg"]):
                        return
                seen = len(self.received)
                self.arrived.clear()
                await self.arrived.wait()

        await asyncio.wait_for(waiting(), within)

    def shapes(self) -> list[tuple]:
        return [shape(r) for r in self.received]


def is_end(message: dict[str, Any]) -> bool:
    return message["type"] == "executing" and message["data"]["node"] is None


async def warm_up(emu: Emulator, http: httpx.AsyncClient, prompt: dict[str, Any], cached: list[str]) -> None:
    """Run a prompt whose nodes match `prompt` only where the recording found them cached."""
    warm = copy.deepcopy(prompt)
    for node_id, node in warm.items():
        if node_id not in cached:
            node["inputs"]["_warm_up"] = 1  # changes the node's signature, as a changed input would
    response = await http.post("/prompt", json={"prompt": warm})
    assert response.status_code == 200, response.text
    for _ in range(200):
        if not emu.pending and emu.running is None and emu.history:
            return
        await asyncio.sleep(0.02)


@pytest.fixture
async def emu():
    async with Emulator(step_seconds=STEP) as emulator:
        yield emulator


@pytest.fixture
async def http(emu):
    async with httpx.AsyncClient(base_url=emu.url) as client:
        yield client


async def run_prompt(emu, http, name, *, metadata=False, prepare=None, during=None):
    request = recorded_request(name)
    cached = recorded_cached(name)
    if prepare:
        await prepare(http)
    await warm_up(emu, http, request["prompt"], cached)
    client_id = f"harness-{uuid.uuid4().hex[:8]}"
    async with Listener(emu.url, client_id, metadata=metadata) as listener:
        if metadata:
            await listener.wait_for(lambda m: m["type"] == "feature_flags")
        response = await http.post("/prompt", json={**request, "client_id": client_id})
        assert response.status_code == 200
        prompt_id = response.json()["prompt_id"]
        if during:
            await during(http, listener, prompt_id)
        await listener.wait_for(is_end)
        await asyncio.sleep(0.05)
    return listener, prompt_id


@pytest.mark.parametrize(
    ("name", "metadata"),
    [("success_txt2img", False), ("success_txt2img_preview_metadata", True), ("execution_error", False)],
)
async def test_runs_match_the_recording_message_by_message(emu, http, name, metadata):
    listener, _ = await run_prompt(emu, http, name, metadata=metadata)

    assert listener.shapes() == recorded_shapes(name)


async def test_an_identical_rerun_is_served_from_cache_as_recorded(emu, http):
    request = recorded_request("cached_rerun")
    await warm_up(emu, http, request["prompt"], list(request["prompt"]))
    listener, _ = await run_prompt(emu, http, "cached_rerun")

    assert listener.shapes() == recorded_shapes("cached_rerun")
    executed = next(r["msg"] for r in listener.received if "msg" in r and r["msg"]["type"] == "executed")
    assert executed["data"]["output"]["images"][0]["filename"] == "ComfyUI_00001_.png"


async def upload_recorded_inputs(http):
    image = (RECORDINGS / "samples" / "img2img_input.png").read_bytes()
    response = await http.post(
        "/upload/image",
        files={"image": ("harness_input.png", image, "image/png")},
        data={"type": "input", "overwrite": "true"},
    )
    assert response.json() == {"name": "harness_input.png", "subfolder": "", "type": "input"}
    again = await http.post("/upload/image", files={"image": ("harness_input.png", image, "image/png")})
    assert again.json()["name"] == "harness_input.png"  # same bytes: same file
    other = await http.post(
        "/upload/image", files={"image": ("harness_input.png", b"\x89PNG other", "image/png")}
    )
    assert other.json()["name"] == "harness_input (1).png"  # other bytes: renamed
    sub = await http.post(
        "/upload/image",
        files={"image": ("sub_input.png", image, "image/png")},
        data={"subfolder": "harness", "type": "input", "overwrite": "true"},
    )
    assert sub.json() == {"name": "sub_input.png", "subfolder": "harness", "type": "input"}


async def test_image_to_image_with_uploads_matches_the_recording(emu, http):
    listener, prompt_id = await run_prompt(emu, http, "img2img", prepare=upload_recorded_inputs)

    assert listener.shapes() == recorded_shapes("img2img")
    history = (await http.get(f"/history/{prompt_id}")).json()[prompt_id]
    output = history["outputs"]["9"]["images"][0]
    view = await http.get("/view", params=output)
    assert view.headers["content-type"] == "image/png"
    source = await http.get(
        "/view", params={"filename": "harness_input.png", "type": "input", "subfolder": ""}
    )
    assert source.content == (RECORDINGS / "samples" / "img2img_input.png").read_bytes()


async def test_a_text_file_named_png_fails_at_execution_as_recorded(emu, http):
    async def upload_text(client):
        response = await client.post(
            "/upload/image",
            files={"image": ("not_really.png", b"not an image", "image/png")},
            data={"overwrite": "true"},
        )
        assert response.status_code == 200  # ComfyUI does not check content at upload

    listener, _ = await run_prompt(emu, http, "execution_error_bad_image", prepare=upload_text)

    assert listener.shapes() == recorded_shapes("execution_error_bad_image")
    error = next(
        r["msg"]["data"] for r in listener.received if "msg" in r and r["msg"]["type"] == "execution_error"
    )
    assert error["exception_type"] == "PIL.UnidentifiedImageError"
    assert error["exception_message"] == "cannot identify image file 'ComfyUI/input/not_really.png'\n"


async def test_interrupt_by_id_stops_only_that_prompt_as_recorded(emu, http):
    async def interrupt(client, listener, prompt_id):
        await listener.wait_for(lambda m: m["type"] == "progress")
        assert (await client.post("/interrupt", json={"prompt_id": str(uuid.uuid4())})).status_code == 200
        await client.post("/interrupt", json={"prompt_id": prompt_id})

    listener, prompt_id = await run_prompt(emu, http, "interrupted", during=interrupt)

    assert listener.shapes() == recorded_shapes("interrupted")
    history = (await http.get(f"/history/{prompt_id}")).json()[prompt_id]
    assert history["status"]["status_str"] == "error"
    assert history["outputs"] == {}


async def test_an_interrupt_for_another_prompt_is_a_no_op(emu, http):
    async def interrupt_other(client, listener, prompt_id):
        await listener.wait_for(lambda m: m["type"] == "progress")
        await client.post("/interrupt", json={"prompt_id": str(uuid.uuid4())})

    listener, _ = await run_prompt(emu, http, "interrupted", during=interrupt_other)

    types = [r["msg"]["type"] for r in listener.received if "msg" in r]
    assert "execution_success" in types
    assert "execution_interrupted" not in types


async def test_a_global_interrupt_matches_the_recording(emu, http):
    async def interrupt(client, listener, prompt_id):
        await listener.wait_for(lambda m: m["type"] == "progress")
        await client.post("/interrupt")

    listener, _ = await run_prompt(emu, http, "interrupted_global", during=interrupt)

    assert listener.shapes() == recorded_shapes("interrupted_global")


async def test_queue_deletion_matches_the_recording(emu, http):
    later = [recorded_request("queue_delete", 1), recorded_request("queue_delete", 2)]

    async def juggle(client, listener, prompt_id):
        await listener.wait_for(lambda m: m["type"] == "executing" and m["data"]["node"] == "3")
        ids = []
        for request in later:
            response = await client.post(
                "/prompt", json={**request, "client_id": listener.url.rsplit("=", 1)[1]}
            )
            ids.append(response.json()["prompt_id"])
        queue = (await client.get("/queue")).json()
        assert [item[1] for item in queue["queue_pending"]] == ids
        assert (await client.get("/prompt")).json() == {"exec_info": {"queue_remaining": 3}}
        await client.post("/queue", json={"delete": [ids[0]]})
        await client.post("/queue", json={"delete": [ids[1], "no-such-id", prompt_id]})  # running: ignored
        await client.post("/queue", json={"clear": True})
        assert (await client.get("/queue")).json()["queue_pending"] == []
        await listener.wait_for(lambda m: m["type"] == "progress")
        await client.post("/interrupt")
        juggle.deleted = ids[0]

    listener, _ = await run_prompt(emu, http, "queue_delete", during=juggle)

    assert listener.shapes() == recorded_shapes("queue_delete")
    assert (await http.get(f"/history/{juggle.deleted}")).json() == {}


async def test_without_client_id_only_the_recorded_messages_are_broadcast(emu, http):
    request = recorded_request("no_client_id")
    await warm_up(emu, http, request["prompt"], ["4", "6", "7"])
    async with Listener(emu.url, "socket-a") as a, Listener(emu.url, "socket-b") as b:
        response = await http.post("/prompt", json=request)
        prompt_id = response.json()["prompt_id"]
        for _ in range(200):
            if prompt_id in emu.history:
                break
            await asyncio.sleep(0.02)
        await a.wait_for(
            lambda m: m["type"] == "status" and m["data"]["status"]["exec_info"]["queue_remaining"] == 0
        )
        await asyncio.sleep(0.1)

    assert a.shapes() == recorded_shapes("no_client_id", "A")
    assert b.shapes() == recorded_shapes("no_client_id", "B")


def test_every_recorded_preview_frame_type_is_produced():
    assert {r["type"] for r in binary_frames("success_txt2img")} == {1}
    assert {r["type"] for r in binary_frames("success_txt2img_preview_metadata")} == {4}


@pytest.mark.parametrize("case", http_errors(), ids=lambda case: case["name"])
async def test_invalid_workflows_are_refused_with_the_recorded_status_and_errors(http, case):
    request = case["request"]
    if "body_text" in request:
        headers = {"content-type": "application/json"}
        response = await http.post("/prompt", content=request["body_text"], headers=headers)
    else:
        response = await http.post("/prompt", json=request["json"])

    expected = case["response"]
    assert response.status_code == expected["status"]
    if "json" not in expected:
        assert response.text == expected["text"]
        return
    got, want = response.json(), expected["json"]
    assert {k: v for k, v in got["error"].items() if k != "extra_info"} == {
        k: v for k, v in want["error"].items() if k != "extra_info"
    }
    assert set(got["node_errors"]) == set(want["node_errors"])
    for node_id, entry in want["node_errors"].items():
        mine = got["node_errors"][node_id]
        assert mine["class_type"] == entry["class_type"]
        assert mine["dependent_outputs"] == entry["dependent_outputs"]
        assert [(e["type"], e["message"], e["details"]) for e in mine["errors"]] == [
            (e["type"], e["message"], e["details"]) for e in entry["errors"]
        ]
        assert [e["extra_info"].get("input_name") for e in mine["errors"]] == [
            e["extra_info"].get("input_name") for e in entry["errors"]
        ]


async def test_misc_endpoints_answer_as_recorded(http):
    misc = json.loads((RECORDINGS / "http_misc.json").read_text())
    for key in [
        "GET /queue",
        "GET /prompt",
        "GET /embeddings",
        "GET /models",
        "GET /models/checkpoints",
        "GET /features",
    ]:
        path = key.split(" ", 1)[1]
        response = await http.get(path)
        assert response.json() == misc[key]["json"], key
    assert (
        await http.get("/view", params={"filename": "does_not_exist.png", "type": "output"})
    ).status_code == 404
    assert (
        await http.get("/view", params={"filename": "../../etc/passwd", "type": "output"})
    ).status_code == 400
    assert (await http.get("/history/00000000-0000-0000-0000-000000000000")).json() == {}
    assert (await http.get("/object_info/NoSuchNode")).json() == {}
    assert (await http.post("/upload/image", data={"type": "input"})).status_code == 400
    escape = await http.post(
        "/upload/image", files={"image": ("x.png", b"x", "image/png")}, data={"subfolder": "../.."}
    )
    assert escape.status_code == 400
    stats = (await http.get("/api/system_stats")).json()
    assert set(stats) == set(misc["GET /system_stats"]["json"])
    assert set(stats["system"]) == set(misc["GET /system_stats"]["json"]["system"])
