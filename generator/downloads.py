"""What users download: ComfyUI embeds the whole workflow graph in every PNG it saves.

Stored files keep their bytes (staff can drag them back into ComfyUI). Downloads follow
DOWNLOAD_KEEPS_WORKFLOW: keep the graph, or (the default) drop it and embed only readable
parameters. PNG chunks are rewritten in place, so the pixels are untouched and nothing is
re-encoded.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import AsyncIterator, Iterable, Iterator

from asgiref.sync import sync_to_async
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
            # iTXt (keyword, no compression, no language): UTF-8, so any prompt survives; tEXt is
            # Latin-1 only, and "🎨 … שלום" came out as "?? ????".
            out.append(_chunk(b"iTXt", b"parameters\0\0\0\0\0" + parameters.encode("utf-8")))
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


class _Collected(io.RawIOBase):
    """An unseekable file that keeps what is written until taken: zipfile writes its archive
    into it (with data descriptors, since it cannot seek back), a member at a time."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data


def zip_parts(images: Iterable[GeneratedImage]) -> Iterator[bytes]:
    """A zip of the images' downloads, produced one image at a time (stored: PNG, WebP and JPEG
    are compressed already)."""
    collected = _Collected()
    with zipfile.ZipFile(collected, "w", compression=zipfile.ZIP_STORED) as archive:
        for image in images:
            archive.writestr(download_name(image), download_bytes(image))
            yield collected.take()
    yield collected.take()


async def zip_stream(images: Iterable[GeneratedImage]) -> AsyncIterator[bytes]:
    """`zip_parts` for an ASGI response: each image is read on the request's thread, and between
    two images that thread serves other requests. (A synchronous iterator would be read whole into
    memory by Django's ASGI handler before the first byte is sent.)"""
    parts = zip_parts(images)

    def next_part() -> bytes | None:
        return next(parts, None)

    while (part := await sync_to_async(next_part)()) is not None:
        if part:
            yield part
