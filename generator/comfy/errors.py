"""The few ways talking to ComfyUI fails, each with a message a person can read."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any


class ComfyError(Exception):
    """Anything that went wrong talking to ComfyUI."""


class BackendUnreachable(ComfyError):
    """ComfyUI did not answer: not running, unreachable, too slow, or failing (5xx)."""


class AnswerLost(BackendUnreachable):
    """The request went out but its answer never came (too slow, the connection cut, a proxy's
    5xx): ComfyUI may well have done what was asked. A POST /prompt that ends so may have queued
    the job: ask /queue and /history before sending it again."""


class NotFound(ComfyError):
    """ComfyUI does not have what was asked for (an output file, a node class)."""


class ProtocolError(ComfyError):
    """ComfyUI answered something we cannot understand."""


def _title(workflow: Mapping[str, Any] | None, node_id: str, class_type: str = "") -> str:
    """Name a node as "Load Checkpoint (node 4)": by the title the workflow gives it, else its class."""
    node = (workflow or {}).get(node_id) or {}
    title = (node.get("_meta") or {}).get("title") or class_type or node.get("class_type")
    return f"{title} (node {node_id})" if title else f"Node {node_id}"


TYPE_WORDS = {"INT": "a whole number", "FLOAT": "a number", "STRING": "text", "BOOLEAN": "true or false"}


def _input_error(error: Mapping[str, Any]) -> str:
    """One node input's validation error in words."""
    kind = error.get("type", "")
    extra = error.get("extra_info") or {}
    name = extra.get("input_name") or error.get("details") or "an input"
    received = extra.get("received_value")
    config = extra.get("input_config") or [None, {}]
    options = config[1] if len(config) > 1 and isinstance(config[1], Mapping) else {}
    if kind == "required_input_missing":
        return f"the required input “{name}” is missing"
    if kind == "value_not_in_list":
        if name in {"ckpt_name", "lora_name", "vae_name", "model_name", "unet_name", "clip_name"}:
            return f"the model {received!r} is not installed on this ComfyUI"
        return f"“{name}” cannot be {received!r}: it is not one of the choices"
    if kind == "value_smaller_than_min":
        return f"“{name}” must be at least {options.get('min', _number_in(error, 'min'))} (got {received})"
    if kind == "value_bigger_than_max":
        return f"“{name}” must be at most {options.get('max', _number_in(error, 'max'))} (got {received})"
    if kind == "invalid_input_type":
        expected = TYPE_WORDS.get(config[0], "another kind of value") if config else "another kind of value"
        return f"“{name}” must be {expected} (got {received!r})"
    if kind == "return_type_mismatch":
        received_type = extra.get("received_type", "the wrong type")
        return f"“{name}” is connected to a node that gives {received_type}, not {config[0]}"
    if kind == "exception_during_inner_validation":
        # ComfyUI follows the link while validating: a KeyError names a node that is not in the
        # workflow, an IndexError an output slot the linked node does not have.
        cause = str(extra.get("exception_message", ""))
        if extra.get("exception_type") == "KeyError":
            missing = cause.strip("'")
            return f"“{name}” is connected to node {missing}, which is not in the workflow"
        if extra.get("exception_type") == "IndexError":
            return f"“{name}” is connected to an output its node does not have"
        return f"“{name}” is connected to something ComfyUI cannot use ({cause})"
    message, details = error.get("message") or "invalid input", error.get("details")
    return f"{message} ({details})" if details else str(message)


def _number_in(error: Mapping[str, Any], word: str) -> str:
    found = re.search(rf"{word} of (\S+)", str(error.get("message", "")))
    return found.group(1) if found else "?"


class WorkflowRejected(ComfyError):
    """ComfyUI refused a workflow (POST /prompt answered 400): nothing was queued."""

    def __init__(self, error: Mapping[str, Any], node_errors: Mapping[str, Any]) -> None:
        self.error = dict(error)
        self.node_errors = dict(node_errors)
        super().__init__("; ".join(self.describe()))

    def describe(self, workflow: Mapping[str, Any] | None = None) -> list[str]:
        """Each problem in words; pass the workflow sent to name nodes by their titles."""
        problems = []
        for node_id, entry in self.node_errors.items():
            where = _title(workflow, str(node_id), entry.get("class_type", ""))
            for error in entry.get("errors") or ():
                problems.append(f"{where}: {_input_error(error)}")
        if problems:
            return problems
        kind = self.error.get("type")
        if kind == "invalid_prompt":
            return [self._invalid_prompt(workflow)]
        if kind == "prompt_no_outputs":
            return ["The workflow has no output node (such as Save Image), so it would produce nothing."]
        if kind == "no_prompt":
            return ["No workflow was sent."]
        message = self.error.get("message") or "ComfyUI refused the workflow"
        details = self.error.get("details")
        return [f"{message} ({details})" if details else message]

    def _invalid_prompt(self, workflow: Mapping[str, Any] | None) -> str:
        """A node ComfyUI cannot even instantiate: its type is unknown or missing."""
        message = str(self.error.get("message", ""))
        found = re.search(r"#(\w+)", str(self.error.get("details", "")))
        if found is None:
            return message or "ComfyUI refused the workflow"
        where = _title(workflow, found.group(1))
        unknown = re.search(r"node (\S+) does not exist", message)
        if unknown:
            return f"{where}: this ComfyUI has no node type “{unknown.group(1)}” (is a custom node missing?)"
        if "class_type" in message:
            return f"{where}: the node does not say what type it is (no class_type)"
        return f"{where}: {message}"
