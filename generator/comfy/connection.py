"""One long-lived websocket to a ComfyUI server, that comes back by itself.

`async for event in ComfyConnection(url, client_id).events()` yields parsed events, plus
`Connected` after every (re)connect and `Disconnected` when the socket drops, so a consumer
knows when to reconcile what it may have missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import quote

import websockets
from websockets.asyncio.client import ClientConnection, connect

from .errors import ProtocolError
from .events import Event, Preview, Status, parse_binary, parse_message

logger = logging.getLogger(__name__)

FEATURE_FLAGS = json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}})


@dataclass(frozen=True, slots=True)
class Connected:
    sid: str


@dataclass(frozen=True, slots=True)
class Disconnected:
    reason: str
    deliberate: bool = False  # we closed it to connect again at once (see reconnect)


def websocket_url(base_url: str, client_id: str) -> str:
    scheme, rest = base_url.rstrip("/").split("://", 1)
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/ws?clientId={quote(client_id)}"


class ComfyConnection:
    def __init__(
        self,
        base_url: str,
        client_id: str,
        *,
        ping_interval: float = 10.0,
        ping_timeout: float = 10.0,
        open_timeout: float = 5.0,
        close_timeout: float = 2.0,
        backoff_initial: float = 0.25,
        backoff_max: float = 10.0,
    ) -> None:
        self.url = websocket_url(base_url, client_id)
        self.client_id = client_id
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.open_timeout = open_timeout
        self.close_timeout = close_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._socket: ClientConnection | None = None
        self._closed = asyncio.Event()
        self._reconnect_reason: str | None = None
        self.connects = 0  # sockets opened so far: tests and logs tell reconnects by it

    async def close(self) -> None:
        """End events(): closes the socket, or cuts short a wait before reconnecting."""
        self._closed.set()
        if self._socket is not None:
            await self._socket.close()

    async def reconnect(self, reason: str) -> None:
        """Drop the socket and open a new one at once: for a socket that is open, and answers
        pings, but that ComfyUI no longer sends anything to (it forgot it: a half-open socket).
        A new socket with our client id is registered afresh."""
        socket = self._socket
        if socket is None or self._closed.is_set():
            return
        self._reconnect_reason = reason
        await socket.close()

    async def _backoff(self, delay: float) -> None:
        # Jitter keeps many bridges from reconnecting in lockstep after ComfyUI restarts.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closed.wait(), delay * random.uniform(0.8, 1.2))

    async def events(self) -> AsyncIterator[Event | Connected | Disconnected]:
        """Events until close(); reconnects with backoff whenever the socket is lost.

        While ComfyUI is unreachable every failed attempt yields a Disconnected saying why.
        """
        delay = self.backoff_initial
        while not self._closed.is_set():
            try:
                socket = await connect(
                    self.url,
                    ping_interval=self.ping_interval,
                    ping_timeout=self.ping_timeout,
                    open_timeout=self.open_timeout,
                    close_timeout=self.close_timeout,
                    max_size=64 * 1024 * 1024,
                    # ComfyUI is on this machine or the LAN, and its biggest messages are
                    # previews, already JPEG or PNG: deflate would cost both sides CPU for nothing.
                    compression=None,
                )
            except (OSError, TimeoutError, websockets.InvalidHandshake, websockets.InvalidURI) as error:
                logger.info(
                    "ComfyUI websocket %s: cannot connect (%s); retrying in %.1fs", self.url, error, delay
                )
                yield Disconnected(f"cannot connect: {error}")
                await self._backoff(delay)
                delay = min(delay * 2, self.backoff_max)
                continue
            if self._closed.is_set():  # close() came while connecting
                await socket.close()
                return
            self._socket = socket
            self._reconnect_reason = None
            self.connects += 1
            try:
                async for item in self._session(socket):
                    delay = self.backoff_initial
                    yield item
                reason = "closed by ComfyUI"
            except (websockets.ConnectionClosed, OSError, ProtocolError) as error:
                # e.g. "sent 1011 (internal error) keepalive ping timeout; no close frame received"
                reason = f"connection lost: {error}"
            finally:
                # Close fully before reconnecting: ComfyUI gives a client id to its newest socket,
                # and a lingering old one would evict the new.
                with contextlib.suppress(Exception):
                    await socket.close()
                    await socket.wait_closed()
                self._socket = None
            if self._closed.is_set():
                return
            deliberate = self._reconnect_reason
            if deliberate is not None:
                self._reconnect_reason = None
                logger.warning("ComfyUI websocket %s: reconnecting: %s", self.url, deliberate)
                yield Disconnected(deliberate, deliberate=True)
                continue
            yield Disconnected(reason)
            await self._backoff(delay)
            delay = min(delay * 2, self.backoff_max)

    async def _session(self, socket: ClientConnection) -> AsyncIterator[Event | Connected]:
        await socket.send(FEATURE_FLAGS)
        confirmed = False
        async for message in socket:
            try:
                event = parse_binary(message) if isinstance(message, bytes) else parse_message(message)
            except ProtocolError as error:  # one odd message is no reason to drop the socket
                logger.warning("ComfyUI websocket %s: %s", self.url, error)
                continue
            if event is None:
                continue
            if not confirmed and isinstance(event, Status) and event.sid is not None:
                if event.sid != self.client_id:
                    raise ProtocolError(
                        f"ComfyUI gave this socket the id {event.sid!r}, not {self.client_id!r}"
                    )
                confirmed = True
                yield Connected(event.sid)
                continue
            yield event


class PromptEventBuffer:
    """Holds events for prompts not registered yet; ComfyUI may report a prompt before the
    POST /prompt that queued it has answered. Bounded in prompts, in events per prompt, and in
    age; of the previews (the only big events) only the newest is kept."""

    def __init__(self, max_prompts: int = 64, max_events: int = 256, max_age: float = 60.0) -> None:
        self.max_prompts = max_prompts
        self.max_events = max_events
        self.max_age = max_age
        self._held: OrderedDict[str, tuple[float, list[Event]]] = OrderedDict()

    def hold(self, prompt_id: str, event: Event) -> None:
        now = time.monotonic()
        born, events = self._held.get(prompt_id, (now, []))
        if isinstance(event, Preview):
            events[:] = [e for e in events if not isinstance(e, Preview)]
        if len(events) < self.max_events:
            events.append(event)
        else:
            logger.debug("Event buffer for %s is full; dropping %s", prompt_id, type(event).__name__)
        self._held[prompt_id] = (born, events)
        self._drop_old(now)

    def release(self, prompt_id: str) -> list[Event]:
        """The events held for `prompt_id`, in arrival order, now that it is known."""
        self._drop_old(time.monotonic())
        return self._held.pop(prompt_id, (0.0, []))[1]

    def _drop_old(self, now: float) -> None:
        while self._held:
            prompt_id, (born, _) = next(iter(self._held.items()))
            if len(self._held) <= self.max_prompts and now - born <= self.max_age:
                break
            del self._held[prompt_id]
