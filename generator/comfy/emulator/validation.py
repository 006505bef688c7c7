"""POST /prompt validation as ComfyUI 0.3.64 does it (execution.py validate_prompt and
validate_inputs), against the emulator's /object_info, with the same error bodies
(tests/recordings/http_errors.json).

The port keeps ComfyUI's quirks on purpose: an exception raised while following a link escapes
the node being validated and is filed by its caller under the linked node with the caller's
input name; every failing output is listed as dependent of every node that has errors; when
some outputs are valid the prompt is accepted with the others' errors in `node_errors`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .tracebacks import VALIDATE_BAD_SLOT, VALIDATE_LINK, VALIDATE_MISSING_NODE

Error = dict[str, Any]
Result = tuple[bool, list[Error], str]
# (class_type, input name) -> check returning True or a message, like a node's VALIDATE_INPUTS.
CustomChecks = Mapping[tuple[str, str], Callable[[Any], "bool | str"]]


class Escaped(Exception):
    """An exception escaping validate_inputs, with the frames ComfyUI's traceback would show."""

    def __init__(self, error: Exception, frames: list[str]) -> None:
        super().__init__(str(error))
        self.error = error
        self.frames = frames


def _unwrap(error: Exception) -> tuple[Exception, list[str]]:
    if isinstance(error, Escaped):
        return error.error, error.frames
    return error, [VALIDATE_LINK]


@dataclass
class Verdict:
    """validate_prompt's answer: accepted with these outputs, or `error` (HTTP 400)."""

    outputs: list[str]
    node_errors: dict[str, Any]
    error: Error | None = None

    @property
    def body(self) -> dict[str, Any]:
        return {"error": self.error, "node_errors": self.node_errors}


def _error(kind: str, message: str, details: str = "") -> Error:
    return {"type": kind, "message": message, "details": details, "extra_info": {}}


def full_type_name(kind: type) -> str:
    """execution.full_type_name: "KeyError", "PIL.UnidentifiedImageError"."""
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


def input_info(spec: Mapping[str, Any], name: str) -> tuple[Any, str | None, dict[str, Any]]:
    """execution.get_input_info: (type, "required"|"optional"|"hidden"|None, options)."""
    for category in ("required", "optional", "hidden"):
        entry = spec.get(category, {})
        if name in entry:
            info = entry[name]
            if isinstance(info, str):  # hidden inputs: {"prompt": "PROMPT"}
                return info, category, {}
            return info[0], category, (info[1] if len(info) > 1 else {})
    return None, None, {}


def types_match(received: Any, expected: Any) -> bool:
    """execution.validate_node_input: equal, "*", or overlapping "A,B" unions."""
    if received == expected:
        return True
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    got = {t.strip() for t in received.split(",")}
    wanted = {t.strip() for t in expected.split(",")}
    return "*" in got or "*" in wanted or bool(got & wanted)


