"""Running prompts, one at a time, with the recorded message sequence (ComfyUI's prompt_worker
and PromptExecutor.execute_async).

For each prompt: execution_start, execution_cached; per node progress_state + executing (only
to a client), sampler steps as progress_state, [type-4 preview], progress, [type-1 preview];
executed for output nodes; then execution_success, or execution_error / execution_interrupted;
then the queue's status and, to a client, executing null.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from . import rendering, tracebacks
from .faults import Faults
from .folders import Folders
from .graph import CacheEntry, ExecutionList, OutputCache, is_link, signatures
from .hub import Hub
from .nodes import NODES, EmulatedError, Interrupted, Latent, NodeContext, preview_source, temp_prefix
from .prompt_queue import PromptQueue, QueueItem
from .validation import full_type_name, input_info

logger = logging.getLogger(__name__)


@dataclass
class Settings:
    step_seconds: float = 0.0  # sleep per sampler step
    preview: bool = True  # send preview frames (ComfyUI's --preview-method other than none)


@dataclass
class Run:
    """One prompt's execution state (what execute_async keeps in locals)."""

    item: QueueItem
    messages: list[list[Any]] = field(default_factory=list)  # history status.messages
    progress: dict[str, dict[str, Any]] = field(default_factory=dict)  # the progress registry
    ui_outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    executed: list[str] = field(default_factory=list)
    results: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    current_inputs: dict[str, Any] = field(default_factory=dict)  # of the node running
    success: bool = True

    @property
    def prompt_id(self) -> str:
        return self.item.prompt_id

    @property
    def prompt(self) -> dict[str, Any]:
        return self.item.prompt


