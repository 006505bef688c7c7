"""The emulator's node classes: the core nodes of the site's workflows, with pictures instead of
tensors. Each function takes its context and the node's declared inputs (links already
resolved) and returns (outputs tuple, ui dict or None), like a ComfyUI node's FUNCTION.

Values print like ComfyUI's would (they appear in execution_error's current_inputs).
"""

from __future__ import annotations

import asyncio
import os
import random
import string
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

from . import rendering
from .folders import Folders

NodeOutput = tuple[tuple[Any, ...], dict[str, Any] | None]
# A sampler reports each step: (step, total, latent being sampled); the executor sends the
# progress, the preview and raises Interrupted there.
StepHook = Callable[[int, int, "Latent"], Awaitable[None]]
MAX_PIXELS = 4096 * 4096 * 4  # beyond this a demo machine "runs out of GPU memory"
OOM_TIPS = (
    "This error means you ran out of memory on your GPU.\n\n"
    "TIPS: If the workflow worked before you might have accidentally set the batch_size to a large number."
)


class Interrupted(Exception):
    """comfy.model_management.InterruptProcessingException."""


class EmulatedError(Exception):
    """An exception reported under another type name, e.g. "torch.OutOfMemoryError"."""

    def __init__(self, type_name: str, message: str, tips: str = "") -> None:
        super().__init__(message)
        self.type_name = type_name
        self.tips = tips


@dataclass
class NodeContext:
    node_id: str
    class_type: str
    prompt: dict[str, Any]  # the hidden PROMPT input: what SaveImage writes into the PNG
    extra_pnginfo: dict[str, Any] | None
    folders: Folders
    step: StepHook
    temp_prefix: str


@dataclass(frozen=True)
class Loaded:
    kind: str  # "MODEL", "CLIP" or "VAE"
    checkpoint: str

    def __str__(self) -> str:
        classes = {
            "MODEL": "comfy.model_patcher.ModelPatcher",
            "CLIP": "comfy.sd.CLIP",
            "VAE": "comfy.sd.VAE",
        }
        return f"<{classes[self.kind]} object (emulated, {self.checkpoint})>"


@dataclass(frozen=True)
class Conditioning:
    text: str

    def __str__(self) -> str:
        pooled = "'pooled_output': tensor(shape=[1, 768], emulated)"
        return f"[[tensor(shape=[1, 77, 768], emulated), {{{pooled}, 'text': {self.text!r}}}]]"


