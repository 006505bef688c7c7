"""What the job cards' time estimates cost as the queue grows.

For queues of several lengths (jobs of many users, one running and one waiting in ComfyUI on
each of two backends, every rate measured), prints p50/p95 time and the queries of:
- a usual round of the bridge's telling of places and estimates (`moved_queue_places` over the
  first FRONT_LOOKED_AT queued jobs, at most once a second), and one over the whole queue (no
  round looks that far: see places_looked_at), each when every line changed;
- a form post's card (`waiting_state` for one new job), as the view renders it, and the place
  alone, as it was found before there were estimates.
Uses a throw-away SQLite database, or DATABASE_URL if set.

    .venv/bin/python bench/estimates.py [--queues 10,100,1000] [--rounds 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "comfysite.settings")
os.environ.setdefault("COMFYSITE_VAR_DIR", tempfile.mkdtemp(prefix="bench-estimates-"))

import django  # noqa: E402

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

from generator.estimates import Measurement, record_run  # noqa: E402
from generator.jobs import FRONT_LOOKED_AT, moved_queue_places  # noqa: E402
from generator.live import LiveState, save_live_state, waiting_state  # noqa: E402
from generator.models import Prompt  # noqa: E402

BACKENDS = ["http://gpu-1", "http://gpu-2"]
PARAMS = {"steps": 20, "width": 512, "height": 512, "seed": 1, "cfg": 7.0}
S = Prompt.Status


def fill(queued: int) -> Prompt:
    """`queued` jobs of 50 users, and on each backend one running and one waiting; the last job."""
    Prompt.objects.all().delete()
    users = [get_user_model().objects.get_or_create(username=f"bench{n}")[0] for n in range(50)]
    for backend in BACKENDS:
        record_run(backend, "txt2img", PARAMS, Measurement(20, 0.5, 2.0, 1.0))
        running = Prompt.objects.create(owner=users[0], workflow="txt2img", params=PARAMS)
        Prompt.objects.filter(pk=running.pk).update(status=S.RUNNING, backend=backend)
        save_live_state(running.pk, LiveState(seconds_left=5.0))
        waiting = Prompt.objects.create(owner=users[1], workflow="txt2img", params=PARAMS)
        Prompt.objects.filter(pk=waiting.pk).update(status=S.SUBMITTED, backend=backend)
    Prompt.objects.bulk_create(
        Prompt(owner=users[n % len(users)], workflow="txt2img", params=PARAMS) for n in range(queued)
    )
    return Prompt.objects.filter(status=S.QUEUED).latest("pk")


def measure(
    work: Callable[[], object], rounds: int, before: Callable[[], object] = lambda: None
) -> tuple[float, float, int]:
    times = []
    for _ in range(rounds):
        before()
        started = time.perf_counter()
        work()
        times.append((time.perf_counter() - started) * 1000)
    before()
    with CaptureQueriesContext(connection) as queries:
        work()
    return statistics.median(times), statistics.quantiles(times, n=20)[-1], len(queries)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--queues", default="10,100,1000", help="queue lengths, comma separated")
    parser.add_argument("--rounds", type=int, default=30)
    options = parser.parse_args()
    call_command("migrate", verbosity=0)
    print(f"database: {connection.vendor}")
    print(
        "queued | a round of telling places, all moved | the whole queue told, all moved | a new"
        " job's place and estimate | its place alone (before estimates)"
    )
    for queued in (int(n) for n in options.queues.split(",")):
        newest = fill(queued)

        def nothing_told() -> object:
            return Prompt.objects.update(told_place=None, told_estimate="")

        figures = [
            measure(lambda: moved_queue_places(FRONT_LOOKED_AT), options.rounds, nothing_told),
            measure(moved_queue_places, options.rounds, nothing_told),
            measure(lambda job=newest: waiting_state([job]), options.rounds),
            measure(lambda job=newest: waiting_state([job], estimate=False), options.rounds),
        ]
        cells = [f"p50 {p50:.2f} ms, p95 {p95:.2f} ms, {queries} queries" for p50, p95, queries in figures]
        print(f"{queued} | " + " | ".join(cells))


if __name__ == "__main__":
    main()
