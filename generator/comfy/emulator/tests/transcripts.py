"""Comparing what a client receives with the recordings of the real ComfyUI 0.3.64.

A transcript is a list of records in the recordings' own format ({"msg": {...}} for a JSON
message, {"binary": True, "type": 1, ...} for a frame). `normalise` turns each record into a
line that keeps what must match (the message type, the keys of its data and of the nested
structures, and every value that does not depend on ids, clocks or image bytes), so two
transcripts compare line by line and a difference reads plainly in pytest's diff.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import struct
from collections.abc import Callable
from typing import Any

import websockets

from generator.comfy.tests.recording import RECORDINGS, lines

Record = dict[str, Any]


def keys(data: dict[str, Any]) -> str:
    return ",".join(sorted(data))


def normalise_message(message: dict[str, Any]) -> str:
    kind, data = message["type"], message["data"]
    line = f"{kind} [{keys(data)}]"
    if kind == "status":
        remaining = data["status"]["exec_info"]["queue_remaining"]
        return f"{line} status[{keys(data['status'])}] queue_remaining={remaining}"
    if kind == "progress_state":
        nodes = " ".join(
            f"{node_id}:{state['state']}:{state['value']!r}/{state['max']!r}[{keys(state)}]"
            for node_id, state in data["nodes"].items()
        )
        return f"{line} {nodes}"
    if kind in ("executing", "executed"):
        output = data.get("output")
        shown = "" if output is None else f" output={_output_shape(output)}"
        return f"{line} node={data['node']}{shown}"
    if kind == "progress":
        return f"{line} {data['value']}/{data['max']} node={data['node']}"
    if kind == "execution_cached":
        return f"{line} nodes={data['nodes']}"
    if kind == "execution_interrupted":
        return f"{line} node={data['node_id']} {data['node_type']} executed={sorted(data['executed'])}"
    if kind == "execution_error":
        return (
            f"{line} node={data['node_id']} {data['node_type']} executed={sorted(data['executed'])}"
            f" {data['exception_type']}: {data['exception_message']!r}"
            f" inputs=[{keys(data['current_inputs'])}]"
            f" outputs={sorted(data['current_outputs'])} traceback={len(data['traceback'])} frames"
        )
    if kind == "feature_flags":
        return f"{line} {json.dumps(data, sort_keys=True)}"
    return line


def _output_shape(output: dict[str, Any]) -> str:
    """{"images": [{filename, subfolder, type}]} without the file names' counters."""
    parts = []
    for key, items in output.items():
        described = [f"[{keys(i)}]{i.get('type')}:{i.get('subfolder')!r}" for i in items]
        parts.append(f"{key}={described}")
    return " ".join(parts)


def normalise(record: Record) -> str:
    if record.get("binary"):
        metadata = record.get("metadata")
        return f"binary type={record['type']}" + (f" metadata[{keys(metadata)}]" if metadata else "")
    return normalise_message(record["msg"])


def recorded(name: str, socket: str | None = None) -> list[str]:
    """The normalised messages a recorded client (socket "A"/"B" where there were several) got."""
    return [
        normalise(r)
        for r in lines(name)
        if r.get("dir") == "ws"
        and ("msg" in r or r.get("binary"))
        and not r.get("sent")
        and r.get("socket") == socket
    ]


def recorded_requests(name: str, method: str, path: str) -> list[dict[str, Any]]:
    return [r for r in lines(name) if r.get("dir") == "http" and r["method"] == method and r["path"] == path]


def recorded_prompt_request(name: str, index: int = 0) -> dict[str, Any]:
    """The body of the recording's index-th POST /prompt, without its client_id."""
    body = copy.deepcopy(recorded_requests(name, "POST", "/prompt")[index]["request_json"])
    body.pop("client_id", None)
    return body


def recorded_cached(name: str) -> list[str]:
    return next(
        r["msg"]["data"]["nodes"] for r in lines(name) if r.get("msg", {}).get("type") == "execution_cached"
    )


def recorded_response(name: str, method: str, path_start: str) -> dict[str, Any]:
    return next(
        r["response"]
        for r in lines(name)
        if r.get("dir") == "http" and r["method"] == method and r["path"].startswith(path_start)
    )


def shape(value: Any) -> Any:
    """The structure of a JSON value: dict keys and list lengths kept, scalars as type names."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value]
    return type(value).__name__


def decode_frame(frame: bytes) -> Record:
    """A binary frame as the recording harness logged it."""
    kind = struct.unpack(">I", frame[:4])[0]
    record: Record = {"binary": True, "type": kind, "len": len(frame), "header_hex": frame[:8].hex()}
    if kind == 4:
        length = struct.unpack(">I", frame[4:8])[0]
        record["metadata_len"] = length
        record["metadata"] = json.loads(frame[8 : 8 + length])
        record["payload"] = frame[8 + length :]
    else:
        record["image_format"] = struct.unpack(">I", frame[4:8])[0]
        record["payload"] = frame[8:]
    return record


class Listener:
    """A websocket client that logs what it receives in the recordings' format."""

    def __init__(self, url: str, client_id: str | None = None, *, preview_metadata: bool = False) -> None:
        base = url.replace("http://", "ws://") + "/ws"
        self.url = f"{base}?clientId={client_id}" if client_id else base
        self.client_id = client_id
        self.preview_metadata = preview_metadata
        self.received: list[Record] = []
        self.closed = asyncio.Event()
        self._arrived = asyncio.Event()

    async def __aenter__(self) -> Listener:
        self.socket = await websockets.connect(self.url, max_size=None)
        if self.preview_metadata:
            message = {"type": "feature_flags", "data": {"supports_preview_metadata": True}}
            await self.socket.send(json.dumps(message))
        self._task = asyncio.create_task(self._read())
        await self.wait_for(lambda m: m["type"] == "status")
        if self.preview_metadata:
            await self.wait_for(lambda m: m["type"] == "feature_flags")
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            await self.socket.close()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _read(self) -> None:
        try:
            async for message in self.socket:  # ends quietly on a clean close
                if isinstance(message, bytes):
                    self.received.append(decode_frame(message))
                else:
                    self.received.append({"msg": json.loads(message)})
                self._arrived.set()
        except websockets.ConnectionClosedError:
            pass  # cut without a close frame: `socket.close_code` says 1006
        finally:
            self.closed.set()
            self._arrived.set()

    @property
    def messages(self) -> list[dict[str, Any]]:
        return [r["msg"] for r in self.received if "msg" in r]

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m["data"] for m in self.messages if m["type"] == kind]

    async def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], within: float = 10.0
    ) -> dict[str, Any]:
        """The first message (since connecting) that satisfies `predicate`."""
        async with asyncio.timeout(within):
            while True:
                for message in self.messages:
                    if predicate(message):
                        return message
                if self.closed.is_set():
                    raise ConnectionError("the websocket closed")
                self._arrived.clear()
                await self._arrived.wait()

    async def wait_for_end(self, prompt_id: str | None = None, within: float = 10.0) -> None:
        """Until `executing` with node null: the end of a prompt."""
        await self.wait_for(
            lambda m: (
                m["type"] == "executing"
                and m["data"]["node"] is None
                and (prompt_id is None or m["data"]["prompt_id"] == prompt_id)
            ),
            within,
        )

    def normalised(self) -> list[str]:
        return [normalise(r) for r in self.received]


def is_end(message: dict[str, Any]) -> bool:
    return message["type"] == "executing" and message["data"]["node"] is None


SAMPLE_INPUT = (RECORDINGS / "samples" / "img2img_input.png").read_bytes()
