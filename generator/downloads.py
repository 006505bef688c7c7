"""What users download: ComfyUI embeds the whole workflow graph in every PNG it saves.

Stored files keep their bytes (staff can drag them back into ComfyUI). Downloads follow
DOWNLOAD_KEEPS_WORKFLOW: keep the graph, or (the default) drop it and embed only readable
parameters. PNG chunks are rewritten in place, so the pixels are untouched and nothing is
re-encoded.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

from django.conf import settings

from .models import GeneratedImage

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GRAPH_KEYWORDS = {b"prompt", b"workflow"}
TEXT_CHUNKS = {b"tEXt", b"zTXt", b"iTXt"}
READABLE_PARAMETERS = (
    "seed",
    "steps",
    "cfg",
    "sampler",
    "scheduler",
    "checkpoint",
    "width",
    "height",
    "denoise",
)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def _chunks(data: bytes) -> Iterator[tuple[bytes, bytes, bytes]]:
    position = len(PNG_SIGNATURE)
    while position + 8 <= len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        end = position + 12 + length
        yield kind, data[position + 8 : position + 8 + length], data[position:end]
        position = end


def strip_graph(data: bytes, parameters: str) -> bytes:
    """The PNG without its `prompt`/`workflow` text chunks, with a `parameters` text chunk."""
    if not data.startswith(PNG_SIGNATURE):
        return data
    out = [PNG_SIGNATURE]
    for kind, payload, raw in _chunks(data):
        if kind in TEXT_CHUNKS and payload.split(b"\0", 1)[0] in GRAPH_KEYWORDS:
            continue
        if kind == b"IEND":
            out.append(_chunk(b"tEXt", b"parameters\0" + parameters.encode("latin-1", "replace")))
        out.append(raw)
    return b"".join(out)


def readable_parameters(image: GeneratedImage) -> str:
    prompt = image.prompt
    lines = [prompt.positive_text]
    if prompt.negative_text:
        lines.append(f"Negative prompt: {prompt.negative_text}")
    values = [f"{name}: {prompt.params[name]}" for name in READABLE_PARAMETERS if name in prompt.params]
    lines.append(", ".join([f"workflow: {prompt.workflow}", *values]))
    return "\n".join(lines)


def download_bytes(image: GeneratedImage) -> bytes:
    with image.file.open("rb") as handle:
        data = handle.read()
    if settings.DOWNLOAD_KEEPS_WORKFLOW:
        return data
    return strip_graph(data, readable_parameters(image))


def download_name(image: GeneratedImage) -> str:
    extension = image.file.name.rsplit(".", 1)[-1] if "." in image.file.name else "bin"
    return f"comfysite-{image.prompt_id}-{image.node_id}-{image.output_index}.{extension}"