@dataclass
class Validator:
    prompt: Any
    object_info: Mapping[str, Any]
    custom: CustomChecks = field(default_factory=dict)
    validated: dict[str, Result] = field(default_factory=dict)
    _visiting: set[str] = field(default_factory=set)

    def validate_prompt(self, targets: list[str] | None = None) -> Verdict:
        outputs: list[str] = []
        for node_id in self.prompt:
            node = self.prompt[node_id]
            if "class_type" not in node:  # a TypeError here is ComfyUI's 500 too
                return Verdict([], {}, _missing_class_type(node_id))
            class_type = node["class_type"]
            if class_type not in self.object_info:
                return Verdict([], {}, _unknown_class_type(node_id, class_type))
            if self.object_info[class_type].get("output_node") is True and (
                targets is None or node_id in targets
            ):
                outputs.append(node_id)
        if not outputs:
            return Verdict([], {}, _error("prompt_no_outputs", "Prompt has no outputs"))

        good: list[str] = []
        failures: list[tuple[str, list[Error]]] = []
        node_errors: dict[str, Any] = {}
        for output in outputs:
            valid, reasons = self._validate_output(output)
            if valid:
                good.append(output)
                continue
            failures.append((output, reasons))
            for node_id, (node_valid, node_reasons, _) in self.validated.items():
                # Downstream nodes of a bad one are invalid without errors of their own; only
                # nodes with errors are reported.
                if node_valid is True or not node_reasons:
                    continue
                if node_id not in node_errors:
                    node_errors[node_id] = {
                        "errors": node_reasons,
                        "dependent_outputs": [],
                        "class_type": self.prompt[node_id]["class_type"],
                    }
                node_errors[node_id]["dependent_outputs"].append(output)
        if not good:
            details = "\n".join(f"{e['message']}: {e['details']}" for _, errors in failures for e in errors)
            error = _error("prompt_outputs_failed_validation", "Prompt outputs failed validation", details)
            return Verdict([], node_errors, error)
        return Verdict(good, node_errors)

    def _validate_output(self, output: str) -> tuple[bool, list[Error]]:
        try:
            valid, reasons, _ = self.validate_inputs(output)
            return valid, reasons
        except Exception as escaped:
            error, frames = _unwrap(escaped)
            reasons = [
                {
                    "type": "exception_during_validation",
                    "message": "Exception when validating node",
                    "details": str(error),
                    "extra_info": {"exception_type": full_type_name(type(error)), "traceback": frames},
                }
            ]
            self.validated[output] = (False, reasons, output)
            return False, reasons

    def validate_inputs(self, node_id: str) -> Result:
        if node_id in self.validated:
            return self.validated[node_id]
        if node_id in self._visiting:  # a cycle: ComfyUI recurses until Python gives up
            raise RecursionError("maximum recursion depth exceeded")
        self._visiting.add(node_id)
        try:
            result = self._validate_node(node_id)
        finally:
            self._visiting.discard(node_id)
        self.validated[node_id] = result
        return result

    def _validate_node(self, node_id: str) -> Result:
        node = self.prompt[node_id]
        inputs = node["inputs"]
        class_type = node["class_type"]
        spec = self.object_info[class_type]["input"]
        errors: list[Error] = []
        valid = True
        declared = [*spec.get("required", {}), *spec.get("optional", {})]
        for name in declared:
            kind, category, options = input_info(spec, name)
            info = [kind, options]
            if name not in inputs:
                if category == "required":
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
            if isinstance(value, list):
                problem, linked_valid = self._check_link(name, info, value)
                if problem is not None:
                    errors.append(problem)
                if not linked_valid:
                    valid = False
                continue
            problem = self._check_value(node, class_type, name, kind, options, info)
            if problem is not None:
                errors.append(problem)
        if errors or not valid:
            return False, errors, node_id
        return True, [], node_id

    def _check_link(self, name: str, info: list[Any], link: list[Any]) -> tuple[Error | None, bool]:
        """(an error of this node's, whether the linked node is valid)."""
        if len(link) != 2:
            return {
                "type": "bad_linked_input",
                "message": "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                "details": name,
                "extra_info": {"input_name": name, "input_config": info, "received_value": link},
            }, True
        linked_id, slot = link
        try:
            linked_class = self.prompt[linked_id]["class_type"]
        except Exception as error:
            raise Escaped(error, [VALIDATE_LINK, VALIDATE_MISSING_NODE]) from error
        try:
            received = tuple(self.object_info[linked_class]["output"])[slot]
        except Exception as error:
            raise Escaped(error, [VALIDATE_LINK, VALIDATE_BAD_SLOT]) from error
        if not types_match(received, info[0]):
            return {
                "type": "return_type_mismatch",
                "message": "Return type mismatch between linked nodes",
                "details": f"{name}, received_type({received}) mismatch input_type({info[0]})",
                "extra_info": {
                    "input_name": name,
                    "input_config": info,
                    "received_type": received,
                    "linked_node": link,
                },
            }, True
        try:
            linked_valid, _, _ = self.validate_inputs(linked_id)
        except Exception as error:
            self.validated[linked_id] = (False, [_inner_failure(name, info, link, error)], linked_id)
            return None, False
        return None, linked_valid

    def _check_value(
        self,
        node: dict[str, Any],
        class_type: str,
        name: str,
        kind: Any,
        options: dict[str, Any],
        info: list[Any],
    ) -> Error | None:
        value = node["inputs"][name]
        if isinstance(value, dict) and "__value__" in value:  # list widget values come wrapped
            value = node["inputs"][name] = value["__value__"]
        converters: dict[str, Callable[[Any], Any]] = {
            "INT": int,
            "FLOAT": float,
            "STRING": str,
            "BOOLEAN": bool,
        }
        if isinstance(kind, str) and kind in converters:
            try:
                value = node["inputs"][name] = converters[kind](value)  # stored: cfg 8 -> 8.0
            except Exception as error:
                return {
                    "type": "invalid_input_type",
                    "message": f"Failed to convert an input value to a {kind} value",
                    "details": f"{name}, {value}, {error}",
                    "extra_info": {
                        "input_name": name,
                        "input_config": info,
                        "received_value": value,
                        "exception_message": str(error),
                    },
                }
        custom = self.custom.get((class_type, name))
        if custom is not None:  # VALIDATE_INPUTS replaces the built-in checks of its inputs
            verdict = custom(value)
            if verdict is True:
                return None
            return {
                "type": "custom_validation_failed",
                "message": "Custom validation failed for node",
                "details": name if verdict is False else f"{name} - {verdict}",
                "extra_info": {"input_name": name, "input_config": info, "received_value": value},
            }
        if "min" in options and value < options["min"]:
            return _range_error(
                "value_smaller_than_min", "smaller than min", name, info, value, options["min"]
            )
        if "max" in options and value > options["max"]:
            return _range_error("value_bigger_than_max", "bigger than max", name, info, value, options["max"])
        choices = kind if isinstance(kind, list) else options.get("options") if kind == "COMBO" else None
        if choices is not None and value not in choices:
            config: list[Any] | None
            listed, config = str(choices), info
            if len(choices) > 20:  # ComfyUI does not echo long lists (model files)
                listed, config = f"(list of length {len(choices)})", None
            return {
                "type": "value_not_in_list",
                "message": "Value not in list",
                "details": f"{name}: '{value}' not in {listed}",
                "extra_info": {"input_name": name, "input_config": config, "received_value": value},
            }
        return None


def _missing_class_type(node_id: str) -> Error:
    return _error(
        "invalid_prompt",
        "Cannot execute because a node is missing the class_type property.",
        f"Node ID '#{node_id}'",
    )


def _unknown_class_type(node_id: str, class_type: Any) -> Error:
    return _error(
        "invalid_prompt", f"Cannot execute because node {class_type} does not exist.", f"Node ID '#{node_id}'"
    )


def _range_error(kind: str, words: str, name: str, info: list[Any], value: Any, bound: Any) -> Error:
    return {
        "type": kind,
        "message": f"Value {value} {words} of {bound}",
        "details": name,
        "extra_info": {"input_name": name, "input_config": info, "received_value": value},
    }


def _inner_failure(name: str, info: list[Any], link: list[Any], escaped: Exception) -> Error:
    error, frames = _unwrap(escaped)
    return {
        "type": "exception_during_inner_validation",
        "message": "Exception when validating inner node",
        "details": str(error),
        "extra_info": {
            "input_name": name,
            "input_config": info,
            "exception_message": str(error),
            "exception_type": full_type_name(type(error)),
            "traceback": frames,
            "linked_node": link,
        },
    }
