"""The emulator's pictures: deterministic, pleasant, and plainly marked as a demo."""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

from PIL import Image, ImageDraw, ImageFilter, ImageFont
from PIL.PngImagePlugin import PngInfo

MAX_SIDE = 2048


def _palette(seed_text: str) -> list[tuple[int, int, int]]:
    digest = hashlib.sha256(seed_text.encode()).digest()
    return [(digest[i], digest[i + 1], digest[i + 2]) for i in range(0, 24, 3)]


def paint(prompt_text: str, seed: int, width: int, height: int, *, index: int = 0) -> Image.Image:
    """A soft abstract picture, the same for the same prompt, seed and size."""
    width, height = max(16, min(width, MAX_SIDE)), max(16, min(height, MAX_SIDE))
    colours = _palette(f"{prompt_text}|{seed}|{index}")
    # Paint small and scale up: smooth gradients for free, and fast at any size.
    small_w, small_h = max(8, width // 8), max(8, height // 8)
    top, bottom = colours[0], colours[1]
    gradient = Image.linear_gradient("L").resize((small_w, small_h))
    canvas = Image.composite(
        Image.new("RGB", (small_w, small_h), bottom), Image.new("RGB", (small_w, small_h), top), gradient
    )
    draw = ImageDraw.Draw(canvas)
    digest = hashlib.sha256(f"{seed}|{prompt_text}|{index}".encode()).digest()
    for n in range(5):
        x, y = digest[n] / 255 * small_w, digest[n + 5] / 255 * small_h
        radius = (0.12 + digest[n + 10] / 255 * 0.3) * min(small_w, small_h)
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colours[2 + n])
    canvas = canvas.filter(ImageFilter.GaussianBlur(radius=max(1, min(small_w, small_h) / 12)))
    picture = canvas.resize((width, height), Image.Resampling.BICUBIC)
    return mark_as_demo(picture)


def mark_as_demo(picture: Image.Image) -> Image.Image:
    """A small visible label: nobody should mistake these for a model's work."""
    if picture.width < 96 or picture.height < 48:
        return picture
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=max(10, picture.width // 40))
    label = "ComfySite demo"
    left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
    pad = max(4, picture.width // 100)
    x, y = picture.width - (right - left) - 2 * pad, picture.height - (bottom - top) - 2 * pad
    draw.rectangle((x - pad, y - pad, picture.width - pad, picture.height - pad), fill=(0, 0, 0))
    draw.text((x, y - top), label, fill=(255, 255, 255), font=font)
    return picture


def blend(source: Image.Image, painted: Image.Image, strength: float) -> Image.Image:
    """Image to image: `strength` (denoise) 0 keeps the source, 1 replaces it."""
    return mark_as_demo(
        Image.blend(source.convert("RGB").resize(painted.size), painted, max(0.0, min(1.0, strength)))
    )


def png_bytes(picture: Image.Image, prompt: dict[str, Any], extra_pnginfo: dict[str, Any] | None) -> bytes:
    """PNG with the `prompt` text chunk (and `workflow`, if given) as ComfyUI's SaveImage writes."""
    info = PngInfo()
    info.add_text("prompt", json.dumps(prompt))
    for key, value in (extra_pnginfo or {}).items():
        info.add_text(key, json.dumps(value))
    out = io.BytesIO()
    picture.save(out, "PNG", pnginfo=info, compress_level=4)
    return out.getvalue()


def preview_jpeg(picture: Image.Image, progress: float) -> bytes:
    """A live preview: the final picture coming out of noise as sampling advances."""
    small = picture.copy()
    small.thumbnail((256, 256))
    blurred = small.filter(ImageFilter.GaussianBlur(radius=max(0.0, 12 * (1 - progress))))
    out = io.BytesIO()
    blurred.convert("RGB").save(out, "JPEG", quality=80)
    return out.getvalue()
