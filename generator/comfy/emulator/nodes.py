"""What the emulator's nodes do: the core nodes of the recorded workflows, with pictures instead
of tensors. Each function takes the node's inputs and returns (outputs tuple, ui dict or None)."""

from __future__ import annotations

import io
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image, UnidentifiedImageError

from . import render


@dataclass
class Latent:
    width: int
    height: int
    batch: int
    source: list[Image.Image] | None = None
    text: str = ""
    seed: int = 0
    denoise: float = 1.0


class Interrupted(Exception):
    """The running prompt was interrupted (ComfyUI's InterruptProcessingException)."""


@dataclass
class RunContext:
    """What a node may use while it runs: the emulator's files and its progress reporting."""

    prompt: dict[str, Any]
    extra_pnginfo: dict[str, Any] | None
    read_input: Callable[[str], bytes]
    save_output: Callable[[str, str, str, bytes], None]  # type, subfolder, filename, bytes
    next_counter: Callable[[str, str, str], int]  # type, subfolder, prefix
    step: Callable[[int, int, Image.Image], Awaitable[None]]  # value, max, picture being made
    temp_prefix: str = "ComfyUI_temp_emu"
    current_node: str = ""


NodeFunction = Callable[..., Awaitable[tuple[tuple[Any, ...], dict[str, Any] | None]]]


async def checkpoint_loader(ctx: RunContext, ckpt_name: str) -> tuple[tuple[Any, ...], None]:
    return (f"MODEL:{ckpt_name}", f"CLIP:{ckpt_name}", f"VAE:{ckpt_name}"), None


async def clip_text_encode(ctx: RunContext, text: str, clip: Any) -> tuple[tuple[Any, ...], None]:
    return (text,), None


async def empty_latent(
    ctx: RunContext, width: int, height: int, batch_size: int
) -> tuple[tuple[Any, ...], None]:
    return (Latent(width, height, batch_size),), None


async def load_image(ctx: RunContext, image: str) -> tuple[tuple[Any, ...], None]:
    data = ctx.read_input(image)
    try:
        picture = Image.open(io.BytesIO(data))
        picture.load()
    except (UnidentifiedImageError, OSError):
        # The message real ComfyUI gives (execution_error_bad_image.jsonl).
        raise UnidentifiedImageError(f"cannot identify image file 'ComfyUI/input/{image}'\n") from None
    return ([picture.convert("RGB")], None), None


async def vae_encode(ctx: RunContext, pixels: list[Image.Image], vae: Any) -> tuple[tuple[Any, ...], None]:
    first = pixels[0]
    return (Latent(first.width, first.height, len(pixels), source=pixels),), None


async def ksampler(
    ctx: RunContext,
    model: Any,
    seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    positive: str,
    negative: str,
    latent_image: Latent,
    denoise: float = 1.0,
) -> tuple[tuple[Any, ...], None]:
    result = Latent(
        latent_image.width,
        latent_image.height,
        latent_image.batch,
        source=latent_image.source,
        text=str(positive),
        seed=int(seed),
        denoise=float(denoise),
    )
    preview_of = _decode(result, max_side=256)[0]
    for value in range(1, int(steps) + 1):
        await ctx.step(value, int(steps), preview_of)
    return (result,), None


def _decode(latent: Latent, max_side: int = render.MAX_SIDE) -> list[Image.Image]:
    scale = min(1.0, max_side / max(latent.width, latent.height))
    width, height = max(16, int(latent.width * scale)), max(16, int(latent.height * scale))
    pictures = []
    for index in range(latent.batch):
        painted = render.paint(latent.text, latent.seed, width, height, index=index)
        if latent.source:
            painted = render.blend(latent.source[index % len(latent.source)], painted, latent.denoise)
        pictures.append(painted)
    return pictures


async def vae_decode(ctx: RunContext, samples: Latent, vae: Any) -> tuple[tuple[Any, ...], None]:
    return (_decode(samples),), None


async def image_scale_by(
    ctx: RunContext, image: list[Image.Image], upscale_method: str, scale_by: float
) -> tuple[tuple[Any, ...], None]:
    scaled = [
        p.resize(
            (max(1, round(p.width * scale_by)), max(1, round(p.height * scale_by))), Image.Resampling.LANCZOS
        )
        for p in image
    ]
    return (scaled,), None


def _split_prefix(prefix: str) -> tuple[str, str]:
    """ComfyUI's rule: the prefix may name subfolders, but never leave the output folder."""
    normalized = os.path.normpath(prefix)
    if normalized.startswith(("..", "/")) or os.path.isabs(prefix):
        raise Exception(
            "**** ERROR: Saving image outside the output folder is not allowed.\n"
            " full_output_folder: /emulator/output\n"
            "         output_dir: /emulator/output\n"
            "         commonpath: /\n"
        )
    subfolder, _, name = normalized.rpartition("/")
    return subfolder, name


async def _save(ctx: RunContext, images: list[Image.Image], prefix: str, file_type: str) -> dict[str, Any]:
    subfolder, name = _split_prefix(prefix)
    results = []
    for picture in images:
        counter = ctx.next_counter(file_type, subfolder, name)
        filename = f"{name}_{counter:05}_.png"
        ctx.save_output(
            file_type, subfolder, filename, render.png_bytes(picture, ctx.prompt, ctx.extra_pnginfo)
        )
        results.append({"filename": filename, "subfolder": subfolder, "type": file_type})
    return {"images": results}


async def save_image(
    ctx: RunContext, images: list[Image.Image], filename_prefix: str = "ComfyUI"
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return (), await _save(ctx, images, filename_prefix, "output")


async def preview_image(ctx: RunContext, images: list[Image.Image]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return (), await _save(ctx, images, ctx.temp_prefix, "temp")


NODES: dict[str, NodeFunction] = {
    "CheckpointLoaderSimple": checkpoint_loader,
    "CLIPTextEncode": clip_text_encode,
    "EmptyLatentImage": empty_latent,
    "LoadImage": load_image,
    "VAEEncode": vae_encode,
    "KSampler": ksampler,
    "VAEDecode": vae_decode,
    "ImageScaleBy": image_scale_by,
    "SaveImage": save_image,
    "PreviewImage": preview_image,
}
