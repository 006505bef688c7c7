"""Checking images users upload: real images, bounded in bytes and pixels, re-encoded.

Pillow reads only the header to learn the size, so a decompression bomb (a tiny file that
decodes to gigapixels) is refused before any pixel is decoded. Re-encoding to PNG drops
whatever else the file carried (metadata, trailing data, polyglot payloads).

Images that ComfyUI cannot work with are refused here, on the form, not by a failed job later:
each side from 16 pixels (the smallest image ComfyUI's EmptyLatentImage makes; the VAE works
in 8-pixel blocks, so a 1 × 1 image encodes to nothing) to 16,384 (ComfyUI's MAX_RESOLUTION).
A workflow's result is held to the same bounds as an upload (see `output_size_problem`), so
every image the site stores can be thumbnailed and used as a source again.
"""

from __future__ import annotations

import io
import struct
import warnings

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import UploadedFile
from PIL import Image, ImageOps, UnidentifiedImageError

ACCEPTED_FORMATS = {"PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"}
MIN_SIDE = 16
MAX_SIDE = 16384


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1_000_000:.0f} megapixels"


def size_problem(width: int, height: int) -> str | None:
    """Why an image of this size cannot be a workflow's input, or None if it can."""
    if min(width, height) < MIN_SIDE:
        return (
            f"This image is {width} × {height} pixels; images must be at least "
            f"{MIN_SIDE} pixels on each side."
        )
    if max(width, height) > MAX_SIDE:
        return f"This image is {width} × {height} pixels; images may be at most {MAX_SIDE} pixels on a side."
    if width * height > settings.MAX_UPLOAD_PIXELS:
        return (
            f"This image is {width} × {height} pixels; at most "
            f"{_megapixels(settings.MAX_UPLOAD_PIXELS)} are accepted."
        )
    return None


def output_size_problem(width: int, height: int, scale: float) -> str | None:
    """Why a workflow that scales a `width` × `height` input by `scale` must not run, or None.
    The result is held to the bounds of an upload: a 185-megapixel result would be stored but
    could not be thumbnailed or opened again."""
    out_width, out_height = round(width * scale), round(height * scale)  # as ComfyUI's ImageScaleBy
    too_small = min(out_width, out_height) < MIN_SIDE
    too_large = max(out_width, out_height) > MAX_SIDE or out_width * out_height > settings.MAX_UPLOAD_PIXELS
    if not (too_small or too_large):
        return None
    if too_small:
        bounds = f"results must be at least {MIN_SIDE} pixels on each side"
    else:
        bounds = (
            f"results may be at most {_megapixels(settings.MAX_UPLOAD_PIXELS)}, {MAX_SIDE} pixels on a side"
        )
    return (
        f"Scaled ×{scale:g}, this {width} × {height} image would be {out_width} × {out_height} pixels; "
        f"{bounds}. Choose another scale or another image."
    )


def png_size(data: bytes) -> tuple[int, int]:
    """The size of an image `reencoded_image` returned (read from its header only)."""
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def reencoded_image(upload: UploadedFile) -> bytes:
    """PNG bytes of the uploaded image, or a ValidationError that says what is wrong."""
    if upload.size and upload.size > settings.MAX_UPLOAD_BYTES:
        raise ValidationError(
            f"This file is {_megabytes(upload.size)}; "
            f"images may be at most {_megabytes(settings.MAX_UPLOAD_BYTES)}.",
            code="too_large",
        )
    upload.seek(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        # Warnings about corrupt EXIF would reach the log for files anyone can send; re-encoding
        # drops EXIF anyway.
        warnings.simplefilter("ignore", UserWarning)
        try:
            with Image.open(upload) as image:
                if image.format not in ACCEPTED_FORMATS:
                    raise ValidationError(f"{image.format} images are not accepted; use PNG, JPEG or WebP.")
                problem = size_problem(*image.size)
                if problem:
                    raise ValidationError(problem, code="bad_size")
                image.load()
                upright = ImageOps.exif_transpose(image)
                converted = upright.convert(
                    "RGBA" if "A" in upright.getbands() or upright.mode == "P" else "RGB"
                )
        except ValidationError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            # Pillow refuses to open these before we see their size: a decompression bomb.
            raise ValidationError(
                f"This image has more than {_megapixels(Image.MAX_IMAGE_PIXELS or 0)}; at most "
                f"{_megapixels(settings.MAX_UPLOAD_PIXELS)} are accepted.",
                code="bad_size",
            ) from None
        except UnidentifiedImageError:
            raise ValidationError(
                "This file is not an image we can read; use PNG, JPEG or WebP.", code="not_an_image"
            ) from None
        # struct.error: EXIF whose tags do not hold the types they should (exif_transpose).
        except (OSError, ValueError, SyntaxError, struct.error):
            raise ValidationError("This image is damaged or truncated.", code="damaged") from None
    out = io.BytesIO()
    converted.save(out, "PNG", optimize=False)
    return out.getvalue()
