"""The HTTP endpoints, as ComfyUI 0.3.64's server.py answers them (also under /api/...).

Errors are ComfyUI's: a body that is not JSON where JSON is expected is a 500 with aiohttp's
text; empty bodies for 400/403/404 from /view and /upload/image; 200 with an empty body for
POST /queue, /history and /interrupt.
"""

from __future__ import annotations

import asyncio
import json
import logging
import mimetypes
import os
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .control import CONTROL_PATH, add_control_routes
from .hub import MAX_UPLOAD_SIZE, SERVER_FEATURES
from .prompt_queue import SENSITIVE_EXTRA_DATA_KEYS, QueueItem
from .validation import Validator

if TYPE_CHECKING:
    from .server import Emulator

logger = logging.getLogger(__name__)

SERVER_ERROR = "500 Internal Server Error\n\nServer got itself in trouble"
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
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def build_app(emu: Emulator) -> web.Application:
    app = web.Application(client_max_size=MAX_UPLOAD_SIZE, middlewares=[_middleware(emu)])
    api = Api(emu)
    routes: list[tuple[str, str, Handler]] = [
        ("GET", "/ws", emu.hub.websocket),
        ("GET", "/prompt", api.get_prompt),
        ("POST", "/prompt", api.post_prompt),
        ("GET", "/queue", api.get_queue),
        ("POST", "/queue", api.post_queue),
        ("GET", "/history", api.get_history),
        ("GET", "/history/{prompt_id}", api.get_history_item),
        ("POST", "/history", api.post_history),
        ("POST", "/interrupt", api.interrupt),
        ("GET", "/view", api.view),
        ("POST", "/upload/image", api.upload_image),
        ("GET", "/object_info", api.object_info),
        ("GET", "/object_info/{node_class}", api.object_info_node),
        ("GET", "/system_stats", api.system_stats),
        ("GET", "/models", api.models),
        ("GET", "/models/{folder}", api.models_in_folder),
        ("GET", "/features", api.features),
        ("GET", "/embeddings", api.embeddings),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, handler)
        app.router.add_route(method, f"/api{path}", handler)
    if emu.fault_control:
        add_control_routes(app, emu)
    return app


def _middleware(emu: Emulator) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if emu.faults.answers_500(request.path) and request.path != CONTROL_PATH:
            return web.Response(status=500, text=SERVER_ERROR)
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except Exception:
            # What aiohttp answers when a ComfyUI handler raises (bad JSON, wrong types).
            logger.debug("emulator: %s %s failed", request.method, request.path, exc_info=True)
            return web.Response(status=500, text=SERVER_ERROR)

    return middleware


