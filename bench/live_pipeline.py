"""The live pipeline, measured: form → bridge → ComfyUI (emulator) → Channels → a browser's websocket.

Runs the site as `manage.py serve` does (uvicorn and the bridge in one process, in-memory channel
layer, SQLite) against the emulator in a process of its own; this process plays the browser
tabs (websocket clients, form posts).

1. Relay latency: the emulator sends a `progress` message → the owner's tab receives the
   fragment showing that step. p50/p99 with 1 job at a time (60 jobs) and with 50 jobs posted
   at once (4 rounds) (target p99 < 20 ms). At zero step time the bridge relays each job's last
   step (the others come within its 50 ms throttle), so there is one fragment per job.
2. Overhead per job: POST the form → the tab receives the finished card, minus the same
   workflow sent straight to the emulator (POST /prompt → `executing` null). Target p50 < 30 ms.
3. Backend idle time between consecutive jobs of a queue of 50 at 0.2 s per job, against a
   submit-then-poll loop (the usual Flask script, polling /history once a second).

    .venv/bin/python bench/live_pipeline.py
    .venv/bin/python bench/live_pipeline.py --step-seconds 0.25 --solo-jobs 20 --skip-idle  # 2 s jobs
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "comfysite.settings")
os.environ["COMFYSITE_VAR_DIR"] = tempfile.mkdtemp(prefix="bench-live-")
os.environ.setdefault("LOG_LEVEL", "WARNING")
os.environ.update(QUOTA_MAX_QUEUED="1000", QUOTA_MAX_IMAGES_PER_DAY="100000")

import django  # noqa: E402

django.setup()

from asgiref.sync import sync_to_async  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402

from bench.common import (  # noqa: E402
    EmulatorProcess,
    Phases,
    SiteProcess,
    Tab,
    comfy_ids,
    cpu_per_job_by_thread,
    cpu_seconds,
    direct_job_seconds,
    ms,
    percentile,
    relay_latencies,
    run_site,
    session_cookie,
    small_job,
    thread_cpu_seconds,
)
from generator.comfy.client import ComfyClient  # noqa: E402

SMALL_JOB = small_job(steps=8)


async def user_tab(site: str, username: str) -> Tab:
    """A new user's tab, logged in and connected."""
    user = await sync_to_async(get_user_model().objects.create_user)(username, password="x")
    tab = Tab(site, await sync_to_async(session_cookie)(user), SMALL_JOB)
    await tab.open()
    return tab


def idle_gaps(runs: list[list[float]]) -> list[float]:
    return [(runs[i + 1][0] - runs[i][1]) * 1000 for i in range(len(runs) - 1)]


async def poll_loop(emulator: EmulatorProcess, count: int, poll_seconds: float) -> None:
    """The usual Flask script: submit, poll /history every `poll_seconds`, then submit the next."""
    from generator.workflows import get_workflow

    graph = get_workflow("txt2img").fill({"width": 64, "height": 64, "steps": 4}, filename_prefix="poll")
    async with ComfyClient(emulator.url) as comfy:
        for n in range(count):
            graph["3"]["inputs"]["seed"] = 50_000 + n
            prompt_id = (
                await comfy.queue_prompt(graph, prompt_id=str(uuid.uuid4()), client_id="poll")
            ).prompt_id
            while await comfy.history(prompt_id) is None:  # noqa: ASYNC110
                await asyncio.sleep(poll_seconds)


async def stop_site(site: SiteProcess, tabs: list[Tab]) -> None:
    for tab in tabs:
        await tab.close()
    site.stop()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--solo-jobs", type=int, default=60, help="jobs one at a time (latency, overhead)")
    parser.add_argument(
        "--crowd-rounds", type=int, default=4, help="rounds of 50 jobs at once (4: a p99 of 200 fragments)"
    )
    parser.add_argument(
        "--step-seconds",
        type=float,
        default=0.0,
        help="the emulator's time per step for the latency and overhead jobs (8 steps; 0.25: 2 s jobs)",
    )
    parser.add_argument("--skip-idle", action="store_true", help="leave out the idle-time figures")
    return parser.parse_args()


ARGS = parse_args()


