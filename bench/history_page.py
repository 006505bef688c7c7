"""History page at scale: one user's 100,000 images among 100 users, on SQLite or PostgreSQL.

Prints p50/p95 time (ms) of each request, and p50 of the time its SQL took, for:
- the first page, and the first page just after a new image (the totals heading);
- the htmx fragment scrolling loads at each depth (`--depths`, in images down the scroll);
- a search of the prompts on the first page, for a broad, a narrow, a rare and an absent term,
  and the pages it takes to search all of the history for the absent one;
with the number of queries each runs, and the bytes a browser transfers per page (HTML plus
the thumbnails it shows). On PostgreSQL the keyset pages are timed twice: straight after the
fill (statistics not yet gathered) and after ANALYZE.

    .venv/bin/python bench/history_page.py                       # throw-away SQLite file
    .venv/bin/python bench/history_page.py --database postgres://postgres@127.0.0.1:5432/comfysite_bench

A PostgreSQL database named by --database is DROPPED and made again: name one of your own.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--database",
        default="sqlite",
        help="'sqlite' (a throw-away file) or a postgres:// URL whose database is dropped and made again",
    )
    parser.add_argument("--images", type=int, default=100_000, help="images of the user measured")
    parser.add_argument("--users", type=int, default=100, help="users in all (the first is measured)")
    parser.add_argument(
        "--other-images", type=int, default=0, help="images shared among the other users (default none)"
    )
    parser.add_argument(
        "--depths",
        default="0,2000,20000,50000,80000,99960",
        help="comma-separated depths, in images down the scroll, of the pages timed",
    )
    parser.add_argument("--rounds", type=int, default=50, help="requests timed per figure")
    return parser.parse_args()


ARGS = options() if __name__ == "__main__" else None
if ARGS is not None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "comfysite.settings")
    os.environ["COMFYSITE_VAR_DIR"] = tempfile.mkdtemp(prefix="bench-history-")
    if ARGS.database == "sqlite":
        os.environ.pop("DATABASE_URL", None)
    else:
        import psycopg

        server, _, name = ARGS.database.rpartition("/")
        with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.execute(f'CREATE DATABASE "{name}"')
        os.environ["DATABASE_URL"] = ARGS.database

    import django

    django.setup()

from django.core.files.base import ContentFile  # noqa: E402
from django.core.files.storage import default_storage  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext, setup_test_environment  # noqa: E402
from django.urls import reverse  # noqa: E402
from PIL import Image  # noqa: E402

from bench.common import percentile  # noqa: E402
from generator.history import cursor_of  # noqa: E402
from generator.jobs import _thumbnail  # noqa: E402
from generator.models import GeneratedImage  # noqa: E402
from generator.tests.bulk import fill_history  # noqa: E402

# Terms matching an eighth of the prompts, one in 250, one, and none.
SEARCHES = [("broad", "forest"), ("narrow", "number 12"), ("rare", "number 12345 "), ("absent", "zebra")]


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


def get(client: Client, params: dict, **headers: str) -> Any:
    response = client.get(reverse("history"), params, **headers)
    assert response.status_code == 200, response.status_code
    return response


def timed(
    client: Client, params: dict, rounds: int, before: Callable[[], None] | None = None, **headers: str
):
    """Per request: wall time, and the time its SQL took (what the database costs, apart from
    rendering the page, which is the same work before and after a change), in ms."""
    times, sql_times = [], []
    for _ in range(rounds):
        if before:
            before()
        with CaptureQueriesContext(connection) as queries:
            started = time.perf_counter()
            response = get(client, params, **headers)
            times.append((time.perf_counter() - started) * 1000)
        sql_times.append(sum(float(q["time"]) for q in queries) * 1000)
    return times, sql_times, len(queries), response


def report(label: str, measured: tuple, thumbnail_bytes: int = 0) -> None:
    times, sql_times, queries, response = measured
    p50, p95 = percentile(times, 0.5), percentile(times, 0.95)
    line = (
        f"{label}: p50 {p50:.1f} ms, p95 {p95:.1f} ms; SQL p50 {percentile(sql_times, 0.5):.1f} ms"
        f" in {queries} queries"
    )
    if thumbnail_bytes:
        rows = len(response.context["page"].rows)
        html = len(response.content)
        line += (
            f"; {html / 1024:.1f} KiB HTML + {rows * thumbnail_bytes / 1024:.1f} KiB thumbnails"
            f" = {(html + rows * thumbnail_bytes) / 1024:.1f} KiB per page"
        )
    print(line, flush=True)


def cursor_at(owner: Any, depth: int) -> str:
    """The cursor of the page that starts `depth` images down the scroll."""
    created_at, pk = (
        GeneratedImage.objects.filter(owner=owner)
        .order_by("-created_at", "-pk")
        .values_list("created_at", "pk")[depth - 1]
    )
    return cursor_of(created_at, pk)


def keyset_pages(client: Client, owner: Any, depths: list[int], rounds: int, thumbnail: int) -> None:
    for depth in depths:
        if depth == 0:
            report("first page (whole page, totals)", timed(client, {}, rounds), thumbnail)
            continue
        params = {"cursor": cursor_at(owner, depth)}
        report(
            f"page at depth {depth:,} (htmx fragment)", timed(client, params, rounds, HTTP_HX_REQUEST="true")
        )


def searches(client: Client, rounds: int) -> None:
    for label, term in SEARCHES:
        measured = timed(client, {"q": term}, rounds)
        shown = len(measured[-1].context["page"].rows)
        report(f'search "{term}" ({label}), first page: {shown} images shown', measured)
    started, pages, cursor, found = time.perf_counter(), 0, None, 0
    while True:
        params = {"q": "zebra", **({"cursor": cursor} if cursor else {})}
        page = get(client, params, HTTP_HX_REQUEST="true").context["page"]
        pages, found, cursor = pages + 1, found + len(page.rows), page.next_cursor
        if cursor is None:
            break
    elapsed = (time.perf_counter() - started) * 1000
    print(
        f'search "zebra" through the whole history: {pages} requests, {elapsed:.0f} ms in all, {found} found'
    )


def main(args: argparse.Namespace) -> None:
    setup_test_environment()
    call_command("migrate", verbosity=0)
    thumbnail, _, _ = _thumbnail(realistic_png())
    thumb_name = default_storage.save("thumbnails/bench.webp", ContentFile(thumbnail))
    started = time.perf_counter()
    owner = fill_history(
        users=args.users,
        images_for_first=args.images,
        images_for_others=args.other_images,
        thumbnail_name=thumb_name,
    )[0]
    print(
        f"database: {connection.vendor}; {args.images:,} images for the user measured, "
        f"{args.other_images:,} for {args.users - 1} others; filled in {time.perf_counter() - started:.1f} s"
    )
    client = Client()
    client.force_login(owner)
    depths = [int(d) for d in args.depths.split(",") if d.strip()]
    if connection.vendor == "postgresql":
        print("-- PostgreSQL before ANALYZE (autovacuum may have gathered some statistics already)")
        keyset_pages(client, owner, depths, args.rounds, len(thumbnail))
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
        print("-- after ANALYZE")
    keyset_pages(client, owner, depths, args.rounds, len(thumbnail))
    prompt = GeneratedImage.objects.filter(owner=owner).first().prompt  # type: ignore[union-attr]
    outputs = itertools.count()

    def new_image() -> None:
        GeneratedImage.objects.create(prompt=prompt, node_id="bench", output_index=next(outputs))

    report("first page just after a new image", timed(client, {}, args.rounds, before=new_image))
    searches(client, args.rounds)


if __name__ == "__main__":
    assert ARGS is not None
    main(ARGS)