class Api:
    def __init__(self, emu: Emulator) -> None:
        self.emu = emu

    # -- prompts and the queue ----------------------------------------------------------------

    async def get_prompt(self, request: web.Request) -> web.Response:
        return web.json_response(self.emu.queue_info())

    async def post_prompt(self, request: web.Request) -> web.Response:
        body = await request.json()
        queue = self.emu.queue
        if self.emu.faults.prompt_queue_delay:
            await asyncio.sleep(self.emu.faults.prompt_queue_delay)
        if "number" in body:
            number: float = float(body["number"])
        else:
            number = queue.next_number(bool(body.get("front")))
        if "prompt" not in body:
            error = {"type": "no_prompt", "message": "No prompt provided", "details": "No prompt provided"}
            return web.json_response({"error": {**error, "extra_info": {}}, "node_errors": {}}, status=400)
        prompt = body["prompt"]
        prompt_id = str(body.get("prompt_id", uuid.uuid4()))
        checks = {("LoadImage", "image"): self._image_exists}
        verdict = Validator(prompt, self.emu.object_info, checks).validate_prompt(
            body.get("partial_execution_targets")
        )
        extra_data = body.get("extra_data", {})
        if "client_id" in body:
            extra_data["client_id"] = body["client_id"]
        if verdict.error is not None:
            logger.info("emulator: invalid prompt: %s", verdict.error["message"])
            return web.json_response(verdict.body, status=400)
        sensitive = {key: extra_data.pop(key) for key in SENSITIVE_EXTRA_DATA_KEYS if key in extra_data}
        queue.put(QueueItem(number, prompt_id, prompt, extra_data, verdict.outputs, sensitive))
        if self.emu.faults.prompt_answer_delay:
            await asyncio.sleep(self.emu.faults.prompt_answer_delay)
        return web.json_response(
            {"prompt_id": prompt_id, "number": number, "node_errors": verdict.node_errors}
        )

    def _image_exists(self, value: Any) -> bool | str:
        """LoadImage.VALIDATE_INPUTS."""
        if not isinstance(value, str) or not self.emu.folders.input_exists(value):
            return f"Invalid image file: {value}"
        return True

    async def get_queue(self, request: web.Request) -> web.Response:
        return web.json_response(self.emu.queue.snapshot())

    async def post_queue(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("clear"):
            self.emu.queue.wipe()
        if "delete" in body:
            for prompt_id in body["delete"]:
                self.emu.queue.delete(prompt_id)
        return web.Response(status=200)

    async def interrupt(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            body = {}
        prompt_id = body.get("prompt_id")
        running = self.emu.queue.running
        if not prompt_id:
            self.emu.executor.interrupt()  # global
        elif running is not None and running.prompt_id == prompt_id:
            self.emu.executor.interrupt()
        # else: not the running prompt, a silent no-op
        return web.Response(status=200)

    # -- history ------------------------------------------------------------------------------

    async def get_history(self, request: web.Request) -> web.Response:
        max_items = request.query.get("max_items")
        offset = request.query.get("offset")
        history = self.emu.queue.get_history(
            max_items=int(max_items) if max_items is not None else None,
            offset=int(offset) if offset is not None else -1,
        )
        return web.json_response(history)

    async def get_history_item(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info["prompt_id"]
        entry = self.emu.queue.history.get(prompt_id)
        return web.json_response({prompt_id: entry} if entry is not None else {})

    async def post_history(self, request: web.Request) -> web.Response:
        body = await request.json()
        history = self.emu.queue.history
        if body.get("clear"):
            history.clear()
        if "delete" in body:
            for prompt_id in body["delete"]:
                history.pop(prompt_id, None)
        return web.Response(status=200)

    # -- files --------------------------------------------------------------------------------

    async def view(self, request: web.Request) -> web.StreamResponse:
        if "filename" not in request.query:
            return web.Response(status=404)
        if self.emu.faults.view_delay:
            await asyncio.sleep(self.emu.faults.view_delay)
        found = self.emu.folders.view_path(
            request.query["filename"], request.query.get("type"), request.query.get("subfolder")
        )
        if isinstance(found, int):
            return web.Response(status=found)
        name = os.path.basename(found)
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if content_type in {
            "text/html",
            "text/html-sandboxed",
            "application/xhtml+xml",
            "text/javascript",
            "text/css",
        }:
            content_type = "application/octet-stream"  # ComfyUI forces these to download
        headers = {"Content-Disposition": f'filename="{name}"', "Content-Type": content_type}
        return web.FileResponse(found, headers=headers)

    async def upload_image(self, request: web.Request) -> web.Response:
        form = await request.post()
        image = form.get("image")
        kind = form.get("type", "input")
        if kind not in ("input", "temp", "output"):
            raise ValueError(f"unknown upload type {kind!r}")  # ComfyUI fails with a 500 too
        if not image:
            return web.Response(status=400)
        if not isinstance(image, web.FileField):
            raise TypeError("the image field is not a file")  # ComfyUI: AttributeError, 500
        if not image.filename:
            return web.Response(status=400)
        subfolder = str(form.get("subfolder", ""))
        overwrite = form.get("overwrite") in ("true", "1")
        data = image.file.read()
        name = self.emu.folders.upload(str(kind), subfolder, image.filename, data, overwrite)
        if name is None:
            return web.Response(status=400)
        return web.json_response({"name": name, "subfolder": subfolder, "type": kind})

    # -- what the server has ------------------------------------------------------------------

    async def object_info(self, request: web.Request) -> web.Response:
        return web.json_response(self.emu.current_object_info())

    async def object_info_node(self, request: web.Request) -> web.Response:
        name = request.match_info["node_class"]
        info = self.emu.current_object_info()
        return web.json_response({name: info[name]} if name in info else {})

    async def system_stats(self, request: web.Request) -> web.Response:
        return web.json_response(system_stats())

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(MODEL_FOLDERS)

    async def models_in_folder(self, request: web.Request) -> web.Response:
        folder = request.match_info["folder"]
        if folder not in MODEL_FOLDERS:
            return web.Response(status=404)
        if folder == "checkpoints":
            return web.json_response(self.emu.checkpoints())
        return web.json_response([])

    async def features(self, request: web.Request) -> web.Response:
        return web.json_response(SERVER_FEATURES)

    async def embeddings(self, request: web.Request) -> web.Response:
        return web.json_response([])


def system_stats() -> dict[str, Any]:
    """The recorded shape, saying plainly that this is the emulator: an extra `emulator` key,
    the device name, and "emulated" where a real server names its torch."""
    ram = _ram()
    return {
        "system": {
            "os": os.name,
            "ram_total": ram[0],
            "ram_free": ram[1],
            "comfyui_version": "0.3.64",
            "required_frontend_version": "1.27.10",
            "installed_templates_version": "0.1.95",
            "required_templates_version": "0.1.95",
            "python_version": sys.version,
            "pytorch_version": "emulated",
            "embedded_python": False,
            "argv": ["comfysite-emulator"],
            "emulator": True,
        },
        "devices": [
            {
                "name": "ComfySite emulator (no GPU, demo pictures)",
                "type": "cpu",
                "index": None,
                "vram_total": ram[0],
                "vram_free": ram[1],
                "torch_vram_total": ram[0],
                "torch_vram_free": ram[1],
            }
        ],
    }


def _ram() -> tuple[int, int]:
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return page * os.sysconf("SC_PHYS_PAGES"), page * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0, 0
