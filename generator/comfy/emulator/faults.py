"""Fault switches for reliability tests: what can go wrong between the site and ComfyUI.

Set them on a running emulator at any time (`emu.faults.view_delay = 2.0`); `reset()` turns
everything off again. The two that need the event loop are coroutines:
`await emu.faults.refuse_connections(3.0)` and `await emu.faults.restart()`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass
class Faults:
    # Websockets: close a socket once it has been sent this many messages (counted from its
    # connection)...
    drop_ws_after: int | None = None
    # ...the first socket that reaches the limit, then the switch turns itself off; with False,
    # every socket, reconnected ones included, until drop_ws_after is set back to None.
    drop_once: bool = True
    # ...cut the TCP connection without a close frame (the client sees 1006), as a crash or a
    # broken network would, instead of a clean close.
    drop_abruptly: bool = False

    # HTTP: these paths ("/prompt", "/view", "/history/<id>"; with or without "/api") answer
    # 500 with ComfyUI's text body. "*" matches every path but /ws.
    http_500: set[str] = field(default_factory=set)
    # Seconds /view waits before answering (a slow disk, a big file).
    view_delay: float = 0.0
    # Seconds POST /prompt waits after queueing before it answers, so the prompt's first
    # websocket messages reach the client before the answer (a race the recordings show); longer
    # than the client waits, a job ComfyUI runs although its POST timed out.
    prompt_answer_delay: float = 0.0
    # Seconds POST /prompt takes before the prompt is queued at all (a slow validation: custom
    # nodes checking files, a busy server); with prompt_answer_delay, the answer comes later still.
    prompt_queue_delay: float = 0.0

    # Execution: a node id ("8") or class_type ("VAEDecode") that raises when it runs; the
    # prompt ends with execution_error carrying `fail_type` and `fail_message`.
    fail_node: str | None = None
    fail_type: str = "RuntimeError"
    fail_message: str = "Emulated failure (fault switch)"
    # For a sampler: fail at this step instead of before the first one.
    fail_at_step: int | None = None

    _refuse: Callable[[float], Awaitable[None]] | None = field(default=None, repr=False)
    _restart: Callable[[float], Awaitable[None]] | None = field(default=None, repr=False)
    _forget: Callable[[], None] | None = field(default=None, repr=False)

    def reset(self) -> None:
        """Every switch off."""
        self.drop_ws_after = None
        self.drop_once = True
        self.drop_abruptly = False
        self.http_500 = set()
        self.view_delay = 0.0
        self.prompt_answer_delay = 0.0
        self.prompt_queue_delay = 0.0
        self.fail_node = None
        self.fail_type = "RuntimeError"
        self.fail_message = "Emulated failure (fault switch)"
        self.fail_at_step = None

    def answers_500(self, path: str) -> bool:
        bare = path.removeprefix("/api") or "/"
        if bare == "/ws":
            return False
        return "*" in self.http_500 or path in self.http_500 or bare in self.http_500

    def fails(self, node_id: str, class_type: str) -> bool:
        return self.fail_node is not None and self.fail_node in (node_id, class_type)

    async def refuse_connections(self, seconds: float) -> None:
        """Close the listening socket (and every open connection) for `seconds`, then listen
        again on the same port. Queue and history are kept: a network outage, not a crash."""
        assert self._refuse is not None, "the emulator is not running"
        await self._refuse(seconds)

    def forget_sockets(self) -> None:
        """ComfyUI forgets every websocket connected now: each stays open and answers pings, but
        nothing more is sent to it, not even the status broadcasts (a half-open socket: as after
        a second socket under the same client id came and went)."""
        assert self._forget is not None, "the emulator is not running"
        self._forget()

    async def restart(self, down_seconds: float = 0.0) -> None:
        """As if ComfyUI restarted: queue, history and caches lost, every socket dropped,
        unreachable for `down_seconds`. Uploaded and output files stay (they are on disk)."""
        assert self._restart is not None, "the emulator is not running"
        await self._restart(down_seconds)
