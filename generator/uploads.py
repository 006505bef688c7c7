"""Checking images users upload: real images, bounded in bytes and pixels, re-encoded.

Pillow reads only the header to learn the size, so a decompression bomb (a tiny file that
decodes to gigapixels) is refused before any pixel is decoded. Re-encoding to PNG drops
whatever else the file carried (metadata, trailing data, polyglot payloads).
"""

from __future__ import annotations

import io
import warnings

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import UploadedFile
from PIL import Image, ImageOps, UnidentifiedImageError

ACCEPTED_FORMATS = {"PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"}


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"


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
        try:
            with Image.open(upload) as image:
                if image.format not in ACCEPTED_FORMATS:
                    raise ValidationError(f"{image.format} images are not accepted; use PNG, JPEG or WebP.")
                width, height = image.size
                if width * height > settings.MAX_UPLOAD_PIXELS:
                    raise ValidationError(
                        f"This image is {width} × {height} pixels; at most "
                        f"{settings.MAX_UPLOAD_PIXELS / 1_000_000:.0f} megapixels are accepted.",
                        code="too_many_pixels",
                    )
                image.load()
                upright = ImageOps.exif_transpose(image)
                converted = upright.convert(
                    "RGBA" if "A" in upright.getbands() or upright.mode == "P" else "RGB"
                )
        except ValidationError:
            raise
        except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ValidationError("This file is not an image we can read.", code="not_an_image") from None
        except (OSError, ValueError, SyntaxError):
            raise ValidationError("This image is damaged or truncated.", code="damaged") from None
    out = io.BytesIO()
    converted.save(out, "PNG", optimize=False)
    return out.getvalue()
