"""The websocket side of ComfyUI's PromptServer: sockets by client id, their feature flags,
and one publisher that sends queued messages in order (server.py send_sync / publish_loop).

Routing is ComfyUI's: a message for sid None goes to every socket, for a known sid to that
socket only, for an unknown sid to nobody. Which messages are sent at all without a client_id
is the executor's business, as in ComfyUI.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType, web

from .faults import Faults

logger = logging.getLogger(__name__)

MAX_UPLOAD_SIZE = 100 * 1024 * 1024
SERVER_FEATURES = {"supports_preview_metadata": True, "max_upload_size": MAX_UPLOAD_SIZE}

Message = tuple[str, Any, str | None]  # (event, JSON data or frame bytes, sid)


class Hub:
    def __init__(self, faults: Faults, queue_info: Callable[[], dict[str, Any]]) -> None:
        self.faults = faults
        self.queue_info = queue_info
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.flags: dict[str, dict[str, Any]] = {}  # sockets_metadata: feature flags per sid
        self.client_id: str | None = None  # the running prompt's client (server.client_id)
        self.last_node_id: str | None = None
        self.messages: asyncio.Queue[Message] = asyncio.Queue()
        self._sent: dict[int, int] = {}  # messages sent per socket, for drop_ws_after
        self._transports: dict[int, asyncio.Transport] = {}

    # -- sending ------------------------------------------------------------------------------

    def send_sync(self, event: str, data: Any, sid: str | None = None) -> None:
        """Queue a message (JSON data, or bytes for a binary frame) for the publisher."""
        self.messages.put_nowait((event, data, sid))

    def queue_updated(self) -> None:
        self.send_sync("status", {"status": self.queue_info()})

    def supports_preview_metadata(self, sid: str | None) -> bool:
        if sid is None or sid not in self.flags:
            return False
        return self.flags[sid].get("supports_preview_metadata", False) is True

    async def publish(self) -> None:
        """Drain the queue forever, one message at a time, in order."""
        while True:
            event, data, sid = await self.messages.get()
            try:
                await self.send(event, data, sid)
            except Exception:  # one bad send must not silence every later message
                logger.exception("emulator: could not send %s", event)

    async def send(self, event: str, data: Any, sid: str | None = None) -> None:
        if sid is None:
            targets = list(self.sockets.values())
        elif sid in self.sockets:
            targets = [self.sockets[sid]]
        else:
            return
        for socket in targets:
            await self._send_to(socket, data if isinstance(data, bytes) else {"type": event, "data": data})

    async def _send_to(self, socket: web.WebSocketResponse, message: dict[str, Any] | bytes) -> None:
        if socket.closed:
            return
        try:
            if isinstance(message, bytes):
                await socket.send_bytes(message)
            else:
                await socket.send_str(json.dumps(message))
        except (ConnectionError, RuntimeError) as error:  # ComfyUI logs these and carries on
            logger.debug("emulator: send failed: %s", error)
            return
        sent = self._sent[id(socket)] = self._sent.get(id(socket), 0) + 1
        limit = self.faults.drop_ws_after
        if limit is not None and sent >= limit:
            if self.faults.drop_once:
                self.faults.drop_ws_after = None
            await self.drop(socket)

    async def drop(self, socket: web.WebSocketResponse) -> None:
        """Close one socket: a clean close, or (faults.drop_abruptly) a cut connection."""
        transport = self._transports.get(id(socket))
        if self.faults.drop_abruptly and transport is not None:
            transport.abort()
            return
        with contextlib.suppress(Exception):
            await socket.close()

    async def close_all(self) -> None:
        for socket in list(self.sockets.values()):
            await self.drop(socket)
        self.sockets.clear()
        self.flags.clear()

    def forget_sockets(self) -> None:
        """Unregister every socket without closing it: it receives nothing more."""
        self.sockets.clear()
        self.flags.clear()

    def forget_messages(self) -> None:
        while not self.messages.empty():
            self.messages.get_nowait()

    # -- the /ws endpoint ---------------------------------------------------------------------

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        sid = request.query.get("clientId", "")
        if sid:
            self.sockets.pop(sid, None)  # a reconnect replaces the old socket (left open)
        else:
            sid = uuid.uuid4().hex
        self.sockets[sid] = socket
        self.flags[sid] = {}
        if request.transport is not None:
            self._transports[id(socket)] = request.transport
        try:
            await self._send_to(socket, {"type": "status", "data": {"status": self.queue_info(), "sid": sid}})
            if self.client_id == sid and self.last_node_id is not None:
                # ComfyUI tells a client that reconnects mid-prompt where its prompt is.
                await self._send_to(socket, {"type": "executing", "data": {"node": self.last_node_id}})
            await self._listen(sid, socket)
        finally:
            # As in ComfyUI: when an old socket of a reconnected client finally closes, it
            # takes the new one's registration with it.
            self.sockets.pop(sid, None)
            self.flags.pop(sid, None)
            self._sent.pop(id(socket), None)
            self._transports.pop(id(socket), None)
        return socket

    async def _listen(self, sid: str, socket: web.WebSocketResponse) -> None:
        first = True
        async for message in socket:
            if message.type != WSMsgType.TEXT:
                continue
            try:
                data = json.loads(message.data)
                # Only a first message can negotiate features.
                if first and data.get("type") == "feature_flags":
                    self.flags[sid] = data.get("data", {})
                    await self._send_to(socket, {"type": "feature_flags", "data": SERVER_FEATURES})
            except (ValueError, AttributeError, TypeError):
                logger.debug("emulator: ignored websocket message %r", message.data)
            first = False