class Executor:
    def __init__(
        self,
        hub: Hub,
        queue: PromptQueue,
        folders: Folders,
        object_info: dict[str, Any],
        faults: Faults,
        settings: Settings,
    ) -> None:
        self.hub = hub
        self.queue = queue
        self.folders = folders
        self.object_info = object_info
        self.faults = faults
        self.settings = settings
        self.cache = OutputCache()
        self.interrupted = False
        self.temp_prefix = temp_prefix()

    def interrupt(self) -> None:
        """nodes.interrupt_processing(): the running prompt stops at its next check."""
        self.interrupted = True

    async def work(self) -> None:
        """prompt_worker: forever take the next prompt, run it, file it in the history."""
        while True:
            item = await self.queue.get()
            run = Run(item)
            try:
                await self.execute(run)
            except Exception:  # an emulator bug must not kill the worker
                logger.exception("emulator: prompt %s crashed", item.prompt_id)
                run.success = False
            self.queue.task_done(item, self._history_result(run), self._status(run))
            if self.hub.client_id is not None:
                self.hub.send_sync(
                    "executing", {"node": None, "prompt_id": item.prompt_id}, self.hub.client_id
                )

    # -- one prompt ---------------------------------------------------------------------------

    async def execute(self, run: Run) -> None:
        self.interrupted = False
        self.hub.client_id = run.item.client_id
        self._add_message(run, "execution_start", {"prompt_id": run.prompt_id}, broadcast=False)
        self.cache.set_prompt(signatures(run.prompt, lambda node_id: self._is_changed(run.prompt, node_id)))
        cached = [node_id for node_id in run.prompt if self.cache.get(node_id) is not None]
        self._add_message(
            run, "execution_cached", {"nodes": cached, "prompt_id": run.prompt_id}, broadcast=False
        )
        order = ExecutionList(
            run.prompt,
            lambda node_id: self.cache.get(node_id) is not None,
            lambda node_id: self._is_output(run, node_id),
        )
        for output in run.item.outputs:
            order.add_node(output)
        while not order.is_empty():
            node_id = order.pick()
            if node_id is None:  # validation refuses cycles, so this is defensive
                self._fail(run, next(iter(order.pending)), _cycle_details())
                break
            try:
                await self._execute_node(run, node_id)
            except Interrupted:
                self._interrupted(run, node_id)
                break
            except Exception as error:
                self._fail(run, node_id, self._error_details(run, node_id, error))
                break
            order.complete(node_id)
        else:
            self._add_message(run, "execution_success", {"prompt_id": run.prompt_id}, broadcast=False)
        self.hub.last_node_id = None

    async def _execute_node(self, run: Run, node_id: str) -> None:
        node = run.prompt[node_id]
        class_type = node["class_type"]
        cached = self.cache.get(node_id)
        if cached is not None:  # an output node whose result is reused
            if self.hub.client_id is not None:
                output = (cached.ui or {}).get("output")
                self._send_to_client("executed", _executed(run, node_id, output))
            if cached.ui is not None:
                run.ui_outputs[node_id] = cached.ui
            self._finish_progress(run, node_id)
            return
        self._start_progress(run, node_id)
        kwargs = self._inputs(run, node_id)
        if self.hub.client_id is not None:
            self.hub.last_node_id = node_id
            self._send_to_client(
                "executing", {"node": node_id, "display_node": node_id, "prompt_id": run.prompt_id}
            )
        await asyncio.sleep(0)  # let the loop breathe between nodes even at step_seconds=0
        if self.interrupted:  # before_node_execution()
            raise Interrupted
        if self.faults.fails(node_id, class_type) and self.faults.fail_at_step is None:
            raise EmulatedError(self.faults.fail_type, self.faults.fail_message)
        function = NODES.get(class_type)
        if function is None:
            raise EmulatedError(
                "NotImplementedError", f"The ComfySite emulator cannot run {class_type} nodes."
            )
        context = NodeContext(
            node_id=node_id,
            class_type=class_type,
            prompt=run.prompt,
            extra_pnginfo=run.item.extra_data.get("extra_pnginfo"),
            folders=self.folders,
            step=lambda value, total, latent: self._step(run, node_id, value, total, latent),
            temp_prefix=self.temp_prefix,
        )
        outputs, ui = await function(context, **kwargs)
        run.results[node_id] = outputs
        entry = CacheEntry(outputs, None)
        if ui:
            entry.ui = {"meta": _meta(node_id), "output": ui}
            run.ui_outputs[node_id] = entry.ui
            if self.hub.client_id is not None:
                self._send_to_client("executed", _executed(run, node_id, ui))
        self.cache.set(node_id, entry)
        self._finish_progress(run, node_id)
        run.executed.append(node_id)

    def _inputs(self, run: Run, node_id: str) -> dict[str, Any]:
        """get_input_data: declared inputs only, links resolved to the linked node's output."""
        node = run.prompt[node_id]
        spec = self.object_info[node["class_type"]]["input"]
        values: dict[str, Any] = {}
        for name, value in node["inputs"].items():
            _, category, _ = input_info(spec, name)
            if is_link(value):
                linked = run.results.get(value[0])
                if linked is None:
                    entry = self.cache.get(value[0])
                    linked = entry.outputs if entry is not None else None
                values[name] = linked[int(value[1])] if linked is not None else None
            elif category is not None:
                values[name] = value
        run.current_inputs = dict(values)
        return values

    async def _step(self, run: Run, node_id: str, value: int, total: int, latent: Latent) -> None:
        """A sampler step done: ComfyUI's progress hook (progress_state, previews, progress)."""
        await asyncio.sleep(self.settings.step_seconds)
        if self.interrupted:
            raise Interrupted
        if (
            self.faults.fails(node_id, run.prompt[node_id]["class_type"])
            and self.faults.fail_at_step == value
        ):
            raise EmulatedError(self.faults.fail_type, self.faults.fail_message)
        run.progress[node_id] = _node_state(run, node_id, value, total, "running")
        self._send_progress_state(run)
        image = (
            await asyncio.to_thread(self._preview_jpeg, latent, value / total)
            if self.settings.preview
            else None
        )
        client = self.hub.client_id
        metadata = self.hub.supports_preview_metadata(client)
        if image is not None and metadata:
            frame = rendering.preview_frame_with_metadata(image, _preview_metadata(run, node_id))
            self.hub.send_sync("preview", frame, client)
        self.hub.send_sync(
            "progress", {"value": value, "max": total, "prompt_id": run.prompt_id, "node": node_id}, client
        )
        if image is not None and not metadata:
            self.hub.send_sync("preview", rendering.preview_frame(image), client)

    @staticmethod
    def _preview_jpeg(latent: Latent, progress: float) -> bytes:
        if latent.preview is None:
            latent.preview = preview_source(latent)
        return rendering.jpeg(rendering.preview(latent.preview, latent.seed, progress))

    # -- progress -----------------------------------------------------------------------------

    def _start_progress(self, run: Run, node_id: str) -> None:
        run.progress[node_id] = _node_state(run, node_id, 0.0, 1.0, "running")
        self._send_progress_state(run)

    def _finish_progress(self, run: Run, node_id: str) -> None:
        entry = run.progress.get(node_id)
        if entry is None:  # a cached node never started: ComfyUI's default entry is 0 of 1
            entry = run.progress[node_id] = _node_state(run, node_id, 0, 1, "pending")
        entry["state"] = "finished"
        entry["value"] = entry["max"]
        self._send_progress_state(run)

    def _send_progress_state(self, run: Run) -> None:
        nodes = {n: dict(state) for n, state in run.progress.items() if state["state"] != "pending"}
        self.hub.send_sync("progress_state", {"prompt_id": run.prompt_id, "nodes": nodes}, self.hub.client_id)

    # -- messages -----------------------------------------------------------------------------

    def _send_to_client(self, event: str, data: dict[str, Any]) -> None:
        self.hub.send_sync(event, data, self.hub.client_id)

    def _add_message(self, run: Run, event: str, data: dict[str, Any], broadcast: bool) -> None:
        """PromptExecutor.add_message: kept for the history; sent to the client, or to all
        when `broadcast` and there is no client."""
        data = {**data, "timestamp": int(time.time() * 1000)}
        run.messages.append([event, data])
        if self.hub.client_id is not None or broadcast:
            self.hub.send_sync(event, data, self.hub.client_id)

    def _interrupted(self, run: Run, node_id: str) -> None:
        run.success = False
        data = {
            "prompt_id": run.prompt_id,
            "node_id": node_id,
            "node_type": run.prompt[node_id]["class_type"],
            "executed": list(run.executed),
        }
        self._add_message(run, "execution_interrupted", data, broadcast=True)

    def _error_details(self, run: Run, node_id: str, error: Exception) -> dict[str, Any]:
        """What execute() reports of a node that raised: "{message}\\n{tips}", ComfyUI's type
        name, a ComfyUI traceback, the node's inputs as it saw them."""
        class_type = run.prompt[node_id]["class_type"]
        type_name = error.type_name if isinstance(error, EmulatedError) else full_type_name(type(error))
        tips = error.tips if isinstance(error, EmulatedError) else ""
        return {
            "exception_message": f"{error}\n{tips}",
            "exception_type": type_name,
            "traceback": _traceback(class_type, type_name, str(error)),
            "current_inputs": self._formatted_inputs(run, node_id),
        }

    def _fail(self, run: Run, node_id: str, details: dict[str, Any]) -> None:
        run.success = False
        data = {
            "prompt_id": run.prompt_id,
            "node_id": node_id,
            "node_type": run.prompt[node_id]["class_type"],
            "executed": list(run.executed),
            **details,
            "current_outputs": list(run.prompt),  # every node id the cache knows: the prompt's
        }
        self._add_message(run, "execution_error", data, broadcast=False)

    def _formatted_inputs(self, run: Run, node_id: str) -> dict[str, Any]:
        """current_inputs: each input as a one-element list, non-scalars as str(), plus the
        hidden inputs (prompt, extra_pnginfo) the node declares."""
        values = dict(run.current_inputs)
        hidden = self.object_info[run.prompt[node_id]["class_type"]]["input"].get("hidden", {})
        for name, kind in hidden.items():
            if kind == "PROMPT":
                values[name] = run.prompt
            elif kind == "EXTRA_PNGINFO":
                values[name] = run.item.extra_data.get("extra_pnginfo")
            elif kind == "UNIQUE_ID":
                values[name] = node_id
        return {name: [_format_value(value)] for name, value in values.items()}

    # -- history ------------------------------------------------------------------------------

    @staticmethod
    def _history_result(run: Run) -> dict[str, Any]:
        return {
            "outputs": {n: ui["output"] for n, ui in run.ui_outputs.items()},
            "meta": {n: ui["meta"] for n, ui in run.ui_outputs.items()},
        }

    @staticmethod
    def _status(run: Run) -> dict[str, Any]:
        return {
            "status_str": "success" if run.success else "error",
            "completed": run.success,
            "messages": copy.deepcopy(run.messages),
        }

    def _is_output(self, run: Run, node_id: str) -> bool:
        class_type = run.prompt[node_id]["class_type"]
        return self.object_info.get(class_type, {}).get("output_node") is True

    def _is_changed(self, prompt: dict[str, Any], node_id: str) -> str:
        """IS_CHANGED: LoadImage's file hash, so a replaced input is not served from cache."""
        node = prompt[node_id]
        image = node.get("inputs", {}).get("image") if isinstance(node, dict) else None
        if node.get("class_type") == "LoadImage" and isinstance(image, str):
            try:
                return self.folders.file_hash(image)
            except OSError:
                return "missing"
        return ""


