"""Workflow validation as ComfyUI 0.3.64 does it, with its error bodies (see http_errors.json)."""

from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping
from typing import Any

Errors = list[dict[str, Any]]


class Rejection(Exception):
    """A POST /prompt that ComfyUI answers with 400."""

    def __init__(self, error: dict[str, Any], node_errors: dict[str, Any] | None = None) -> None:
        super().__init__(error["message"])
        self.body = {"error": error, "node_errors": node_errors or {}}


def _error(kind: str, message: str, details: str = "") -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": {}}


def _combo(spec: list[Any]) -> list[Any] | None:
    if isinstance(spec[0], list):
        return spec[0]
    if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
        return list(spec[1].get("options", []))
    return None


class Validator:
    """Checks one prompt against node definitions. `custom` holds VALIDATE_INPUTS-like checks:
    (class_type, input) → a function returning an error string or True."""

    def __init__(
        self,
        prompt: Mapping[str, Any],
        object_info: Mapping[str, Any],
        custom: Mapping[tuple[str, str], Callable[[Any], str | bool]],
    ) -> None:
        self.prompt = prompt
        self.object_info = object_info
        self.custom = custom
        self.validated: dict[str, tuple[bool, Errors, str]] = {}

    def run(self) -> list[str]:
        """The output node ids to execute; raises Rejection like ComfyUI's validate_prompt."""
        for node_id, node in self.prompt.items():
            if not isinstance(node, Mapping) or "class_type" not in node:
                raise Rejection(
                    _error(
                        "invalid_prompt",
                        "Cannot execute because a node is missing the class_type property.",
                        f"Node ID '#{node_id}'",
                    )
                )
            if node["class_type"] not in self.object_info:
                raise Rejection(
                    _error(
                        "invalid_prompt",
                        f"Cannot execute because node {node['class_type']} does not exist.",
                        f"Node ID '#{node_id}'",
                    )
                )
        outputs = [
            nid for nid, n in self.prompt.items() if self.object_info[n["class_type"]].get("output_node")
        ]
        if not outputs:
            raise Rejection(_error("prompt_no_outputs", "Prompt has no outputs"))
        good_outputs = []
        for output in outputs:
            try:
                valid, reasons = self.validate(output)
            except Exception as error:
                valid = False
                reasons = [
                    {
                        "type": "exception_during_validation",
                        "message": "Exception when validating node",
                        "details": str(error),
                        "extra_info": {
                            "exception_type": type(error).__name__,
                            "traceback": traceback.format_tb(error.__traceback__),
                        },
                    }
                ]
                self.validated[output] = (False, reasons, output)
            if valid:
                good_outputs.append(output)
        node_errors: dict[str, Any] = {}
        for output in outputs:
            for node_id, (valid, reasons, _) in self.validated.items():
                if valid or not reasons:
                    continue
                entry = node_errors.setdefault(
                    node_id,
                    {
                        "errors": reasons,
                        "dependent_outputs": [],
                        "class_type": self.prompt[node_id]["class_type"],
                    },
                )
                if self._depends(output, node_id) and output not in entry["dependent_outputs"]:
                    entry["dependent_outputs"].append(output)
        if node_errors or not good_outputs:
            raise Rejection(
                _error("prompt_outputs_failed_validation", "Prompt outputs failed validation"), node_errors
            )
        return good_outputs

    def _depends(self, output: str, node_id: str, seen: set[str] | None = None) -> bool:
        if output == node_id:
            return True
        seen = seen if seen is not None else set()
        if output in seen or output not in self.prompt:
            return False
        seen.add(output)
        links = [v for v in self.prompt[output].get("inputs", {}).values() if isinstance(v, list) and v]
        return any(self._depends(str(link[0]), node_id, seen) for link in links)

    def validate(self, node_id: str) -> tuple[bool, Errors]:
        """ComfyUI's validate_inputs: an exception raised while following a link escapes to the
        caller, which files it under the linked node with its own input's name."""
        if node_id in self.validated:
            valid, reasons, _ = self.validated[node_id]
            return valid, reasons
        node = self.prompt[node_id]
        inputs = node.get("inputs", {})
        info = self.object_info[node["class_type"]]
        required = info["input"].get("required", {})
        optional = info["input"].get("optional", {})
        errors: Errors = []
        valid = True
        for name, spec in {**required, **optional}.items():
            if name not in inputs:
                if name in required:
                    errors.append(
                        {
                            "type": "required_input_missing",
                            "message": "Required input is missing",
                            "details": name,
                            "extra_info": {"input_name": name},
                        }
                    )
                continue
            value = inputs[name]
            if isinstance(value, list) and len(value) == 2:
                linked_id = str(value[0])
                linked_class = self.prompt[linked_id]["class_type"]  # KeyError escapes, as in ComfyUI
                received = tuple(self.object_info[linked_class]["output"])[value[1]]  # IndexError too
                expected = spec[0]
                if isinstance(expected, str) and expected != "*" and received != expected:
                    errors.append(
                        {
                            "type": "return_type_mismatch",
                            "message": "Return type mismatch between linked nodes",
                            "details": f"{name}, received_type({received}) mismatch input_type({expected})",
                            "extra_info": {
                                "input_name": name,
                                "input_config": spec,
                                "received_type": received,
                                "linked_node": value,
                            },
                        }
                    )
                    continue
                try:
                    linked_valid, _ = self.validate(linked_id)
                except Exception as error:
                    valid = False
                    self.validated[linked_id] = (
                        False,
                        [self._inner_failure(name, spec, value, error)],
                        linked_id,
                    )
                    continue
                if not linked_valid:
                    valid = False
                continue
            problem = self._check_value(node, name, spec, value)
            if problem is not None:
                errors.append(problem)
        if errors:
            valid = False
        self.validated[node_id] = (valid, errors, node_id)
        return valid, errors

    @staticmethod
    def _inner_failure(name: str, spec: Any, link: Any, error: Exception) -> dict[str, Any]:
        return {
            "type": "exception_during_inner_validation",
            "message": "Exception when validating inner node",
            "details": str(error),
            "extra_info": {
                "input_name": name,
                "input_config": spec,
                "exception_message": str(error),
                "exception_type": type(error).__name__,
                "traceback": traceback.format_tb(error.__traceback__),
                "linked_node": link,
            },
        }

    def _check_value(
        self, node: Mapping[str, Any], name: str, spec: list[Any], value: Any
    ) -> dict[str, Any] | None:
        kind = spec[0]
        options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        custom = self.custom.get((node["class_type"], name))
        if custom is not None:
            verdict = custom(value)
            if verdict is not True:
                return {
                    "type": "custom_validation_failed",
                    "message": "Custom validation failed for node",
                    "details": f"{name} - {verdict}",
                    "extra_info": {"input_name": name, "input_config": spec, "received_value": value},
                }
            return None
        converters: dict[str, Callable[[Any], Any]] = {
            "INT": int,
            "FLOAT": float,
            "STRING": str,
            "BOOLEAN": bool,
        }
        if isinstance(kind, str) and kind in converters:
            try:
                converted = converters[kind](value)
            except (TypeError, ValueError) as error:
                return {
                    "type": "invalid_input_type",
                    "message": f"Failed to convert an input value to a {kind} value",
                    "details": f"{name}, {value}, {error}",
                    "extra_info": {
                        "input_name": name,
                        "input_config": spec,
                        "received_value": value,
                        "exception_message": str(error),
                    },
                }
            node["inputs"][name] = converted  # ComfyUI stores the converted value (cfg 8 → 8.0)
            if "min" in options and converted < options["min"]:
                return self._range_error(
                    "value_smaller_than_min", "smaller than min", name, spec, converted, options["min"]
                )
            if "max" in options and converted > options["max"]:
                return self._range_error(
                    "value_bigger_than_max", "bigger than max", name, spec, converted, options["max"]
                )
            return None
        choices = _combo(spec)
        if choices is not None and value not in choices:
            listed: str = str(choices)
            config: Any = spec
            if len(choices) > 20:
                listed, config = f"(list of length {len(choices)})", None
            return {
                "type": "value_not_in_list",
                "message": "Value not in list",
                "details": f"{name}: '{value}' not in {listed}",
                "extra_info": {"input_name": name, "input_config": config, "received_value": value},
            }
        return None

    @staticmethod
    def _range_error(kind: str, words: str, name: str, spec: Any, value: Any, bound: Any) -> dict[str, Any]:
        return {
            "type": kind,
            "message": f"Value {value} {words} of {bound}",
            "details": name,
            "extra_info": {"input_name": name, "input_config": spec, "received_value": value},
        }
