"""The queue at scale: what one job costs with 100 and with 50,000 jobs waiting (issue #15).

For each queue size it fills the database with that many queued jobs over `--users` users (one
of them, the user with most jobs, owns `--heavy` of them; two more jobs are on a GPU, one
running and one waiting in ComfyUI; the GPU's speed measured, so cards carry estimates), tells
every place once (as the cards posted would have), then times, `--rounds` times each:

- claim: the bridge's claim path (the jobs on GPUs, the least-work check, the claim), the job
  put back afterwards so the queue keeps its length;
- form POST: the generate form posted by a user with a few dozen jobs queued (the job deleted
  after);
- GET /: the home page of the user with most jobs;
- per-dispatch work: after a job starts and the next is claimed, the bridge's round of telling
  the places that moved (each round as deep as places_looked_at says: the figures show the
  usual rounds and the deepest);
- websocket connect: a tab of the user with most jobs, until its snapshot arrives.

With --idle QUEUED it measures instead the backend's idle time between jobs of 0.2 s while the
site (`manage.py serve`, in a process of its own, with its bridge) works through QUEUED jobs.

    .venv/bin/python bench/queue_scale.py --database sqlite
    .venv/bin/python bench/queue_scale.py --database postgres://postgres@127.0.0.1:5432/comfysite_queue
    .venv/bin/python bench/queue_scale.py --database sqlite --idle 10000
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", default="sqlite", help="sqlite (a throw-away file) or a PostgreSQL URL")
    parser.add_argument("--queued", default="100,50000", help="queue sizes to measure, comma-separated")
    parser.add_argument("--users", type=int, default=1000, help="users the queued jobs belong to")
    parser.add_argument("--heavy", type=int, default=5000, help="jobs of the user with most (capped at half)")
    parser.add_argument("--rounds", type=int, default=30, help="timed repetitions of each figure")
    parser.add_argument(
        "--idle",
        type=int,
        default=0,
        metavar="QUEUED",
        help="instead: the backend's idle time between jobs (0.2 s each) with QUEUED jobs waiting, "
        "the site (manage.py serve) and the emulator in processes of their own",
    )
    parser.add_argument("--idle-jobs", type=int, default=60, help="jobs run for --idle")
    return parser.parse_args()


ARGS = parse_args()
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "comfysite.settings")
os.environ.setdefault("COMFYSITE_VAR_DIR", tempfile.mkdtemp(prefix="bench-queue-"))
if ARGS.database != "sqlite":
    os.environ["DATABASE_URL"] = ARGS.database

import django  # noqa: E402

django.setup()

from channels.testing import WebsocketCommunicator  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import setup_test_environment  # noqa: E402
from django.urls import reverse  # noqa: E402
from django.utils import timezone  # noqa: E402

from bench.common import small_job  # noqa: E402
from generator import backends, jobs  # noqa: E402
from generator.consumers import JobsConsumer  # noqa: E402
from generator.estimates import Measurement, record_run  # noqa: E402
from generator.models import Prompt  # noqa: E402
from generator.scheduling import site_queue  # noqa: E402

S = Prompt.Status
GPU = "http://gpu.bench:8188"


SMALL_JOB = {
    "seed": 1,
    "steps": 8,
    "cfg": 7.0,
    "width": 64,
    "height": 64,
    "sampler": "euler",
    "scheduler": "normal",
    "batch_size": 1,
    "checkpoint": "v1-5-pruned-emaonly.safetensors",
}


def fill(queued: int, users: int, heavy: int, *, on_gpu: bool = True) -> tuple[object, object]:
    """`queued` jobs over `users` users as the site would have queued them all at once (each
    owner's turns 0, 1, 2...), two more on a GPU (`on_gpu`); the user with most jobs and a light
    one."""
    User = get_user_model()
    Prompt.objects.all().delete()
    User.objects.filter(username__startswith="queue").delete()
    people = User.objects.bulk_create([User(username=f"queue{n}") for n in range(users)])
    heavy = min(heavy, queued // 2)
    owners = [people[0]] * heavy + [people[1 + n % (users - 1)] for n in range(queued - heavy)]
    start = timezone.now() - datetime.timedelta(hours=1)
    turns: dict[int, int] = {}
    rows = []
    for n, owner in enumerate(owners):
        turn = turns.get(owner.pk, 0)
        turns[owner.pk] = turn + 1
        rows.append(
            Prompt(
                owner=owner,
                workflow="txt2img",
                positive_text=f"queued job {n}",
                params={**SMALL_JOB, "seed": n},
                created_at=start + datetime.timedelta(milliseconds=n),
                turn=turn,
            )
        )
    Prompt.objects.bulk_create(rows, batch_size=2000)
    # The GPU's speed is measured, as after its first job: every card and round of places
    # carries an estimate of the time to done.
    record_run(GPU, "txt2img", SMALL_JOB, Measurement(8, 0.1, 0.5, 0.2))
    for status in (S.RUNNING, S.SUBMITTED) if on_gpu else ():
        job = jobs.claim_next_job(GPU, on_demo_backend=True)
        assert job is not None
        if status == S.RUNNING:
            Prompt.objects.get(pk=job.job.pk).transition_to(S.RUNNING)
    jobs.moved_queue_places()  # every place told once, as the posted cards did
    if connection.vendor == "postgresql":
        # As autovacuum leaves a table after a burst of writes. Counting a place reads the
        # queue's index alone only where the visibility map says the rows' pages are unchanged:
        # straight after every row was written, a count of 45,000 places took 15 ms, not 4.
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE generator_prompt")
    return people[0], people[-1]


CPU_TIMES: list[float] = []  # this process's CPU time of each timed action, ms


def timed(action: Callable[[], object], rounds: int) -> list[float]:
    """Wall times of `rounds` runs of `action`, ms; their CPU times go to CPU_TIMES."""
    times = []
    CPU_TIMES.clear()
    for _ in range(rounds):
        started, cpu = time.perf_counter(), time.process_time()
        action()
        times.append((time.perf_counter() - started) * 1000)
        CPU_TIMES.append((time.process_time() - cpu) * 1000)
    return times


def summary(times: list[float], cpu: list[float] | None = None) -> str:
    """p50/p95/max of wall times, and the median CPU time of this process (on a shared machine
    the steadier figure; with PostgreSQL it leaves out the database server's part)."""
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    cpu = CPU_TIMES if cpu is None else cpu
    cpu_text = f"; CPU p50 {statistics.median(cpu):6.2f} ms" if cpu else ""
    return f"p50 {statistics.median(ordered):7.2f} ms, p95 {p95:7.2f} ms, max {ordered[-1]:7.2f} ms{cpu_text}"


def claim_and_put_back() -> None:
    queue = site_queue()
    assert backends.has_least_work(GPU, depth=2, peers=[], load=queue.per_backend)
    claimed = jobs.claim_next_job(GPU, on_demo_backend=True, queue=queue)
    assert claimed is not None
    jobs.unsubmit(claimed.job.pk)


def post_form(client: Client) -> None:
    form = {**small_job(20), "prompt": "a lighthouse at dusk"}
    response = client.post(reverse("generate"), form, HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert 'data-status="queued"' in response.text, response.text[:500]
    Prompt.objects.filter(pk=Prompt.objects.latest("pk").pk).delete()


def get_home(client: Client) -> None:
    response = client.get(reverse("home"))
    assert response.status_code == 200


def gpu_moves_on() -> None:
    """The GPU finishes its running job and starts the one waiting in ComfyUI."""
    Prompt.objects.get(status=S.RUNNING).transition_to(S.SUCCEEDED)
    Prompt.objects.get(status=S.SUBMITTED).transition_to(S.RUNNING)


def dispatch_rounds(rounds: int) -> tuple[list[float], list[float], list[float], int]:
    """The bridge's work per dispatch, per round: the claim of the next job, then its round of
    telling the places that moved (as deep as places_looked_at says). Returns the times of the
    claim and places of the usual rounds, of the deepest round, the places alone, jobs told."""
    usual, deepest, places, told = [], [], [], 0
    CPU_TIMES.clear()
    deepest_round = 1 << max(0, (rounds - 1).bit_length() - 1)
    for number in range(1, rounds + 1):
        gpu_moves_on()
        started, cpu = time.perf_counter(), time.process_time()
        assert jobs.claim_next_job(GPU, on_demo_backend=True) is not None
        claimed = time.perf_counter()
        relays = jobs.moved_queue_places(jobs.places_looked_at(number))
        done = time.perf_counter()
        told += sum(len(relay.events) for relay in relays)
        if number == deepest_round:
            deepest.append((done - started) * 1000)
        else:
            usual.append((done - started) * 1000)
            CPU_TIMES.append((time.process_time() - cpu) * 1000)
        places.append((done - claimed) * 1000)
    return usual, deepest, places, told


async def websocket_connects(user: object, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        communicator = WebsocketCommunicator(JobsConsumer.as_asgi(), "/ws/jobs/")
        communicator.scope["user"] = user
        started = time.perf_counter()
        connected, _ = await communicator.connect()
        assert connected
        snapshot = await communicator.receive_from(timeout=30)
        times.append((time.perf_counter() - started) * 1000)
        assert "more queued" in snapshot
        await communicator.disconnect()
    return times


def measure(queued: int) -> None:
    started = time.perf_counter()
    heaviest, light = fill(queued, ARGS.users, ARGS.heavy)
    print(
        f"\n{queued:,} queued over {ARGS.users:,} users ({connection.vendor}); filled in "
        f"{time.perf_counter() - started:.1f} s"
    )
    rounds = ARGS.rounds
    print(f"  claim                      {summary(timed(claim_and_put_back, rounds))}")
    poster = Client()
    poster.force_login(light)
    print(f"  form POST                  {summary(timed(lambda: post_form(poster), rounds))}")
    home = Client()
    home.force_login(heaviest)
    print(f"  GET / (most jobs)          {summary(timed(lambda: get_home(home), rounds))}")
    usual, deepest, places, told = dispatch_rounds(rounds)
    deepest_round = 1 << max(0, (rounds - 1).bit_length() - 1)
    print(f"  per dispatch: claim+places {summary(usual)} ({told} places told in {rounds} rounds)")
    print(f"    places alone             {summary(places, [])}")
    print(f"    deepest round ({jobs.places_looked_at(deepest_round)} jobs looked at): {deepest[0]:.2f} ms")
    full = timed(lambda: jobs.moved_queue_places(None), 1)
    print(f"    the whole queue at once (no round looks that far): {full[0]:.2f} ms")
    sockets = asyncio.run(websocket_connects(heaviest, rounds))
    print(f"  websocket connect (most)   {summary(sockets, [])}")


async def idle_between_jobs(queued: int, jobs_run: int) -> None:
    """The emulator's idle time between consecutive jobs while the site works through a queue of
    `queued` (0.2 s per job), as bench/live_pipeline.py measures it for a queue of 50."""
    from asgiref.sync import sync_to_async

    from bench.common import EmulatorProcess, run_site

    await sync_to_async(fill)(queued, ARGS.users, ARGS.heavy, on_gpu=False)
    await sync_to_async(jobs.moved_queue_places)()  # every place told, as the posted cards did
    emulator = EmulatorProcess(step_seconds=0.025)  # 8 steps: 0.2 s per job
    site = await run_site(emulator.url)
    try:
        deadline = time.monotonic() + jobs_run * 2 + 60
        while await Prompt.objects.filter(status=S.SUCCEEDED).acount() < jobs_run:
            assert time.monotonic() < deadline, "the jobs did not run"
            await asyncio.sleep(0.2)
    finally:
        site.stop()
        runs = emulator.stop()["runs"]
    gaps = [(runs[i + 1][0] - runs[i][1]) * 1000 for i in range(len(runs) - 1)]
    per_job = statistics.median(end - start for start, end in runs)
    ordered = sorted(gaps)
    print(
        f"backend idle between jobs, {queued:,} queued ({connection.vendor}, {per_job:.2f} s per job, "
        f"{len(runs)} jobs): median {statistics.median(ordered):.2f} ms, "
        f"p95 {ordered[int(0.95 * len(ordered))]:.2f} ms, max {ordered[-1]:.2f} ms"
    )


def main() -> None:
    setup_test_environment()
    settings.DEBUG = False
    settings.DEFAULT_QUOTA = {"max_queued": None, "max_running": None, "max_images_per_day": None}
    settings.ALLOWED_HOSTS = ["*"]
    call_command("migrate", verbosity=0)
    if ARGS.idle:
        asyncio.run(idle_between_jobs(ARGS.idle, ARGS.idle_jobs))
        return
    for queued in (int(size) for size in ARGS.queued.split(",")):
        measure(queued)


if __name__ == "__main__":
    main()
