"""Tracebacks as the recorded ComfyUI shows them (traceback.format_tb lines, paths relative to
the ComfyUI checkout). The emulator's own frames would mean nothing to a ComfyUI user, and
clients may display these."""

from __future__ import annotations


def frame(path: str, line: int, function: str, code: str, start: int = 0, marks: str = "") -> str:
    """One format_tb entry; `marks` (Python 3.11's ^ and ~) sit under `code` from `start`."""
    text = f'  File "{path}", line {line}, in {function}\n    {code}\n'
    if marks:
        text += " " * (4 + start) + marks + "\n"
    return text


_GET_OUTPUT_DATA = (
    "output_data, output_ui, has_subgraph, has_pending_tasks = await get_output_data(prompt_id, unique_id,"
    " obj, input_data_all, execution_block_cb=execution_block_cb, pre_execute_cb=pre_execute_cb,"
    " hidden_inputs=hidden_inputs)"
)
_MAP_OVER_LIST = (
    "return_values = await _async_map_node_over_list(prompt_id, unique_id, obj, input_data_all,"
    " obj.FUNCTION, allow_interrupt=True, execution_block_cb=execution_block_cb,"
    " pre_execute_cb=pre_execute_cb, hidden_inputs=hidden_inputs)"
)
_SAVE_PATH = (
    "full_output_folder, filename, counter, subfolder, filename_prefix ="
    " folder_paths.get_save_image_path(filename_prefix, self.output_dir, images[0].shape[1],"
    " images[0].shape[0])"
)

# Every node failure starts with these (execution.py running the node's FUNCTION).
EXECUTION = [
    frame("ComfyUI/execution.py", 496, "execute", _GET_OUTPUT_DATA, 58, "^" * 163),
    frame("ComfyUI/execution.py", 315, "get_output_data", _MAP_OVER_LIST, 16, "^" * 209),
    frame("ComfyUI/execution.py", 289, "_async_map_node_over_list", "await process_inputs(input_dict, i)"),
    frame("ComfyUI/execution.py", 277, "process_inputs", "result = f(**inputs)", 9, "^" * 11),
]
SAVE_OUTSIDE_OUTPUT = [
    frame("ComfyUI/nodes.py", 1590, "save_images", _SAVE_PATH, 68, "^" * 106),
    frame("ComfyUI/folder_paths.py", 397, "get_save_image_path", "raise Exception(err)"),
]
LOAD_IMAGE_UNIDENTIFIED = [
    frame(
        "ComfyUI/nodes.py",
        1647,
        "load_image",
        "img = node_helpers.pillow(Image.open, image_path)",
        6,
        "^" * 43,
    ),
    frame("ComfyUI/node_helpers.py", 31, "pillow", "x = fn(arg)", 4, "^" * 7),
    frame(
        "venv/lib/python3.11/site-packages/PIL/Image.py", 3730, "open", "raise UnidentifiedImageError(msg)"
    ),
]

# Validation: an exception while following a link (validate_inputs recursing into the linked node).
VALIDATE_LINK = frame(
    "ComfyUI/execution.py",
    808,
    "validate_inputs",
    "r = await validate_inputs(prompt_id, prompt, o_id, validated)",
    4,
    "^" * 57,
)
VALIDATE_MISSING_NODE = frame(
    "ComfyUI/execution.py",
    788,
    "validate_inputs",
    "o_class_type = prompt[o_id]['class_type']",
    15,
    "~~~~~~^^^^^^",
)
VALIDATE_BAD_SLOT = frame(
    "ComfyUI/execution.py", 790, "validate_inputs", "received_type = r[val[1]]", 16, "~^^^^^^^^"
)

# ComfyUI's FUNCTION name and nodes.py line of each class, for failures the recordings lack.
NODE_FUNCTIONS = {
    "CheckpointLoaderSimple": ("load_checkpoint", 590),
    "CLIPTextEncode": ("encode", 77),
    "EmptyLatentImage": ("generate", 1184),
    "LoadImage": ("load_image", 1647),
    "VAEEncode": ("encode", 367),
    "KSampler": ("sample", 1525),
    "VAEDecode": ("decode", 296),
    "ImageScaleBy": ("upscale", 1851),
    "SaveImage": ("save_images", 1590),
    "PreviewImage": ("save_images", 1590),
}


def node_failure(class_type: str, type_name: str) -> list[str]:
    """A plausible traceback for a node that raised `type_name` (faults, out of memory)."""
    function, line = NODE_FUNCTIONS.get(class_type, ("execute", 1))
    short = type_name.rsplit(".", 1)[-1]
    return [*EXECUTION, frame("ComfyUI/nodes.py", line, function, f"raise {short}(msg)")]
