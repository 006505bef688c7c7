"""ComfyUI's input/, output/ and temp/ folders, in a directory the emulator owns, with ComfyUI's
path rules (folder_paths.py, server.py): annotated names, subfolders that may not escape,
the counter in output file names, upload renaming.

Paths in error messages are shown as on the recorded server, rooted at "ComfyUI/".
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
import posixpath
import shutil
import tempfile
import time
from pathlib import Path

KINDS = ("input", "output", "temp")
# Where ComfyUI lived on the recorded machine; messages show it as "ComfyUI".
RECORDED_ROOT = "/srv/comfy/ComfyUI"


def shown(path: str) -> str:
    """A path as the recordings show it: "/srv/comfy/ComfyUI/output" -> "ComfyUI/output"."""
    if path == RECORDED_ROOT or path.startswith(RECORDED_ROOT + "/"):
        return "ComfyUI" + path[len(RECORDED_ROOT) :]
    return path


def annotated(name: str) -> tuple[str, str | None]:
    """ComfyUI's annotated_filepath: "x.png [output]" names a file in another folder."""
    for kind in KINDS:
        suffix = f"[{kind}]"
        if name.endswith(suffix):
            return name[: -len(suffix)].strip(), kind
    return name, None


class Folders:
    """The three folders. Without `root`, a temporary directory removed by `remove()`."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.owned = root is None
        self.root = Path(tempfile.mkdtemp(prefix="comfysite-emulator-") if root is None else root).resolve()
        for kind in KINDS:
            (self.root / kind).mkdir(parents=True, exist_ok=True)
        example = self.root / "input" / "example.png"
        if not example.exists():  # ComfyUI ships input/example.png; LoadImage's default
            from .rendering import example_png

            example.write_bytes(example_png())

    def directory(self, kind: str) -> str:
        if kind not in KINDS:
            raise KeyError(kind)
        return str(self.root / kind)

    def remove(self) -> None:
        if self.owned:
            shutil.rmtree(self.root, ignore_errors=True)

    def wipe_temp(self) -> None:
        """ComfyUI empties temp/ when it starts."""
        shutil.rmtree(self.root / "temp", ignore_errors=True)
        (self.root / "temp").mkdir()

    # -- inputs -------------------------------------------------------------------------------

    def input_path(self, name: str) -> str:
        """folder_paths.get_annotated_filepath: where LoadImage reads `name`."""
        name, kind = annotated(name)
        return os.path.join(self.directory(kind or "input"), name)

    def input_exists(self, name: str) -> bool:
        return os.path.exists(self.input_path(name))

    def input_images(self) -> list[str]:
        """LoadImage's choices: image files directly in input/, sorted."""
        directory = self.directory("input")
        names = [n for n in os.listdir(directory) if os.path.isfile(os.path.join(directory, n))]
        return sorted(n for n in names if (mimetypes.guess_type(n)[0] or "").startswith("image/"))

    def file_hash(self, name: str) -> str:
        """LoadImage.IS_CHANGED: the file's sha256, so a replaced input is not served from cache."""
        with open(self.input_path(name), "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()

    def shown_input(self, name: str) -> str:
        name, kind = annotated(name)
        return shown(posixpath.join(RECORDED_ROOT, kind or "input", name))

    # -- uploads ------------------------------------------------------------------------------

    def upload(self, kind: str, subfolder: str, filename: str, data: bytes, overwrite: bool) -> str | None:
        """server.py image_upload: the stored name, or None when the path escapes (400).
        Same name and bytes -> same file; other bytes -> "name (1).ext"."""
        directory = self.directory(kind)
        folder = os.path.join(directory, os.path.normpath(subfolder))
        path = os.path.abspath(os.path.join(folder, filename))
        if os.path.commonpath((directory, path)) != directory:
            return None
        os.makedirs(folder, exist_ok=True)
        stem, extension = os.path.splitext(filename)
        if not overwrite:
            counter = 1
            while os.path.exists(path):
                if _same_bytes(path, data):
                    return filename
                filename = f"{stem} ({counter}){extension}"
                path = os.path.join(folder, filename)
                counter += 1
        with open(path, "wb") as handle:
            handle.write(data)
        return filename

    # -- /view --------------------------------------------------------------------------------

    def view_path(self, filename: str, kind: str | None, subfolder: str | None) -> str | int:
        """server.py view_image: the file to send, or the status code ComfyUI answers."""
        filename, annotated_kind = annotated(filename)
        if not filename:
            return 400
        if filename[0] == "/" or ".." in filename:
            return 400
        kind = annotated_kind or kind or "output"
        if kind not in KINDS:
            return 400
        directory = self.directory(kind)
        if subfolder is not None:
            full = os.path.join(directory, subfolder)
            if os.path.commonpath((os.path.abspath(full), directory)) != directory:
                return 403
            directory = full
        path = os.path.join(directory, os.path.basename(filename))
        return path if os.path.isfile(path) else 404

    # -- outputs ------------------------------------------------------------------------------

    def save_path(self, kind: str, prefix: str, width: int, height: int) -> tuple[str, str, int, str]:
        """folder_paths.get_save_image_path: (folder, file name stem, first counter, subfolder).
        Raises ComfyUI's exception when the prefix leaves the folder."""
        if "%" in prefix:
            prefix = _prefix_variables(prefix, width, height)
        subfolder = os.path.dirname(os.path.normpath(prefix))
        name = os.path.basename(os.path.normpath(prefix))
        directory = self.directory(kind)
        folder = os.path.join(directory, subfolder)
        if os.path.commonpath((directory, os.path.abspath(folder))) != directory:
            raise Exception(_outside_message(kind, subfolder))
        os.makedirs(folder, exist_ok=True)
        return folder, name, _next_counter(folder, name), subfolder


def _same_bytes(path: str, data: bytes) -> bool:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).digest() == hashlib.sha256(data).digest()


def _prefix_variables(prefix: str, width: int, height: int) -> str:
    now = time.localtime()
    for name, value in [
        ("%width%", str(width)),
        ("%height%", str(height)),
        ("%year%", str(now.tm_year)),
        ("%month%", str(now.tm_mon).zfill(2)),
        ("%day%", str(now.tm_mday).zfill(2)),
        ("%hour%", str(now.tm_hour).zfill(2)),
        ("%minute%", str(now.tm_min).zfill(2)),
        ("%second%", str(now.tm_sec).zfill(2)),
    ]:
        prefix = prefix.replace(name, value)
    return prefix


def _outside_message(kind: str, subfolder: str) -> str:
    # Computed on the recorded server's paths so the text matches the recording.
    output_dir = posixpath.join(RECORDED_ROOT, kind)
    full = posixpath.abspath(posixpath.join(output_dir, subfolder))
    common = posixpath.commonpath((output_dir, full))
    return (
        "**** ERROR: Saving image outside the output folder is not allowed."
        f"\n full_output_folder: {shown(full)}"
        f"\n         output_dir: {shown(output_dir)}"
        f"\n         commonpath: {shown(common)}"
    )


def _next_counter(folder: str, name: str) -> int:
    """One more than the highest NNNNN among "<name>_NNNNN_*" files in the folder."""
    highest = 0
    for existing in os.listdir(folder):
        head, digits = existing[: len(name) + 1], existing[len(name) + 1 :].split("_")[0]
        if os.path.normcase(head[:-1]) == os.path.normcase(name) and head[-1:] == "_":
            highest = max(highest, int(digits) if digits.isdigit() else 0)
    return highest + 1
