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
"""

from __future__ import annotations

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
    SiteProcess,
    Tab,
    cpu_per_job_by_thread,
    cpu_seconds,
    direct_job_seconds,
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


SOLO_JOBS = 60
CROWD_ROUNDS = 4  # of 50 jobs at once: a p99 of 200 fragments, not the worst of 50


async def latency_and_overhead() -> None:
    emulator = EmulatorProcess(step_seconds=0.0)
    site = await run_site(emulator.url)
    tabs: list[Tab] = []
    try:
        solo = await user_tab(site.url, "solo")
        tabs.append(solo)
        overheads, solo_jobs = [], []
        site_cpu, threads_before = cpu_seconds(site.process.pid), thread_cpu_seconds(site.process.pid)
        for n in range(SOLO_JOBS):
            pk, started = await solo.generate(f"solo job {n}")
            overheads.append(await solo.finished_at(pk) - started)
            solo_jobs.append(pk)
        site_cpu_per_job = (cpu_seconds(site.process.pid) - site_cpu) / SOLO_JOBS * 1000
        by_thread = cpu_per_job_by_thread(threads_before, thread_cpu_seconds(site.process.pid), SOLO_JOBS)
        direct = await direct_job_seconds(emulator, 30)
        crowd = [await user_tab(site.url, f"user{n}") for n in range(50)]
        tabs += crowd
        crowd_jobs = []
        for round_ in range(CROWD_ROUNDS):
            posts = (tab.generate(f"crowd job {round_}.{n}") for n, tab in enumerate(crowd))
            batch = await asyncio.gather(*posts)
            await asyncio.gather(*(tab.finished_at(pk) for tab, (pk, _) in zip(crowd, batch, strict=True)))
            crowd_jobs += [pk for pk, _ in batch]
    finally:
        await stop_site(site, tabs)
        progress = emulator.stop()["progress"]

    solo_latency = [ms for _, ms in await relay_latencies([solo], solo_jobs, progress)]
    crowd_latency = [ms for _, ms in await relay_latencies(crowd, crowd_jobs, progress)]
    for label, values in [("1 job", solo_latency), ("50 jobs", crowd_latency)]:
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
    await idle_time()


if __name__ == "__main__":
    asyncio.run(main())