def _node_state(run: Run, node_id: str, value: float, maximum: float, state: str) -> dict[str, Any]:
    return {
        "value": value,
        "max": maximum,
        "state": state,
        "node_id": node_id,
        "prompt_id": run.prompt_id,
        "display_node_id": node_id,
        "parent_node_id": None,
        "real_node_id": node_id,
    }


def _executed(run: Run, node_id: str, output: Any) -> dict[str, Any]:
    return {"node": node_id, "display_node": node_id, "output": output, "prompt_id": run.prompt_id}


def _meta(node_id: str) -> dict[str, Any]:
    return {"node_id": node_id, "display_node": node_id, "parent_node": None, "real_node_id": node_id}


def _preview_metadata(run: Run, node_id: str) -> dict[str, Any]:
    return {
        "node_id": node_id,
        "prompt_id": run.prompt_id,
        "display_node_id": node_id,
        "parent_node_id": None,
        "real_node_id": node_id,
    }


def _format_value(value: Any) -> Any:
    """execution.format_value: JSON scalars as they are, anything else as str()."""
    if value is None or isinstance(value, int | float | bool | str):
        return value
    return str(value)


def _traceback(class_type: str, type_name: str, message: str) -> list[str]:
    """The recorded traceback for the recorded failures, a plausible one otherwise."""
    if class_type == "SaveImage" and "outside the output folder" in message:
        return tracebacks.EXECUTION + tracebacks.SAVE_OUTSIDE_OUTPUT
    if class_type == "LoadImage" and type_name == "PIL.UnidentifiedImageError":
        return tracebacks.EXECUTION + tracebacks.LOAD_IMAGE_UNIDENTIFIED
    return tracebacks.node_failure(class_type, type_name)


def _cycle_details() -> dict[str, Any]:
    return {
        "exception_message": "Dependency cycle detected",
        "exception_type": "graph.DependencyCycleError",
        "traceback": [],
        "current_inputs": [],
    }
