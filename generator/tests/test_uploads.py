"""Uploaded images are checked with Pillow: real, bounded, re-encoded; everything else refused."""

import io
import struct
import zlib

import pytest
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image

from generator.uploads import reencoded_image


def upload(data: bytes, name: str = "in.png") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type="image/png")


def encoded(fmt: str = "PNG", size=(64, 32), mode="RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, (10, 200, 90) if mode == "RGB" else None).save(out, fmt)
    return out.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming a huge canvas, compressed to almost nothing."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    raw = zlib.compress(b"\0" * (width + 1) * 16, 9)  # a few rows are enough to look real

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_a_real_image_is_accepted_and_re_encoded_as_png(fmt):
    data = reencoded_image(upload(encoded(fmt)))

    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    assert image.size == (64, 32)


def test_re_encoding_drops_what_the_file_carried_besides_pixels():
    payload = encoded() + b"<script>alert(1)</script>"

    assert b"<script>" not in reencoded_image(upload(payload))


def test_a_file_that_is_not_an_image_is_refused():
    with pytest.raises(ValidationError, match="not an image"):
        reencoded_image(upload(b"just some text, named like a picture", "not_really.png"))


def test_a_truncated_image_is_refused():
    with pytest.raises(ValidationError, match="damaged or truncated"):
        reencoded_image(upload(encoded("JPEG")[:200], "cut.jpg"))


def test_too_many_bytes_are_refused(settings):
    settings.MAX_UPLOAD_BYTES = 1000

    with pytest.raises(ValidationError, match="images may be at most"):
        reencoded_image(upload(encoded(size=(256, 256), mode="RGB") + b"\0" * 2000))


def test_too_many_pixels_are_refused(settings):
    settings.MAX_UPLOAD_PIXELS = 1000

    with pytest.raises(ValidationError, match="megapixels"):
        reencoded_image(upload(encoded(size=(100, 100))))


def test_a_decompression_bomb_is_refused_before_it_is_decoded():
    bomb = bomb_png(60_000, 60_000)  # 3.6 gigapixels in a few kilobytes
    assert len(bomb) < 10_000

    with pytest.raises(ValidationError, match=r"pixels|not an image"):
        reencoded_image(upload(bomb))