@dataclass
class Latent:
    width: int  # in pixels, multiples of 8
    height: int
    batch: int
    source: list[Image.Image] | None = None  # img2img: the encoded pictures
    text: str | None = None  # set once sampled
    seed: int = 0
    denoise: float = 1.0
    preview: Image.Image | None = field(default=None, repr=False, compare=False)  # made once per sampling

    def __str__(self) -> str:
        shape = [self.batch, 4, self.height // 8, self.width // 8]
        return f"{{'samples': tensor(shape={shape}, emulated)}}"


@dataclass
class ImageBatch:
    pictures: list[Image.Image]

    def __str__(self) -> str:
        first = self.pictures[0]
        return f"tensor(shape=[{len(self.pictures)}, {first.height}, {first.width}, 3], emulated)"


@dataclass
class Mask:
    width: int
    height: int

    def __str__(self) -> str:
        return f"tensor(shape=[1, {self.height}, {self.width}], emulated)"


async def checkpoint_loader(ctx: NodeContext, ckpt_name: str) -> NodeOutput:
    return (Loaded("MODEL", ckpt_name), Loaded("CLIP", ckpt_name), Loaded("VAE", ckpt_name)), None


async def clip_text_encode(ctx: NodeContext, text: str, clip: Loaded) -> NodeOutput:
    return (Conditioning(text),), None


async def empty_latent(ctx: NodeContext, width: int, height: int, batch_size: int = 1) -> NodeOutput:
    return (Latent(width // 8 * 8, height // 8 * 8, batch_size),), None


async def load_image(ctx: NodeContext, image: str) -> NodeOutput:
    path = ctx.folders.input_path(image)
    try:
        picture = await asyncio.to_thread(_open_picture, path)
    except UnidentifiedImageError:
        # PIL names the file it was given: ComfyUI's absolute path (as recorded).
        raise UnidentifiedImageError(
            f"cannot identify image file {ctx.folders.shown_input(image)!r}"
        ) from None
    except FileNotFoundError:
        raise FileNotFoundError(
            f"[Errno 2] No such file or directory: {ctx.folders.shown_input(image)!r}"
        ) from None
    return (ImageBatch([picture]), Mask(picture.width, picture.height)), None


def _open_picture(path: str) -> Image.Image:
    with Image.open(path) as opened:
        return ImageOps.exif_transpose(opened).convert("RGB")


async def vae_encode(ctx: NodeContext, pixels: ImageBatch, vae: Loaded) -> NodeOutput:
    cropped = [_crop_to_eight(p) for p in pixels.pictures]
    first = cropped[0]
    return (Latent(first.width, first.height, len(cropped), source=cropped),), None


def _crop_to_eight(picture: Image.Image) -> Image.Image:
    """VAE.vae_encode_crop_pixels: centred crop to multiples of 8."""
    width, height = picture.width // 8 * 8, picture.height // 8 * 8
    left, top = (picture.width % 8) // 2, (picture.height % 8) // 2
    return picture.crop((left, top, left + width, top + height))


async def ksampler(
    ctx: NodeContext,
    model: Loaded,
    seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    positive: Conditioning,
    negative: Conditioning,
    latent_image: Latent,
    denoise: float = 1.0,
) -> NodeOutput:
    result = Latent(
        latent_image.width,
        latent_image.height,
        latent_image.batch,
        source=latent_image.source,
        text=positive.text,
        seed=seed,
        denoise=denoise,
    )
    for step in range(1, steps + 1):
        await ctx.step(step, steps, result)
    return (result,), None


async def vae_decode(ctx: NodeContext, samples: Latent, vae: Loaded) -> NodeOutput:
    if samples.width * samples.height * samples.batch > MAX_PIXELS:
        raise EmulatedError("torch.OutOfMemoryError", "Allocation on device ", OOM_TIPS)
    pictures = await asyncio.to_thread(decode, samples)
    return (ImageBatch(pictures),), None


def decode(latent: Latent) -> list[Image.Image]:
    pictures = []
    for index in range(latent.batch):
        source = latent.source[index % len(latent.source)] if latent.source else None
        if latent.text is None:  # never sampled: the encoded picture, or an empty latent's grey
            grey = Image.new("RGB", (latent.width, latent.height), (126, 118, 108))
            pictures.append(source.copy() if source else grey)
        elif source is not None:
            pictures.append(rendering.img2img(source, latent.text, latent.seed + index, latent.denoise))
        else:
            pictures.append(rendering.paint(latent.text, latent.seed + index, latent.width, latent.height))
    return pictures


def preview_source(latent: Latent) -> Image.Image:
    """The sampled picture at latent resolution, for previews: cheap at any size."""
    width, height = max(1, latent.width // 8), max(1, latent.height // 8)
    small = Latent(width, height, 1, text=latent.text or "", seed=latent.seed, denoise=latent.denoise)
    if latent.source:
        small.source = [latent.source[0].resize((width, height))]
    return decode(small)[0]


SCALING = {
    "nearest-exact": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "area": Image.Resampling.BOX,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


async def image_scale_by(
    ctx: NodeContext, image: ImageBatch, upscale_method: str, scale_by: float
) -> NodeOutput:
    def scale(picture: Image.Image) -> Image.Image:
        size = (max(1, round(picture.width * scale_by)), max(1, round(picture.height * scale_by)))
        if size[0] * size[1] * len(image.pictures) > MAX_PIXELS:
            raise EmulatedError("torch.OutOfMemoryError", "Allocation on device ", OOM_TIPS)
        return picture.resize(size, SCALING.get(upscale_method, Image.Resampling.BICUBIC))

    scaled = await asyncio.to_thread(lambda: [scale(p) for p in image.pictures])
    return (ImageBatch(scaled),), None


async def save_image(ctx: NodeContext, images: ImageBatch, filename_prefix: str = "ComfyUI") -> NodeOutput:
    results = await asyncio.to_thread(_save, ctx, images, filename_prefix, "output", 4)
    return (), {"images": results}


async def preview_image(ctx: NodeContext, images: ImageBatch) -> NodeOutput:
    results = await asyncio.to_thread(_save, ctx, images, "ComfyUI" + ctx.temp_prefix, "temp", 1)
    return (), {"images": results}


def _save(
    ctx: NodeContext, images: ImageBatch, prefix: str, kind: str, compress_level: int
) -> list[dict[str, str]]:
    """SaveImage.save_images: "<prefix>_00001_.png", counting on from the folder's highest."""
    first = images.pictures[0]
    folder, name, counter, subfolder = ctx.folders.save_path(kind, prefix, first.width, first.height)
    results = []
    for batch_number, picture in enumerate(images.pictures):
        filename = f"{name.replace('%batch_num%', str(batch_number))}_{counter:05}_.png"
        data = rendering.png_bytes(picture, ctx.prompt, ctx.extra_pnginfo, compress_level)
        with open(os.path.join(folder, filename), "wb") as handle:
            handle.write(data)
        results.append({"filename": filename, "subfolder": subfolder, "type": kind})
        counter += 1
    return results


def temp_prefix() -> str:
    """PreviewImage's prefix_append: "_temp_" and five random letters."""
    return "_temp_" + "".join(random.choice(string.ascii_lowercase) for _ in range(5))


NODES: dict[str, Callable[..., Awaitable[NodeOutput]]] = {
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