async def latency_and_overhead() -> None:
    emulator = EmulatorProcess(step_seconds=ARGS.step_seconds)
    site = await run_site(emulator.url)
    tabs: list[Tab] = []
    try:
        solo = await user_tab(site.url, "solo")
        tabs.append(solo)
        overheads, solo_jobs, solo_times = [], [], {}
        site_cpu, threads_before = cpu_seconds(site.process.pid), thread_cpu_seconds(site.process.pid)
        for n in range(ARGS.solo_jobs):
            pk, started = await solo.generate(f"solo job {n}")
            finished = await solo.finished_at(pk)
            overheads.append(finished - started)
            solo_jobs.append(pk)
            solo_times[pk] = (started, finished)
        site_cpu_per_job = (cpu_seconds(site.process.pid) - site_cpu) / ARGS.solo_jobs * 1000
        threads_after = thread_cpu_seconds(site.process.pid)
        by_thread = cpu_per_job_by_thread(threads_before, threads_after, ARGS.solo_jobs)
        direct = await direct_job_seconds(emulator, min(30, ARGS.solo_jobs))
        crowd = [await user_tab(site.url, f"user{n}") for n in range(50)]
        tabs += crowd
        crowd_jobs = []
        for round_ in range(ARGS.crowd_rounds):
            posts = (tab.generate(f"crowd job {round_}.{n}") for n, tab in enumerate(crowd))
            batch = await asyncio.gather(*posts)
            await asyncio.gather(*(tab.finished_at(pk) for tab, (pk, _) in zip(crowd, batch, strict=True)))
            crowd_jobs += [pk for pk, _ in batch]
    finally:
        await stop_site(site, tabs)
        timeline = emulator.stop()
        progress = timeline["progress"]

    solo_latency = [ms for _, ms in await relay_latencies([solo], solo_jobs, progress)]
    crowd_latency = [ms for _, ms in await relay_latencies(crowd, crowd_jobs, progress)]
    for label, values in [("1 job", solo_latency), ("50 jobs", crowd_latency)]:
        if not values:  # --crowd-rounds 0
            continue
        p50, p99 = statistics.median(values), percentile(values, 0.99)
        print(
            f"relay latency, {label}: p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {max(values):.2f} ms "
            f"({len(values)} progress fragments)"
        )
    site_p50, direct_p50 = statistics.median(overheads) * 1000, statistics.median(direct) * 1000
    print(
        f"overhead per job: through the site p50 {site_p50:.1f} ms, straight to the emulator p50 "
        f"{direct_p50:.1f} ms, difference {site_p50 - direct_p50:.1f} ms; "
        f"the site's process used {site_cpu_per_job:.1f} ms of CPU per job (DEBUG={settings.DEBUG}): "
        f"{by_thread}"
    )
    answered = statistics.median(
        (solo.answered_at[pk] - posted) * 1000 for pk, (posted, _) in solo_times.items()
    )
    ids, phases = await comfy_ids(list(solo_times)), Phases()
    for pk, (posted, finished) in solo_times.items():
        phases.add(posted, timeline["executions"][ids[pk]], finished)
    before, after = ms(phases.before), ms(phases.after)
    print(
        f"  of which: form POST → ComfyUI starts the job p50 {before:.1f} ms (the post answered after "
        f"{answered:.1f} ms), ComfyUI ends it → the finished card on the tab p50 {after:.1f} ms "
        "(the emulator's own start and end)"
    )


async def idle_time() -> None:
    emulator = EmulatorProcess(step_seconds=0.025)  # 8 steps: 0.2 s per job
    site = await run_site(emulator.url)
    tabs: list[Tab] = []
    try:
        solo = await user_tab(site.url, "queue")
        tabs.append(solo)
        queued = [await solo.generate(f"queue job {n}") for n in range(50)]
        for pk, _ in queued:
            await solo.finished_at(pk)
    finally:
        await stop_site(site, tabs)
        runs = emulator.stop()["runs"]
    gaps = idle_gaps(runs)
    per_job = statistics.median(end - start for start, end in runs)
    print(
        f"backend idle between jobs (queue of 50, {per_job:.2f} s per job): "
        f"median {statistics.median(gaps):.2f} ms, "
        f"p95 {percentile(gaps, 0.95):.2f} ms, max {max(gaps):.2f} ms"
    )
    poller = EmulatorProcess(step_seconds=0.05)  # 4 steps: 0.2 s per job
    await poll_loop(poller, 10, 1.0)
    poll_gaps = idle_gaps(poller.stop()["runs"])
    print(
        f"submit-then-poll loop (1 s poll), same emulator: idle median {statistics.median(poll_gaps):.0f} ms"
    )


async def main() -> None:
    await sync_to_async(call_command)("migrate", verbosity=0)
    print(
        f"database {settings.DATABASES['default']['ENGINE']}, "
        f"channel layer {settings.CHANNEL_LAYERS['default']['BACKEND']}"
    )
    await latency_and_overhead()
    if not ARGS.skip_idle:
        await idle_time()


if __name__ == "__main__":
    asyncio.run(main())
