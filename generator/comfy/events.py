"""ComfyUI's websocket messages and /history answers as typed values.

Built from recordings of ComfyUI 0.3.64 (tests/recordings). Text messages are
`{"type": T, "data": D}`; binary frames start with a big-endian u32 event type. Message and
frame types we do not know are ignored (ComfyUI keeps adding them: parse_* return None and log
at debug level). What cannot be ComfyUI talking raises ProtocolError: text that is not JSON, a
message without a type, a known type whose data lacks what the recordings always carry, a binary
frame shorter than its header. The connection logs and skips such messages rather than dropping
the socket.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from .errors import ProtocolError

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OutputFile:
    """A file an output node produced, as /view names it."""

    filename: str
    subfolder: str
    type: str  # "output", "temp" or "input"
    kind: str = "images"  # the output key: images, gifs, videos, ...

    @property
    def is_kept(self) -> bool:
        """Temp files (PreviewImage) vanish with the next run: only outputs are worth keeping."""
        return self.type == "output"


@dataclass(frozen=True, slots=True)
class Status:
    queue_remaining: int
    sid: str | None = None  # only on the first status after connecting


@dataclass(frozen=True, slots=True)
class FeatureFlags:
    flags: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ExecutionStart:
    prompt_id: str
    timestamp: int | None = None


@dataclass(frozen=True, slots=True)
class ExecutionCached:
    prompt_id: str
    nodes: tuple[str, ...]
    timestamp: int | None = None


@dataclass(frozen=True, slots=True)
class Executing:
    prompt_id: str | None
    node: str | None
    display_node: str | None = None

    @property
    def is_end(self) -> bool:
        """`node: null` ends every run: after success, error and interrupt alike."""
        return self.node is None


@dataclass(frozen=True, slots=True)
class Progress:
    prompt_id: str | None
    node: str | None
    value: int
    max: int


@dataclass(frozen=True, slots=True)
class NodeProgress:
    node_id: str
    value: float
    max: float
    state: str  # "running" or "finished"
    display_node_id: str | None = None
    parent_node_id: str | None = None  # set inside node groups / subgraphs
    real_node_id: str | None = None


@dataclass(frozen=True, slots=True)
class ProgressState:
    prompt_id: str
    nodes: Mapping[str, NodeProgress]


def _output_files(output: Mapping[str, Any]) -> tuple[OutputFile, ...]:
    files = []
    for kind, entries in output.items():
        if not isinstance(entries, list):
            continue  # e.g. "animated": [true] sits beside "images"
        for entry in entries:
            if isinstance(entry, Mapping) and "filename" in entry:
                files.append(
                    OutputFile(
                        filename=str(entry["filename"]),
                        subfolder=str(entry.get("subfolder", "")),
                        type=str(entry.get("type", "output")),
                        kind=kind,
                    )
                )
    return tuple(files)


@dataclass(frozen=True, slots=True)
class Executed:
    prompt_id: str
    node: str
    display_node: str | None
    output: Mapping[str, Any]

    @property
    def files(self) -> tuple[OutputFile, ...]:
        return _output_files(self.output)


@dataclass(frozen=True, slots=True)
class ExecutionSuccess:
    prompt_id: str
    timestamp: int | None = None


@dataclass(frozen=True, slots=True)
class ExecutionError:
    prompt_id: str
    node_id: str
    node_type: str
    exception_message: str
    exception_type: str
    traceback: tuple[str, ...] = ()
    executed: tuple[str, ...] = ()

    def describe(self, node_title: str | None = None) -> str:
        """One sentence a user can read: which node failed and why."""
        message = self.exception_message.strip().removeprefix("**** ERROR:").strip()
        message = message.splitlines()[0] if message else self.exception_type
        where = (
            f"{node_title} (node {self.node_id})" if node_title else f"Node {self.node_id} ({self.node_type})"
        )
        return f"{where} failed: {message}"


@dataclass(frozen=True, slots=True)
class ExecutionInterrupted:
    prompt_id: str
    node_id: str | None
    node_type: str | None
    executed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Preview:
    """A live preview frame. Type-1 frames do not say whose they are: prompt_id is None."""

    image: bytes = field(repr=False)
    mime_type: str
    prompt_id: str | None = None
    node_id: str | None = None


Event: TypeAlias = (
    Status
    | FeatureFlags
    | ExecutionStart
    | ExecutionCached
    | Executing
    | Progress
    | ProgressState
    | Executed
    | ExecutionSuccess
    | ExecutionError
    | ExecutionInterrupted
    | Preview
)


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _node_progress(node_id: str, data: Mapping[str, Any]) -> NodeProgress:
    return NodeProgress(
        node_id=str(data.get("node_id", node_id)),
        value=data.get("value", 0),
        max=data.get("max", 0),
        state=str(data.get("state", "")),
        display_node_id=_str_or_none(data.get("display_node_id")),
        parent_node_id=_str_or_none(data.get("parent_node_id")),
        real_node_id=_str_or_none(data.get("real_node_id")),
    )


def _execution_error(d: Mapping[str, Any]) -> ExecutionError:
    return ExecutionError(
        prompt_id=d["prompt_id"],
        node_id=str(d["node_id"]),
        node_type=str(d.get("node_type", "")),
        exception_message=str(d.get("exception_message", "")),
        exception_type=str(d.get("exception_type", "")),
        traceback=tuple(str(line) for line in d.get("traceback") or ()),
        executed=tuple(str(n) for n in d.get("executed") or ()),
    )


def _execution_interrupted(d: Mapping[str, Any]) -> ExecutionInterrupted:
    return ExecutionInterrupted(
        prompt_id=d["prompt_id"],
        node_id=_str_or_none(d.get("node_id")),
        node_type=_str_or_none(d.get("node_type")),
        executed=tuple(str(n) for n in d.get("executed") or ()),
    )


_TEXT_PARSERS: dict[str, Callable[[Mapping[str, Any]], Event]] = {
    "status": lambda d: Status(
        queue_remaining=int(d["status"]["exec_info"]["queue_remaining"]), sid=d.get("sid")
    ),
    "feature_flags": lambda d: FeatureFlags(dict(d)),
    "execution_start": lambda d: ExecutionStart(d["prompt_id"], d.get("timestamp")),
    "execution_cached": lambda d: ExecutionCached(
        d["prompt_id"], tuple(str(n) for n in d["nodes"]), d.get("timestamp")
    ),
    "executing": lambda d: Executing(
        _str_or_none(d.get("prompt_id")), _str_or_none(d["node"]), _str_or_none(d.get("display_node"))
    ),
    "progress": lambda d: Progress(
        _str_or_none(d.get("prompt_id")), _str_or_none(d.get("node")), int(d["value"]), int(d["max"])
    ),
    "progress_state": lambda d: ProgressState(
        d["prompt_id"], {str(k): _node_progress(str(k), v) for k, v in d["nodes"].items()}
    ),
    "executed": lambda d: Executed(
        d["prompt_id"], str(d["node"]), _str_or_none(d.get("display_node")), d.get("output") or {}
    ),
    "execution_success": lambda d: ExecutionSuccess(d["prompt_id"], d.get("timestamp")),
    "execution_error": lambda d: _execution_error(d),
    "execution_interrupted": lambda d: _execution_interrupted(d),
}


def parse_message(text: str | bytes) -> Event | None:
    """A websocket text message as an event; None for message types we do not know."""
    try:
        message = json.loads(text)
    except (TypeError, ValueError) as error:
        raise ProtocolError(f"ComfyUI sent a websocket message that is not JSON: {error}") from error
    if not isinstance(message, Mapping) or not isinstance(message.get("type"), str):
        raise ProtocolError("ComfyUI sent a websocket message without a type.")
    parser = _TEXT_PARSERS.get(message["type"])
    if parser is None:
        logger.debug("Ignoring ComfyUI message type %r", message["type"])
        return None
    data = message.get("data")
    try:
        return parser(data if isinstance(data, Mapping) else {})
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ProtocolError(f"ComfyUI's {message['type']!r} message lacks {error}.") from error


PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4
IMAGE_FORMATS = {1: "image/jpeg", 2: "image/png"}


def parse_binary(frame: bytes) -> Event | None:
    """A binary websocket frame (a live preview) as an event; None for other frame types."""
    if len(frame) < 8:
        raise ProtocolError(f"ComfyUI sent a binary frame of {len(frame)} bytes, too short for its header.")
    event_type, second = struct.unpack(">II", frame[:8])
    if event_type == PREVIEW_IMAGE:
        return Preview(image=frame[8:], mime_type=IMAGE_FORMATS.get(second, "image/jpeg"))
    if event_type == PREVIEW_IMAGE_WITH_METADATA:
        end = 8 + second
        if end > len(frame):
            raise ProtocolError(f"ComfyUI's preview frame announces {second} bytes of metadata it lacks.")
        try:
            metadata = json.loads(frame[8:end])
        except ValueError as error:
            raise ProtocolError(f"ComfyUI's preview metadata is not JSON: {error}") from error
        if not isinstance(metadata, Mapping):
            raise ProtocolError("ComfyUI's preview metadata is not a JSON object.")
        return Preview(
            image=frame[end:],
            mime_type=str(metadata.get("image_type", "image/jpeg")),
            prompt_id=metadata.get("prompt_id"),
            node_id=_str_or_none(metadata.get("node_id")),
        )
    logger.debug("Ignoring ComfyUI binary frame type %d", event_type)
    return None


def preview_frame(
    image: bytes, *, mime_type: str = "image/jpeg", metadata: Mapping[str, Any] | None = None
) -> bytes:
    """The binary frame ComfyUI sends for a preview (the emulator sends these)."""
    if metadata is None:
        image_format = 2 if mime_type == "image/png" else 1
        return struct.pack(">II", PREVIEW_IMAGE, image_format) + image
    encoded = json.dumps({**metadata, "image_type": mime_type}).encode()
    return struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(encoded)) + encoded + image


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """What /history/{prompt_id} says of a finished prompt."""

    prompt_id: str
    status_str: str  # "success" or "error"
    completed: bool
    outputs: Mapping[str, tuple[OutputFile, ...]]  # by node id, each node's files in ComfyUI's order
    failure: ExecutionError | ExecutionInterrupted | None = None

    @property
    def succeeded(self) -> bool:
        return self.status_str == "success" and self.completed

    def outputs_by_node(self) -> Mapping[str, tuple[OutputFile, ...]]:
        """The files by node id; a file's index is its position in its node's tuple."""
        return self.outputs


def parse_history(prompt_id: str, answer: Any) -> HistoryEntry | None:
    """The entry for `prompt_id` in a /history answer; None when ComfyUI does not know it."""
    if not isinstance(answer, Mapping):
        raise ProtocolError("ComfyUI's /history answer is not a JSON object.")
    entry = answer.get(prompt_id)
    if not entry:
        return None
    if not isinstance(entry, Mapping):
        raise ProtocolError(f"ComfyUI's history of {prompt_id} is not a JSON object.")
    try:
        status = entry.get("status") or {}
        outputs = {str(node): _output_files(output) for node, output in (entry.get("outputs") or {}).items()}
        failure: ExecutionError | ExecutionInterrupted | None = None
        for name, data in status.get("messages") or ():
            if name == "execution_error":
                failure = _execution_error(data)
            elif name == "execution_interrupted":
                failure = _execution_interrupted(data)
        return HistoryEntry(
            prompt_id=prompt_id,
            status_str=str(status.get("status_str", "")),
            completed=bool(status.get("completed", False)),
            outputs=outputs,
            failure=failure,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ProtocolError(f"ComfyUI's history of {prompt_id} is malformed: {error}") from error
