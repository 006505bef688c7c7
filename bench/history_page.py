"""History page at scale: 100,000 images for one user among 100 users.

Prints p50/p95 time to render the first page and a page deep in the scroll, the number of
queries each runs, and the bytes a browser transfers per page (HTML plus the thumbnails it
shows). Uses a throw-away SQLite database, or DATABASE_URL if set.

    .venv/bin/python bench/history_page.py
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "comfysite.settings")
os.environ.setdefault("COMFYSITE_VAR_DIR", tempfile.mkdtemp(prefix="bench-history-"))

import django  # noqa: E402

django.setup()

from django.core.files.base import ContentFile  # noqa: E402
from django.core.files.storage import default_storage  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext, setup_test_environment  # noqa: E402
from django.urls import reverse  # noqa: E402
from PIL import Image  # noqa: E402

from generator.jobs import _thumbnail  # noqa: E402
from generator.tests.bulk import fill_history  # noqa: E402

ROUNDS = 50


def realistic_png() -> bytes:
    """A detailed 512x512 picture, so thumbnails weigh what real ones do."""
    import io

    picture = Image.effect_mandelbrot((512, 512), (-2.0, -1.25, 0.75, 1.25), 60).convert("RGB")
    tinted = Image.merge(
        "RGB", (picture.getchannel(0), picture.rotate(90).getchannel(0), picture.rotate(45).getchannel(0))
    )
    out = io.BytesIO()
    tinted.save(out, "PNG")
    return out.getvalue()


def timed(client: Client, url: str, params: dict, **headers: str) -> tuple[float, int, object]:
    started = time.perf_counter()
    response = client.get(url, params, **headers)
    elapsed = time.perf_counter() - started
    assert response.status_code == 200, response.status_code
    return elapsed, len(response.content), response


def main() -> None:
    setup_test_environment()
    call_command("migrate", verbosity=0)
    thumbnail, _, _ = _thumbnail(realistic_png())
    thumb_name = default_storage.save("thumbnails/bench.webp", ContentFile(thumbnail))
    started = time.perf_counter()
    owner = fill_history(users=100, images_for_first=100_000, thumbnail_name=thumb_name)[0]
    print(f"database: {connection.vendor}; filled 100,000 images in {time.perf_counter() - started:.1f} s")

    client = Client()
    client.force_login(owner)
    url = reverse("history")
    _, _, first = timed(client, url, {})
    cursor = first.context["page"].next_cursor
    for _ in range(50):  # 2,000 images down the scroll
        cursor = timed(client, url, {"cursor": cursor}, HTTP_HX_REQUEST="true")[2].context["page"].next_cursor

    for label, params, headers in [
        ("first page", {}, {}),
        ("page 52 (htmx fragment)", {"cursor": cursor}, {"HTTP_HX_REQUEST": "true"}),
    ]:
        times, size = [], 0
        for _ in range(ROUNDS):
            elapsed, size, response = timed(client, url, params, **headers)
            times.append(elapsed * 1000)
        with CaptureQueriesContext(connection) as queries:
            client.get(url, params, **headers)
        rows = len(response.context["page"].rows)
        transferred = size + rows * len(thumbnail)
        times.sort()
        print(
            f"{label}: p50 {statistics.median(times):.1f} ms, p95 {times[int(0.95 * len(times))]:.1f} ms, "
            f"{len(queries)} queries, {rows} thumbnails, {size / 1024:.1f} KiB HTML + "
            f"{rows * len(thumbnail) / 1024:.1f} KiB thumbnails = {transferred / 1024:.1f} KiB per page"
        )


if __name__ == "__main__":
    main()
