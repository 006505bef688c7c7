"""A ComfyUI stand-in on a real port: same endpoints, message sequences and error bodies as the
recordings of ComfyUI 0.3.64 (tests/recordings). The demo backend, and the tests' double."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import io
import itertools
import json
import logging
import os
import time
import traceback
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from ..events import preview_frame
from .nodes import NODES, Interrupted, RunContext
from .render import preview_jpeg
from .validation import Rejection, Validator

logger = logging.getLogger(__name__)

OBJECT_INFO_FILE = Path(__file__).resolve().parent.parent / "data" / "object_info.json"
SERVER_ERROR = "500 Internal Server Error\n\nServer got itself in trouble"
FEATURES = {"supports_preview_metadata": True, "max_upload_size": 104857600}
MODEL_FOLDERS = [
    "checkpoints",
    "configs",
    "loras",
    "vae",
    "text_encoders",
    "diffusion_models",
    "clip_vision",
    "style_models",
    "embeddings",
    "diffusers",
    "vae_approx",
    "controlnet",
    "gligen",
    "upscale_models",
    "custom_nodes",
    "hypernetworks",
    "photomaker",
    "classifiers",
    "model_patches",
    "audio_encoders",
]
# Without a client_id these go to nobody; everything else is broadcast (no_client_id.jsonl).
CLIENT_ONLY = {
    "execution_start",
    "execution_cached",
    "executing",
    "executed",
    "execution_success",
    "execution_error",
}


@dataclass
class Faults:
    """Switches for reliability tests. Set them on a running emulator at any time."""

    drop_ws_after: int | None = None  # close each websocket after it was sent this many messages
    drop_once: bool = True  # ...and then switch drop_ws_after off again
    http_500: set[str] = field(default_factory=set)  # paths ("/prompt", "/view", ...) that answer 500
    view_delay: float = 0.0  # seconds /view waits before answering
    prompt_answer_delay: float = 0.0  # seconds POST /prompt waits after queueing (the event race)
    fail_node: str | None = None  # a node id or class_type that raises at execution time
    fail_message: str = "Emulated failure (fault switch)"


@dataclass
class QueueItem:
    number: int
    prompt_id: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    outputs: list[str]

    def as_list(self) -> list[Any]:
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs]

    @property
    def client_id(self) -> str | None:
        return self.extra_data.get("client_id")


def _now_ms() -> int:
    return int(time.time() * 1000)


class Emulator:
    """`async with Emulator(step_seconds=0.1) as emu:` serves at `emu.url` until the block ends."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, step_seconds: float = 0.0, preview: bool = True
    ) -> None:
        self.host = host
        self.port = port
        self.step_seconds = step_seconds
        self.preview = preview
        self.faults = Faults()
        self.object_info: dict[str, Any] = json.loads(OBJECT_INFO_FILE.read_text())
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._worker: asyncio.Task | None = None
        self._reset_state()

    def _reset_state(self) -> None:
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.metadata_sockets: set[str] = set()
        self._sent: dict[int, int] = {}
        self.pending: list[QueueItem] = []
        self.running: QueueItem | None = None
        self.history: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.files: dict[tuple[str, str, str], bytes] = {("input", "", "example.png"): _example_png()}
        self._numbers = itertools.count()
        self._cache: dict[str, tuple[tuple[Any, ...], dict[str, Any] | None]] = {}
        self._interrupt = False
        self._wake = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        app = web.Application(
            client_max_size=FEATURES["max_upload_size"], middlewares=[self._faults_middleware]
        )
        self._add_routes(app)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await self._listen()
        self._worker = asyncio.create_task(self._work(), name="emulator-worker")

    async def _listen(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await self._site.start()
        server = self._site._server  # the port actually bound when asked for port 0
        sockets = getattr(server, "sockets", None)
        if self.port == 0 and sockets:
            self.port = sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._worker:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        await self._close_sockets()
        if self._runner:
            await self._runner.cleanup()

    async def restart(self) -> None:
        """As if ComfyUI restarted: queue, history and caches gone, every socket dropped."""
        if self._worker:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        await self._close_sockets()
        files = {key: data for key, data in self.files.items() if key[0] != "temp"}
        self._reset_state()
        self.files.update(files)  # files on disk survive a restart
        self._worker = asyncio.create_task(self._work(), name="emulator-worker")

    async def refuse_connections(self, seconds: float) -> None:
        """Stop listening for `seconds` (existing sockets are dropped), then listen again."""
        assert self._site is not None
        await self._site.stop()
        await self._close_sockets()

        async def reopen() -> None:
            await asyncio.sleep(seconds)
            await self._listen()

        asyncio.get_running_loop().create_task(reopen())

    async def _close_sockets(self) -> None:
        for socket in list(self.sockets.values()):
            with contextlib.suppress(Exception):
                await socket.close()
        self.sockets.clear()

    # -- websocket -------------------------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse(max_msg_size=FEATURES["max_upload_size"])
        await socket.prepare(request)
        sid = request.query.get("clientId") or uuid.uuid4().hex
        self.sockets[sid] = socket  # a newer socket with the same id takes its place
        try:
            await self._send_to(socket, self._status_message(sid))
            async for message in socket:
                if message.type == WSMsgType.TEXT:
                    await self._client_message(sid, socket, message.data)
        finally:
            # As ComfyUI does: closing an old socket also forgets a newer one with the same id.
            self.sockets.pop(sid, None)
            self.metadata_sockets.discard(sid)
            self._sent.pop(id(socket), None)
        return socket

    async def _client_message(self, sid: str, socket: web.WebSocketResponse, text: str) -> None:
        with contextlib.suppress(ValueError, AttributeError):
            message = json.loads(text)
            if message.get("type") == "feature_flags":
                if message.get("data", {}).get("supports_preview_metadata"):
                    self.metadata_sockets.add(sid)
                await self._send_to(socket, {"type": "feature_flags", "data": FEATURES})

    def _status_message(self, sid: str | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {"status": {"exec_info": {"queue_remaining": self.queue_remaining}}}
        if sid is not None:
            data["sid"] = sid
        return {"type": "status", "data": data}

    async def _send_to(self, socket: web.WebSocketResponse, message: dict[str, Any] | bytes) -> None:
        if socket.closed:
            return
        try:
            if isinstance(message, bytes):
                await socket.send_bytes(message)
            else:
                await socket.send_str(json.dumps(message))
        except (ConnectionError, RuntimeError):
            return
        sent = self._sent[id(socket)] = self._sent.get(id(socket), 0) + 1
        limit = self.faults.drop_ws_after
        if limit is not None and sent >= limit:
            if self.faults.drop_once:
                self.faults.drop_ws_after = None
            await socket.close()

    def _targets(self, client_id: str | None, event: str) -> list[web.WebSocketResponse]:
        if client_id is not None:
            socket = self.sockets.get(client_id)
            return [socket] if socket is not None else []
        return [] if event in CLIENT_ONLY else list(self.sockets.values())

    async def _emit(self, item: QueueItem | None, event: str, data: dict[str, Any]) -> None:
        targets = list(self.sockets.values()) if item is None else self._targets(item.client_id, event)
        for socket in targets:
            await self._send_to(socket, {"type": event, "data": data})

    async def _broadcast_status(self) -> None:
        for socket in list(self.sockets.values()):
            await self._send_to(socket, self._status_message())

    # -- the queue -------------------------------------------------------------------------

    @property
    def queue_remaining(self) -> int:
        return len(self.pending) + (1 if self.running else 0)

    async def _work(self) -> None:
        while True:
            while not self.pending:
                self._wake.clear()
                await self._wake.wait()
            item = self.pending.pop(0)
            self.running, self._interrupt = item, False
            await self._broadcast_status()
            try:
                await self._execute(item)
            except Exception:
                logger.exception("Emulator: prompt %s crashed", item.prompt_id)
            self.running = None
            await self._broadcast_status()
            await self._emit(item, "executing", {"node": None, "prompt_id": item.prompt_id})

    async def _execute(self, item: QueueItem) -> None:
        messages: list[list[Any]] = []

        async def emit(event: str, data: dict[str, Any], *, keep: bool = False) -> None:
            if keep:
                messages.append([event, data])
            await self._emit(item, event, data)

        await emit("execution_start", {"prompt_id": item.prompt_id, "timestamp": _now_ms()}, keep=True)
        order = _execution_order(item.prompt, item.outputs)
        signatures = {nid: self._signature(item.prompt, nid, {}) for nid in order}
        cached = [nid for nid in item.prompt if nid in signatures and signatures[nid] in self._cache]
        await emit(
            "execution_cached",
            {"nodes": cached, "prompt_id": item.prompt_id, "timestamp": _now_ms()},
            keep=True,
        )
        results: dict[str, tuple[Any, ...]] = {}
        outputs: dict[str, Any] = {}
        states: dict[str, dict[str, Any]] = {}
        executed: list[str] = []
        ctx = self._context(item, states)
        current = ""
        # Outputs are cached node by node as they are made, so even a failed run leaves the
        # nodes it finished cached for the next prompt (ComfyUI keeps the last prompt's).
        previous_cache, self._cache = self._cache, {}
        try:
            for node_id in order:
                current = node_id
                results[node_id], ui = await self._run_node(
                    item, node_id, signatures[node_id], previous_cache, results, states, ctx, executed
                )
                self._cache[signatures[node_id]] = (results[node_id], ui)
                if ui is not None:
                    outputs[node_id] = ui
        except Interrupted:
            node = item.prompt[current]
            await emit(
                "execution_interrupted",
                {
                    "prompt_id": item.prompt_id,
                    "node_id": current,
                    "node_type": node["class_type"],
                    "executed": executed,
                    "timestamp": _now_ms(),
                },
                keep=True,
            )
            self._remember(item, {}, messages, "error")
            return
        except Exception as error:
            await emit("execution_error", self._error_data(item, current, error, executed), keep=True)
            self._remember(item, {}, messages, "error")
            return
        await emit("execution_success", {"prompt_id": item.prompt_id, "timestamp": _now_ms()}, keep=True)
        self._remember(item, outputs, messages, "success")

    async def _run_node(
        self,
        item: QueueItem,
        node_id: str,
        signature: str,
        cache: dict[str, tuple[tuple[Any, ...], dict[str, Any] | None]],
        results: dict[str, tuple[Any, ...]],
        states: dict[str, dict[str, Any]],
        ctx: RunContext,
        executed: list[str],
    ) -> tuple[tuple[Any, ...], dict[str, Any] | None]:
        node = item.prompt[node_id]
        hit = cache.get(signature)
        if hit is not None:
            value, ui = hit
            if ui is not None:  # a cached output node still reports its files
                await self._emit(item, "executed", self._executed_data(item, node_id, ui))
                states[node_id] = self._node_state(item, node_id, 1, 1, "finished")
                await self._send_progress_state(item, states)
            return value, ui
        if self._interrupt:
            raise Interrupted
        states[node_id] = self._node_state(item, node_id, 0, 1, "running")
        await self._send_progress_state(item, states)
        await self._emit(
            item, "executing", {"node": node_id, "display_node": node_id, "prompt_id": item.prompt_id}
        )
        if self.faults.fail_node in (node_id, node["class_type"]):
            raise RuntimeError(self.faults.fail_message)
        declared = self.object_info[node["class_type"]]["input"]
        accepted = {**declared.get("required", {}), **declared.get("optional", {})}
        kwargs = {  # like ComfyUI, a node function gets only the inputs it declares
            name: results[str(value[0])][value[1]] if isinstance(value, list) else value
            for name, value in node["inputs"].items()
            if name in accepted
        }
        ctx.current_node = node_id
        value, ui = await NODES[node["class_type"]](ctx, **kwargs)
        await asyncio.sleep(0)
        if ui is not None:
            await self._emit(item, "executed", self._executed_data(item, node_id, ui))
        states[node_id] = self._node_state(item, node_id, 1, 1, "finished")
        await self._send_progress_state(item, states)
        executed.append(node_id)
        return value, ui

    def _context(self, item: QueueItem, states: dict[str, dict[str, Any]]) -> RunContext:
        async def step(value: int, maximum: int, picture: Any) -> None:
            # As in ComfyUI: a step is computed, then its progress hook raises if interrupted,
            # else reports the step (progress_state, progress, preview).
            await asyncio.sleep(self.step_seconds)
            if self._interrupt:
                raise Interrupted
            node_id = ctx.current_node
            states[node_id] = self._node_state(item, node_id, value, maximum, "running")
            await self._send_progress_state(item, states)
            frame = preview_jpeg(picture, value / maximum) if self.preview else None
            targets = self._targets(item.client_id, "progress")
            tagged = [s for sid, s in self.sockets.items() if sid in self.metadata_sockets and s in targets]
            if frame is not None:
                metadata = {
                    "node_id": node_id,
                    "prompt_id": item.prompt_id,
                    "display_node_id": node_id,
                    "parent_node_id": None,
                    "real_node_id": node_id,
                }
                for socket in tagged:  # type-4 previews come before their progress message
                    await self._send_to(socket, preview_frame(frame, metadata=metadata))
            progress = {"value": value, "max": maximum, "prompt_id": item.prompt_id, "node": node_id}
            for socket in targets:
                await self._send_to(socket, {"type": "progress", "data": progress})
            if frame is not None:
                for socket in targets:
                    if socket not in tagged:
                        await self._send_to(socket, preview_frame(frame))

        ctx = RunContext(
            prompt=item.prompt,
            extra_pnginfo=(item.extra_data.get("extra_pnginfo") or None),
            read_input=self._read_input,
            save_output=lambda kind, sub, name, data: self.files.__setitem__((kind, sub, name), data),
            next_counter=self._next_counter,
            step=step,
        )
        return ctx

    def _read_input(self, name: str) -> bytes:
        subfolder, _, filename = name.rpartition("/")
        return self.files[("input", subfolder, filename)]

    def _next_counter(self, kind: str, subfolder: str, prefix: str) -> int:
        used = [
            int(name[len(prefix) + 1 : len(prefix) + 6])
            for (k, sub, name) in self.files
            if k == kind
            and sub == subfolder
            and name.startswith(f"{prefix}_")
            and name[len(prefix) + 1 : len(prefix) + 6].isdigit()
        ]
        return max(used, default=0) + 1

    def _node_state(
        self, item: QueueItem, node_id: str, value: float, maximum: float, state: str
    ) -> dict[str, Any]:
        return {
            "value": value,
            "max": maximum,
            "state": state,
            "node_id": node_id,
            "prompt_id": item.prompt_id,
            "display_node_id": node_id,
            "parent_node_id": None,
            "real_node_id": node_id,
        }

    async def _send_progress_state(self, item: QueueItem, states: dict[str, dict[str, Any]]) -> None:
        data = {"prompt_id": item.prompt_id, "nodes": copy.deepcopy(states)}
        for socket in self._targets(item.client_id, "progress_state"):
            await self._send_to(socket, {"type": "progress_state", "data": data})

    @staticmethod
    def _executed_data(item: QueueItem, node_id: str, ui: dict[str, Any]) -> dict[str, Any]:
        return {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": item.prompt_id}

    def _error_data(
        self, item: QueueItem, node_id: str, error: Exception, executed: list[str]
    ) -> dict[str, Any]:
        error_type = type(error)
        module = error_type.__module__
        full_type = error_type.__qualname__ if module == "builtins" else f"{module}.{error_type.__qualname__}"
        if full_type.startswith("PIL."):
            full_type = f"PIL.{error_type.__qualname__}"  # ComfyUI names it by its public module
        node = item.prompt.get(node_id, {})
        return {
            "prompt_id": item.prompt_id,
            "node_id": node_id,
            "node_type": node.get("class_type", ""),
            "executed": executed,
            "exception_message": str(error),
            "exception_type": full_type,
            "traceback": traceback.format_tb(error.__traceback__),
            "current_inputs": {k: [repr(v)] for k, v in node.get("inputs", {}).items()},
            "current_outputs": list(item.prompt),
            "timestamp": _now_ms(),
        }

    def _remember(
        self, item: QueueItem, outputs: dict[str, Any], messages: list[list[Any]], status: str
    ) -> None:
        self.history[item.prompt_id] = {
            "prompt": item.as_list(),
            "outputs": outputs,
            "status": {"status_str": status, "completed": status == "success", "messages": messages},
            "meta": {
                nid: {"node_id": nid, "display_node": nid, "parent_node": None, "real_node_id": nid}
                for nid in outputs
            },
        }

    def _signature(self, prompt: dict[str, Any], node_id: str, memo: dict[str, str]) -> str:
        """What makes a node's output reusable: its class, its values, its inputs' signatures."""
        if node_id in memo:
            return memo[node_id]
        node = prompt[node_id]
        parts = [node["class_type"]]
        for name, value in sorted(node["inputs"].items()):
            if isinstance(value, list):
                parts.append(f"{name}<{self._signature(prompt, str(value[0]), memo)}:{value[1]}")
            else:
                parts.append(f"{name}={json.dumps(value, sort_keys=True)}")
                if node["class_type"] == "LoadImage":
                    with contextlib.suppress(KeyError):
                        parts.append(hashlib.sha256(self._read_input(str(value))).hexdigest())
        memo[node_id] = hashlib.sha256("|".join(parts).encode()).hexdigest()
        return memo[node_id]

    # -- HTTP ------------------------------------------------------------------------------

    def _add_routes(self, app: web.Application) -> None:
        routes = [
            ("GET", "/ws", self._websocket),
            ("GET", "/prompt", self._get_prompt),
            ("POST", "/prompt", self._post_prompt),
            ("GET", "/queue", self._get_queue),
            ("POST", "/queue", self._post_queue),
            ("GET", "/history", self._get_history),
            ("GET", "/history/{prompt_id}", self._get_history_item),
            ("POST", "/history", self._post_history),
            ("POST", "/interrupt", self._interrupt_handler),
            ("GET", "/view", self._view),
            ("POST", "/upload/image", self._upload),
            ("GET", "/object_info", self._object_info),
            ("GET", "/object_info/{node}", self._object_info_node),
            ("GET", "/system_stats", self._system_stats),
            ("GET", "/models", self._models),
            ("GET", "/models/{folder}", self._models_folder),
            ("GET", "/features", self._features),
            ("GET", "/embeddings", self._embeddings),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)
            app.router.add_route(method, f"/api{path}", handler)

    @web.middleware
    async def _faults_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        path = request.path.removeprefix("/api")
        if path in self.faults.http_500 or request.path in self.faults.http_500:
            return web.Response(status=500, text=SERVER_ERROR)
        return await handler(request)

    async def _get_prompt(self, request: web.Request) -> web.Response:
        return web.json_response({"exec_info": {"queue_remaining": self.queue_remaining}})

    async def _post_prompt(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return web.Response(status=500, text=SERVER_ERROR)
        if not isinstance(body, dict) or "prompt" not in body:
            error = {
                "type": "no_prompt",
                "message": "No prompt provided",
                "details": "No prompt provided",
                "extra_info": {},
            }
            return web.json_response({"error": error, "node_errors": {}}, status=400)
        prompt = copy.deepcopy(body["prompt"])
        try:
            outputs = Validator(prompt, self.object_info, {("LoadImage", "image"): self._check_image}).run()
        except Rejection as rejection:
            return web.json_response(rejection.body, status=400)
        number = next(self._numbers)
        if body.get("front"):
            number = -number
        extra_data = dict(body.get("extra_data") or {})
        if body.get("client_id"):
            extra_data["client_id"] = body["client_id"]
        prompt_id = str(body.get("prompt_id") or uuid.uuid4())
        item = QueueItem(number, prompt_id, prompt, extra_data, outputs)
        if body.get("front"):
            self.pending.insert(0, item)
        else:
            self.pending.append(item)
        await self._broadcast_status()
        self._wake.set()
        if self.faults.prompt_answer_delay:
            await asyncio.sleep(self.faults.prompt_answer_delay)
        return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": {}})

    def _check_image(self, value: Any) -> str | bool:
        subfolder, _, name = str(value).rpartition("/")
        return True if ("input", subfolder, name) in self.files else f"Invalid image file: {value}"

    async def _get_queue(self, request: web.Request) -> web.Response:
        running = [self.running.as_list()] if self.running else []
        return web.json_response(
            {"queue_running": running, "queue_pending": [i.as_list() for i in self.pending]}
        )

    async def _post_queue(self, request: web.Request) -> web.Response:
        body = await _json_or_empty(request)
        before = len(self.pending)
        if body.get("clear"):
            self.pending.clear()
        if "delete" in body:
            doomed = set(body["delete"])
            self.pending = [item for item in self.pending if item.prompt_id not in doomed]
        if len(self.pending) != before:
            await self._broadcast_status()
        return web.Response(status=200)

    async def _get_history(self, request: web.Request) -> web.Response:
        items = list(self.history.items())
        max_items = request.query.get("max_items", "")
        if max_items.isdigit():
            items = items[-int(max_items) :] if int(max_items) else []
        return web.json_response(dict(items))

    async def _get_history_item(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info["prompt_id"]
        entry = self.history.get(prompt_id)
        return web.json_response({prompt_id: entry} if entry else {})

    async def _post_history(self, request: web.Request) -> web.Response:
        body = await _json_or_empty(request)
        if body.get("clear"):
            self.history.clear()
        for prompt_id in body.get("delete") or ():
            self.history.pop(prompt_id, None)
        return web.Response(status=200)

    async def _interrupt_handler(self, request: web.Request) -> web.Response:
        body = await _json_or_empty(request)
        target = body.get("prompt_id")
        if self.running and (target is None or target == self.running.prompt_id):
            self._interrupt = True
        return web.Response(status=200)

    async def _view(self, request: web.Request) -> web.Response:
        filename = request.query.get("filename", "")
        subfolder = request.query.get("subfolder", "")
        kind = request.query.get("type", "output")
        if not filename or filename.startswith("/") or ".." in filename or ".." in subfolder.split("/"):
            return web.Response(status=400)
        if self.faults.view_delay:
            await asyncio.sleep(self.faults.view_delay)
        data = self.files.get((kind, subfolder, filename))
        if data is None:
            return web.Response(status=404)
        content_type = "image/png" if filename.endswith(".png") else "application/octet-stream"
        return web.Response(body=data, content_type=content_type)

    async def _upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload = form.get("image")
        if not isinstance(upload, web.FileField):
            return web.Response(status=400)
        subfolder = str(form.get("subfolder", "") or "")
        if os.path.isabs(subfolder) or ".." in subfolder.split("/"):
            return web.Response(status=400)
        kind = str(form.get("type", "") or "input")
        overwrite = str(form.get("overwrite", "")).lower() in {"true", "1"}
        data = upload.file.read()
        name = self._upload_name(kind, subfolder, upload.filename, data, overwrite)
        self.files[(kind, subfolder, name)] = data
        return web.json_response({"name": name, "subfolder": subfolder, "type": kind})

    def _upload_name(self, kind: str, subfolder: str, filename: str, data: bytes, overwrite: bool) -> str:
        """ComfyUI's rule: same name and bytes → same file; other bytes → "name (1).ext"."""
        if overwrite or (kind, subfolder, filename) not in self.files:
            return filename
        stem, dot, extension = filename.rpartition(".")
        stem, extension = (stem, f".{extension}") if dot else (filename, "")
        for counter in itertools.count():
            name = filename if counter == 0 else f"{stem} ({counter}){extension}"
            existing = self.files.get((kind, subfolder, name))
            if existing is None or existing == data:
                return name
        raise AssertionError("unreachable")

    async def _object_info(self, request: web.Request) -> web.Response:
        return web.json_response(self._current_object_info())

    async def _object_info_node(self, request: web.Request) -> web.Response:
        node = request.match_info["node"]
        info = self._current_object_info()
        return web.json_response({node: info[node]} if node in info else {})

    def _current_object_info(self) -> dict[str, Any]:
        """LoadImage's choices are the files in the input folder, as in ComfyUI."""
        info = copy.deepcopy(self.object_info)
        inputs = sorted(f"{sub}/{name}" if sub else name for kind, sub, name in self.files if kind == "input")
        if "LoadImage" in info:
            info["LoadImage"]["input"]["required"]["image"][0] = inputs
        return info

    async def _system_stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "system": {
                    "os": os.name,
                    "ram_total": 0,
                    "ram_free": 0,
                    "comfyui_version": "0.3.64",
                    "required_frontend_version": "1.27.10",
                    "installed_templates_version": "0.1.95",
                    "required_templates_version": "0.1.95",
                    "python_version": "ComfySite emulator",
                    "pytorch_version": "none (emulator)",
                    "embedded_python": False,
                    "argv": ["comfysite", "comfy_emulator"],
                },
                "devices": [
                    {
                        "name": "ComfySite emulator (demo backend, no GPU)",
                        "type": "cpu",
                        "index": None,
                        "vram_total": 0,
                        "vram_free": 0,
                        "torch_vram_total": 0,
                        "torch_vram_free": 0,
                    }
                ],
            }
        )

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response(MODEL_FOLDERS)

    async def _models_folder(self, request: web.Request) -> web.Response:
        if request.match_info["folder"] == "checkpoints":
            spec = self.object_info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"]
            return web.json_response(spec[0])
        return web.json_response([])

    async def _features(self, request: web.Request) -> web.Response:
        return web.json_response(FEATURES)

    async def _embeddings(self, request: web.Request) -> web.Response:
        return web.json_response([])


async def _json_or_empty(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _execution_order(prompt: dict[str, Any], outputs: list[str]) -> list[str]:
    """The order ComfyUI 0.3.64 runs nodes in, as the recordings show it: nodes are listed from
    the outputs up; among the ready ones an output goes first, then one that unblocks an output
    directly or one step removed; otherwise the most recently listed."""
    pending: list[str] = []

    def links(node_id: str) -> list[str]:
        return [str(v[0]) for v in prompt[node_id]["inputs"].values() if isinstance(v, list)]

    def add(node_id: str) -> None:
        if node_id in pending:
            return
        pending.append(node_id)
        for linked in links(node_id):
            add(linked)

    for output in outputs:
        add(output)
    outputs_set = set(outputs)
    done: list[str] = []
    while len(done) < len(pending):
        waiting = [n for n in pending if n not in done]
        consumers = {n: [m for m in waiting if n in links(m)] for n in waiting}
        ready = [n for n in reversed(waiting) if all(linked in done for linked in links(n))]
        pick = next((n for n in ready if n in outputs_set), None)
        pick = pick or next((n for n in ready if any(c in outputs_set for c in consumers[n])), None)
        pick = pick or next(
            (n for n in ready if any(cc in outputs_set for c in consumers[n] for cc in consumers[c])), None
        )
        done.append(pick or ready[0])
    return done


def _example_png() -> bytes:
    """ComfyUI ships input/example.png; so does the emulator."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (512, 512), (90, 110, 160)).save(out, "PNG")
    return out.getvalue()
