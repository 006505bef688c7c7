"""Everything that speaks ComfyUI: its HTTP API, its websocket events, the bridge, the emulator.

The rest of the site sees only these typed values, never ComfyUI's JSON.
"""

from .client import ComfyClient, QueuedPrompt, QueueSnapshot, UploadedImage
from .connection import ComfyConnection, Connected, Disconnected, PromptEventBuffer
from .errors import AnswerLost, BackendUnreachable, ComfyError, NotFound, ProtocolError, WorkflowRejected
from .events import (
    Event,
    Executed,
    Executing,
    ExecutionCached,
    ExecutionError,
    ExecutionInterrupted,
    ExecutionStart,
    ExecutionSuccess,
    FeatureFlags,
    HistoryEntry,
    OutputFile,
    Preview,
    Progress,
    ProgressState,
    Status,
    parse_binary,
    parse_history,
    parse_message,
)

__all__ = [
    "AnswerLost",
    "BackendUnreachable",
    "ComfyClient",
    "ComfyConnection",
    "ComfyError",
    "Connected",
    "Disconnected",
    "Event",
    "Executed",
    "Executing",
    "ExecutionCached",
    "ExecutionError",
    "ExecutionInterrupted",
    "ExecutionStart",
    "ExecutionSuccess",
    "FeatureFlags",
    "HistoryEntry",
    "NotFound",
    "OutputFile",
    "Preview",
    "Progress",
    "ProgressState",
    "PromptEventBuffer",
    "ProtocolError",
    "QueueSnapshot",
    "QueuedPrompt",
    "Status",
    "UploadedImage",
    "WorkflowRejected",
    "parse_binary",
    "parse_history",
    "parse_message",
]
