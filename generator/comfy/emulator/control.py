"""A test-only control route: the fault switches of an emulator running in another process
(bench/soak.py breaks backends it started as processes of their own). Off unless the emulator
is started with `--fault-control`; it answers loopback clients only.

    POST /_faults {"view_delay": 2.5, "http_500": ["/view"]}   set switches (faults.py)
    POST /_faults {"reset": true}                              every switch off
    POST /_faults {"refuse_connections": 3.0}                  a network outage of 3 s
    POST /_faults {"restart": 0.0}                             ComfyUI restarts (history lost)
    POST /_faults {"forget_sockets": true}                     its sockets go deaf
    GET  /_faults                                              the switches as they stand

Each answer is the switches as they stand, or 400 saying what was wrong. An outage or restart
begins just after the answer is sent: it cuts every connection, this one too.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .faults import Faults

if TYPE_CHECKING:
    from .server import Emulator

CONTROL_PATH = "/_faults"
ACTIONS = ("reset", "refuse_connections", "restart", "forget_sockets")


def switches(faults: Faults) -> dict[str, Any]:
    """The switches as JSON."""
    return {
        name: sorted(value) if isinstance(value, set) else value
        for name, value in ((name, getattr(faults, name)) for name in KINDS)
    }


# Each switch's kind of value (faults.py): what a JSON value must be to set it.
KINDS = {
    "drop_ws_after": "count or null",
    "drop_once": "flag",
    "drop_abruptly": "flag",
    "http_500": "paths",
    "view_delay": "seconds",
    "prompt_answer_delay": "seconds",
    "prompt_queue_delay": "seconds",
    "fail_node": "text or null",
    "fail_type": "text",
    "fail_message": "text",
    "fail_at_step": "count or null",
}


def coerce(name: str, value: Any) -> Any:
    """`value` as switch `name` takes it; ValueError saying what it takes when it cannot be."""
    kind = KINDS[name]
    if value is None and kind.endswith("or null"):
        return None
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "flag" and isinstance(value, bool):
        return value
    if kind.startswith("count") and number and value == int(value) and value >= 0:
        return int(value)
    if kind == "seconds" and number and value >= 0:
        return float(value)
    if kind.startswith("text") and isinstance(value, str):
        return value
    if kind == "paths" and isinstance(value, list) and all(isinstance(path, str) for path in value):
        return set(value)
    raise ValueError(f"{name} takes {kind}")


class FaultControl:
    def __init__(self, emu: Emulator) -> None:
        self.emu = emu

    async def get(self, request: web.Request) -> web.Response:
        self._check_loopback(request)
        return web.json_response(switches(self.emu.faults))

    async def post(self, request: web.Request) -> web.Response:
        self._check_loopback(request)
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return _refused("the body is not JSON")
        if not isinstance(body, dict):
            return _refused("the body must be an object")
        unknown = sorted(set(body) - set(KINDS) - set(ACTIONS))
        if unknown:
            return _refused(f"unknown switch {', '.join(unknown)}")
        try:
            changes = {name: coerce(name, value) for name, value in body.items() if name in KINDS}
        except ValueError as error:
            return _refused(str(error))
        faults = self.emu.faults
        if body.get("reset"):
            faults.reset()
        for name, value in changes.items():
            setattr(faults, name, value)
        if body.get("forget_sockets"):
            faults.forget_sockets()
        if "refuse_connections" in body:
            self._after_answer(faults.refuse_connections(_seconds(body["refuse_connections"])))
        elif "restart" in body:
            self._after_answer(faults.restart(_seconds(body["restart"])))
        return web.json_response(switches(faults))

    @staticmethod
    def _after_answer(action: Any) -> None:
        async def later() -> None:
            await asyncio.sleep(0.05)  # the answer goes out before the connections are cut
            await action

        task = asyncio.get_running_loop().create_task(later())
        _pending.add(task)
        task.add_done_callback(_pending.discard)

    @staticmethod
    def _check_loopback(request: web.Request) -> None:
        remote = request.remote or ""
        try:
            loopback = ipaddress.ip_address(remote).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise web.HTTPForbidden(text="The fault control answers this machine only.")


_pending: set[asyncio.Task[None]] = set()  # actions scheduled after an answer, kept alive


def _seconds(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _refused(reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=400)


def add_control_routes(app: web.Application, emu: Emulator) -> None:
    control = FaultControl(emu)
    app.router.add_get(CONTROL_PATH, control.get)
    app.router.add_post(CONTROL_PATH, control.post)
