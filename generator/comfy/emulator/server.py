"""The emulator itself: a ComfyUI 0.3.64 stand-in on a real port, with the same endpoints,
message sequences and error bodies as the recordings (generator/comfy/tests/recordings).

    async with Emulator(step_seconds=0.1) as emu:
        ...  # talk to emu.url like to ComfyUI; emu.faults breaks things on purpose

It runs inside whatever asyncio loop starts it (tests, `manage.py serve`) or on its own
(`manage.py comfy_emulator`, `python -m generator.comfy.emulator`).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from .executor import Executor, Settings
from .faults import Faults
from .folders import Folders
from .hub import Hub
from .nodes import temp_prefix
from .prompt_queue import PromptQueue, QueueItem
from .routes import build_app

logger = logging.getLogger(__name__)

OBJECT_INFO_FILE = Path(__file__).resolve().parent.parent / "data" / "object_info.json"


class Emulator:
    """A ComfyUI that paints demo pictures.

    `step_seconds`: time per sampler step (0 = as fast as possible, still yielding to the loop).
    `preview`: send preview frames, as ComfyUI started with --preview-method auto.
    `root`: where input/, output/ and temp/ live (default: a temporary directory, removed on stop).
    `fault_control`: serve POST /_faults, so a test in another process can break it (control.py).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        step_seconds: float = 0.0,
        preview: bool = True,
        root: str | Path | None = None,
        fault_control: bool = False,
    ) -> None:
        self.host = host
        self.fault_control = fault_control
        self.port = port
        self.settings = Settings(step_seconds=step_seconds, preview=preview)
        self.faults = Faults()
        self.object_info: dict[str, Any] = json.loads(OBJECT_INFO_FILE.read_text())
        self.hub = Hub(self.faults, self.queue_info)
        self.queue = PromptQueue(self.hub.queue_updated)
        self._root = root
        self._folders: Folders | None = None
        self._executor: Executor | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._reopen: asyncio.Task[None] | None = None

    # -- what tests look at -------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/ws"

    @property
    def step_seconds(self) -> float:
        return self.settings.step_seconds

    @step_seconds.setter
    def step_seconds(self, seconds: float) -> None:
        self.settings.step_seconds = seconds

    @property
    def history(self) -> OrderedDict[str, dict[str, Any]]:
        """Finished prompts by id, oldest first (what /history serves)."""
        return self.queue.history

    @property
    def pending(self) -> list[QueueItem]:
        return self.queue.pending

    @property
    def running(self) -> QueueItem | None:
        return self.queue.running

    @property
    def sockets(self) -> dict[str, web.WebSocketResponse]:
        """Connected websockets by client id. Clearing it makes the emulator forget them: they
        stay open but receive nothing more (a half-open connection)."""
        return self.hub.sockets

    @property
    def folders(self) -> Folders:
        assert self._folders is not None, "the emulator is not running"
        return self._folders

    @property
    def executor(self) -> Executor:
        assert self._executor is not None, "the emulator is not running"
        return self._executor

    def queue_info(self) -> dict[str, Any]:
        return {"exec_info": {"queue_remaining": self.queue.remaining}}

    def checkpoints(self) -> list[str]:
        return list(self.object_info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0])

    def current_object_info(self) -> dict[str, Any]:
        """/object_info: LoadImage's choices are the images in input/, as in ComfyUI."""
        info = copy.deepcopy(self.object_info)
        if "LoadImage" in info:
            info["LoadImage"]["input"]["required"]["image"][0] = self.folders.input_images()
        return info

    async def wait_idle(self) -> None:
        """Until nothing is queued or running and every message has been sent (wrap it in
        asyncio.timeout)."""
        # Polling: idleness spans the queue, the worker and the publisher.
        while self.queue.remaining or not self.hub.messages.empty():  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        # Queues and events bind to the loop that first waits on them: start fresh in this one.
        self.hub.messages = asyncio.Queue()
        self.queue.renew_wakeup()
        self._folders = Folders(self._root)
        self._executor = Executor(
            self.hub, self.queue, self._folders, self.object_info, self.faults, self.settings
        )
        self.faults._refuse = self.refuse_connections
        self.faults._restart = self.restart
        self.faults._forget = self.hub.forget_sockets
        self._runner = web.AppRunner(
            build_app(self), access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        try:
            await self._runner.setup()
            await self._listen()
        except BaseException:  # e.g. the port is taken: leave nothing behind
            await self.stop()
            raise
        self._start_tasks()
        logger.info("ComfyUI emulator at %s", self.url)

    async def stop(self) -> None:
        if self._reopen is not None:
            self._reopen.cancel()
        await self._stop_tasks()
        await self.hub.close_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._folders is not None:
            self._folders.remove()

    async def restart(self, down_seconds: float = 0.0) -> None:
        """As if ComfyUI restarted: the running prompt dies, queue, history and caches are lost,
        every websocket drops; with `down_seconds`, unreachable that long (HTTP connections cut
        too). Files on disk stay, temp/ is emptied."""
        await self._stop_tasks()
        self.hub.forget_messages()
        if down_seconds > 0:
            await self.refuse_connections(down_seconds)
        else:
            # An instant restart keeps idle keep-alive HTTP connections: cutting them races
            # with a client's next request, which no real restart is quick enough to meet.
            await self._drop_websockets()
        self.queue.reset()
        self.hub.client_id = self.hub.last_node_id = None
        self.executor.cache.clear()
        self.executor.temp_prefix = temp_prefix()
        self.folders.wipe_temp()
        self._start_tasks()

    async def refuse_connections(self, seconds: float) -> None:
        """Stop listening and cut every connection for `seconds`, then listen again on the same
        port. The queue keeps running: a network outage, not a crash."""
        if self._reopen is not None:
            self._reopen.cancel()
        if self._site is not None:
            await self._site.stop()
            self._site = None
        await self._drop_connections()
        self._reopen = asyncio.get_running_loop().create_task(self._listen_after(seconds))

    async def _listen_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        await self._listen()

    async def _listen(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await self._site.start()
        self.port = self._site.port  # the port the OS chose when asked for 0

    async def _drop_websockets(self) -> None:
        """Cut every websocket without a close frame, like a dead server."""
        abruptly, self.faults.drop_abruptly = self.faults.drop_abruptly, True
        try:
            await self.hub.close_all()
        finally:
            self.faults.drop_abruptly = abruptly

    async def _drop_connections(self) -> None:
        """Cut websockets and keep-alive HTTP connections."""
        await self._drop_websockets()
        if self._runner is not None and self._runner.server is not None:
            for connection in self._runner.server.connections:
                connection.force_close()

    def _start_tasks(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self.hub.publish(), name="emulator-publisher"),
            loop.create_task(self.executor.work(), name="emulator-worker"),
        ]

    async def _stop_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []


def _print(text: str) -> None:
    print(text, flush=True)


async def serve_forever(emulator: Emulator, announce: Callable[[str], None] = _print) -> None:
    """Run `emulator` until cancelled (Ctrl-C)."""
    async with emulator:
        announce(f"ComfyUI emulator (ComfySite demo backend) at {emulator.url}; Ctrl-C to stop")
        await asyncio.Event().wait()
