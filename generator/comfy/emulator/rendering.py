"""The emulator's pictures: deterministic, pleasant, plainly marked as a demo.

A picture is a soft landscape (sky gradient, a glowing sun, layered hills) whose palette and
shapes come from a hash of the prompt text and seed, so the same prompt and seed always give
the same picture and a new seed gives a new one. Colour words in the prompt steer the hue.
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import json
import math
import random
import struct
from typing import Any

from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps
from PIL.PngImagePlugin import PngInfo

PREVIEW_SIZE = 512  # ComfyUI's --preview-size default
PREVIEW_IMAGE = 1  # protocol.BinaryEventTypes
PREVIEW_IMAGE_WITH_METADATA = 4
JPEG = 1  # image format in a type-1 frame

HUES = {  # colour words -> hue (0..1), so "a red barn" comes out warm
    "red": 0.0,
    "crimson": 0.97,
    "orange": 0.07,
    "sunset": 0.05,
    "autumn": 0.08,
    "gold": 0.12,
    "yellow": 0.14,
    "desert": 0.11,
    "green": 0.3,
    "forest": 0.33,
    "spring": 0.27,
    "teal": 0.47,
    "ocean": 0.55,
    "sea": 0.55,
    "blue": 0.6,
    "sky": 0.58,
    "winter": 0.57,
    "purple": 0.77,
    "violet": 0.75,
    "galaxy": 0.72,
    "pink": 0.9,
    "rose": 0.93,
}
DARK_WORDS = {"night", "galaxy", "space", "dark", "moon", "midnight"}


def _rgb(hue: float, saturation: float, value: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(hue % 1.0, max(0.0, min(1.0, saturation)), max(0.0, min(1.0, value)))
    return round(r * 255), round(g * 255), round(b * 255)


def _base_hue(text: str, rng: random.Random) -> float:
    words = [w.strip(",.;:!?()").lower() for w in text.split()]
    named = [HUES[w] for w in words if w in HUES]
    return (named[0] + rng.uniform(-0.03, 0.03)) if named else rng.random()


def paint(text: str, seed: int, width: int, height: int) -> Image.Image:
    """The picture for (text, seed) at width x height, with the demo mark."""
    picture = _landscape(text, seed, width, height)
    return mark_as_demo(picture)


def _landscape(text: str, seed: int, width: int, height: int) -> Image.Image:
    digest = hashlib.sha256(f"{seed}\x00{text}".encode()).digest()
    rng = random.Random(digest)
    hue = _base_hue(text, rng)
    dark = any(w.strip(",.;:!?()").lower() in DARK_WORDS for w in text.split())
    brightness = 0.45 if dark else 1.0

    # Paint at half the size and scale up: soft edges, and twice as fast.
    w, h = max(8, width // 2), max(8, height // 2)
    top = _rgb(hue + 0.55, 0.35, 0.95 * brightness)
    horizon = _rgb(hue + rng.uniform(-0.05, 0.05), 0.45, 0.98 * brightness)
    sky = Image.linear_gradient("L").resize((w, h))
    canvas = Image.composite(Image.new("RGB", (w, h), horizon), Image.new("RGB", (w, h), top), sky)

    glow = Image.new("RGB", (w, h), (0, 0, 0))
    sun_x, sun_y = rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.45) * h
    radius = rng.uniform(0.06, 0.12) * min(w, h)
    sun = _rgb(hue + 0.1, 0.2, 1.0)
    ImageDraw.Draw(glow).ellipse(
        (sun_x - 3 * radius, sun_y - 3 * radius, sun_x + 3 * radius, sun_y + 3 * radius), fill=sun
    )
    canvas = Image.blend(canvas, glow.filter(ImageFilter.GaussianBlur(2 * radius)), 0.45)
    ImageDraw.Draw(canvas).ellipse((sun_x - radius, sun_y - radius, sun_x + radius, sun_y + radius), fill=sun)

    layers = 3 + rng.randrange(2)
    for layer in range(layers):
        depth = (layer + 1) / layers
        base = h * (0.5 + 0.4 * depth) - rng.uniform(0, 0.1) * h
        waves = [(rng.uniform(0.5, 3.0), rng.uniform(0, math.tau), rng.uniform(0.02, 0.09)) for _ in range(3)]
        points = [
            (x, base - h * sum(a * math.sin(f * math.tau * x / w + p) for f, p, a in waves))
            for x in range(0, w + 4, 2)
        ]
        colour = _rgb(
            hue + 0.25 * depth + rng.uniform(-0.04, 0.04),
            0.3 + 0.4 * depth,
            (0.8 - 0.55 * depth) * brightness + 0.1,
        )
        ImageDraw.Draw(canvas).polygon([(0, h), *points, (w, h)], fill=colour)
    canvas = canvas.filter(ImageFilter.GaussianBlur(max(0.6, min(w, h) / 300)))
    return canvas.resize((width, height), Image.Resampling.BICUBIC)


def mark_as_demo(picture: Image.Image) -> Image.Image:
    """A small visible label: nobody should mistake these for a model's work."""
    if picture.width < 64 or picture.height < 32:
        return picture
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=max(8, min(picture.width, picture.height * 2) // 24))
    label = "ComfySite demo"
    left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
    pad = max(2, picture.width // 160)
    x = picture.width - (right - left) - 3 * pad
    y = picture.height - (bottom - top) - 3 * pad
    draw.rectangle((x - pad, y - pad, x + (right - left) + pad, y + (bottom - top) + pad), fill=(20, 20, 24))
    draw.text((x - left, y - top), label, fill=(240, 240, 240), font=font)
    return picture


def img2img(source: Image.Image, text: str, seed: int, denoise: float) -> Image.Image:
    """Image to image: the source with the prompt's picture over it; denoise 0 keeps the source."""
    painted = _landscape(text, seed, source.width, source.height)
    strength = max(0.0, min(1.0, denoise))
    return mark_as_demo(Image.blend(source.convert("RGB"), painted, strength))


def png_bytes(
    picture: Image.Image,
    prompt: dict[str, Any] | None,
    extra_pnginfo: dict[str, Any] | None,
    compress_level: int = 4,
) -> bytes:
    """A PNG as ComfyUI's SaveImage writes it: a `prompt` text chunk and one per extra_pnginfo key
    (the frontend's `workflow`)."""
    info = PngInfo()
    if prompt is not None:
        info.add_text("prompt", json.dumps(prompt))
    for key, value in (extra_pnginfo or {}).items():
        info.add_text(key, json.dumps(value))
    out = io.BytesIO()
    picture.save(out, "PNG", pnginfo=info, compress_level=compress_level)
    return out.getvalue()


def preview(small: Image.Image, seed: int, progress: float) -> Image.Image:
    """A latent preview at `progress` (0..1): the picture at latent resolution (1/8 of the
    image) emerging from noise, scaled to fit 512 x 512 as ComfyUI sends it."""
    small = small.convert("RGB")
    rng = random.Random(seed)
    noise = Image.frombytes("RGB", small.size, rng.randbytes(small.width * small.height * 3))
    noise = Image.blend(noise, Image.new("RGB", small.size, (128, 128, 128)), 0.4)
    mixed = Image.blend(noise, small, max(0.0, min(1.0, progress)) ** 0.7)
    return ImageOps.contain(mixed, (PREVIEW_SIZE, PREVIEW_SIZE), Image.Resampling.BILINEAR)


def jpeg(picture: Image.Image) -> bytes:
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=95)
    return out.getvalue()


def preview_frame(image: bytes) -> bytes:
    """Binary websocket frame type 1: [u32 type][u32 format 1=JPEG][JPEG bytes]."""
    return struct.pack(">II", PREVIEW_IMAGE, JPEG) + image


def preview_frame_with_metadata(image: bytes, metadata: dict[str, Any]) -> bytes:
    """Binary websocket frame type 4: [u32 type][u32 metadata length][metadata JSON][JPEG bytes]."""
    encoded = json.dumps({**metadata, "image_type": "image/jpeg"}).encode()
    return struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(encoded)) + encoded + image


def example_png() -> bytes:
    """input/example.png, as ComfyUI ships one."""
    return png_bytes(paint("example", 0, 512, 512), None, None)
