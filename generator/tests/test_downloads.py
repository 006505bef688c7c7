"""Downloads: readable parameters in any script, and zips built an image at a time."""

from __future__ import annotations

import asyncio
import io
import zipfile

import pytest
from PIL import Image

from generator.downloads import download_bytes, download_name, zip_parts, zip_stream

from .factories import GeneratedImageFactory, PromptFactory

pytestmark = pytest.mark.django_db


def test_a_prompt_in_any_script_survives_in_the_downloaded_png():
    prompt = PromptFactory(positive_text="🎨 a lighthouse — שלום, 灯台", negative_text="blurry")
    image = GeneratedImageFactory(prompt=prompt)

    downloaded = Image.open(io.BytesIO(download_bytes(image)))

    assert downloaded.text["parameters"].startswith("🎨 a lighthouse — שלום, 灯台")
    assert "prompt" not in downloaded.text


def test_a_zip_is_produced_an_image_at_a_time_and_holds_every_download():
    images = [GeneratedImageFactory() for _ in range(3)]

    parts = list(zip_parts(images))

    assert len(parts) == 4  # one part per image, then the directory
    archive = zipfile.ZipFile(io.BytesIO(b"".join(parts)))
    assert archive.namelist() == [download_name(image) for image in images]
    assert archive.read(download_name(images[1])) == download_bytes(images[1])
    assert archive.testzip() is None


@pytest.mark.django_db(transaction=True)
def test_the_async_zip_stream_gives_the_same_archive():
    images = [GeneratedImageFactory() for _ in range(2)]

    async def collect() -> bytes:
        return b"".join([part async for part in zip_stream(images)])

    streamed = asyncio.run(collect())

    assert streamed == b"".join(zip_parts(images))
