"""The programmatic API, measured: a script's request → bridge → ComfyUI (emulator) → the script.

Runs the site as `manage.py serve` does (uvicorn and the bridge in one process, in-memory channel
layer, SQLite) against the emulator in a process of its own (bench/timed_emulator.py), as
bench/live_pipeline.py does for the web form; this process plays the API clients (aiohttp, each
with a key of its own user).

1. Overhead per job over the same workflow sent straight to the emulator (POST /prompt →
   `executing` null, as live_pipeline measures it), p50, one job at a time (target ≤ 30 ms):
   a. POST /api/jobs, then GET /api/jobs/{id}/events read until `finished`: from the POST to
      the `finished` event received;
   b. POST /v1/images/generations (response_format "url"), which waits for the job: from the
      request to its answer.
   With each, where the time goes (p50): the site before ComfyUI starts the job, ComfyUI's run,
   the site after ComfyUI ends it.
2. SSE event latency: the emulator sends a `progress` message → the client receives the SSE
   `progress` event of that step; p50/p99 with 1 job at a time and with 50 jobs at once (50
   clients each post a job and follow its stream; several rounds), target p99 ≤ 20 ms. At zero
   step time the bridge relays each job's last step (the others come within its 50 ms
   throttle), so there is one such event per job.

   At zero step time a job is over before a stream opened after its POST is ready, and its
   progress never reaches the stream. So for this figure another job holds the emulator busy
   (as another user's long job would) until every stream has sent its first event; the site's
   jobs wait in ComfyUI's queue or the site's meanwhile. The same clients without the hold (as
   a script does it, streams opened after the POST) are measured too: how long a stream takes
   to open, and how many jobs' progress reached their stream.

    .venv/bin/python bench/api_pipeline.py [--help]
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "comfysite.settings")
os.environ["COMFYSITE_VAR_DIR"] = tempfile.mkdtemp(prefix="bench-api-")
os.environ.setdefault("LOG_LEVEL", "WARNING")
os.environ.update(
    QUOTA_MAX_QUEUED="1000",
    QUOTA_MAX_IMAGES_PER_DAY="100000",
    API_RATE_LIMIT="100000/m",  # the default 120 a minute per key would refuse the benchmark
)
# Measured as a site is deployed, with DEBUG off (DEBUG=true in the environment measures a
# developer's site: every query is logged and formatted).
os.environ.setdefault("DEBUG", "false")
os.environ.setdefault("SECRET_KEY", uuid.uuid4().hex * 2)
os.environ.setdefault("ALLOWED_HOSTS", "127.0.0.1,localhost")
os.environ.setdefault("SECURE_SSL_REDIRECT", "false")  # plain HTTP on loopback

import django  # noqa: E402

django.setup()

import aiohttp  # noqa: E402
from asgiref.sync import sync_to_async  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402

from bench.common import (  # noqa: E402
    EmulatorProcess,
    Phases,
    comfy_ids,
    cpu_per_job_by_thread,
    cpu_seconds,
    direct_job_seconds,
    ms,
    percentile,
    run_site,
    thread_cpu_seconds,
)
from generator.api.keys import create_key  # noqa: E402
from generator.comfy.client import ComfyClient  # noqa: E402
from generator.models import Prompt  # noqa: E402

TARGET_OVERHEAD_MS = 30
TARGET_SSE_P99_MS = 20


def job_parameters(steps: int) -> dict[str, Any]:
    """POST /api/jobs's `parameters` for the small job live_pipeline posts through the form."""
    return {
        "width": 64,
        "height": 64,
        "steps": steps,
        "cfg": 7,
        "sampler": "euler",
        "scheduler": "normal",
        "batch_size": 1,
        "checkpoint": "v1-5-pruned-emaonly.safetensors",
    }


@dataclass
class SseEvent:
    at: float  # when its last byte was read
    name: str
    data: Any


@dataclass
class ApiJob:
    id: int
    started: float  # POST sent
    answered: float  # 202 read
    events: list[SseEvent] = field(default_factory=list)
    ended_after_finished: bool = False  # the server closed the stream after `finished`

    @property
    def finished(self) -> SseEvent:
        ends = [e for e in self.events if e.name == "finished"]
        assert ends, f"job {self.id}: no `finished` event"
        return ends[0]


def sse_event(block: str, at: float) -> SseEvent | None:
    """One event of a text/event-stream (the lines before a blank line); None for comments and
    `retry:` lines."""
    name, data = "message", []
    for line in block.split("\n"):
        key, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if key == "event":
            name = value
        elif key == "data":
            data.append(value)
    return SseEvent(at, name, json.loads("\n".join(data))) if data else None


class ApiClient:
    """A script using the API with its own key: its own connection pool, as separate scripts."""

    def __init__(self, site: str, key: str, parameters: dict[str, Any]) -> None:
        self.parameters = parameters
        self.http = aiohttp.ClientSession(
            base_url=site,
            headers={"Authorization": f"Bearer {key}"},
            timeout=aiohttp.ClientTimeout(total=300),
            # uvicorn closes a connection idle for 5 s: a request on one closing just then fails.
            connector=aiohttp.TCPConnector(keepalive_timeout=2),
        )

    async def post_job(self, prompt: str) -> ApiJob:
        started = time.perf_counter()
        body = {"workflow": "txt2img", "parameters": {**self.parameters, "prompt": prompt}}
        async with self.http.post("/api/jobs", json=body) as response:
            job = await response.json()
            assert response.status == 202, (response.status, job)
        return ApiJob(job["id"], started, time.perf_counter())

    async def follow(self, job: ApiJob, on_open: Callable[[], None] | None = None) -> None:
        """Read the job's event stream to its end; `on_open()` once its first event is read."""
        async with self.http.get(f"/api/jobs/{job.id}/events") as response:
            assert response.status == 200, (response.status, await response.text())
            assert response.content_type == "text/event-stream", response.content_type
            buffered, decoder = "", codecs.getincrementaldecoder("utf-8")()
            async for chunk in response.content.iter_any():
                at = time.perf_counter()
                buffered += decoder.decode(chunk)
                *blocks, buffered = buffered.replace("\r\n", "\n").split("\n\n")
                for block in blocks:
                    if event := sse_event(block, at):
                        assert not job.events or job.events[-1].name != "finished", "events after finished"
                        job.events.append(event)
                        if on_open and len(job.events) == 1:
                            on_open()
        job.ended_after_finished = bool(job.events) and job.events[-1].name == "finished"
        status = job.finished.data["status"]
        assert status == "succeeded", f"job {job.id} {status}: {job.finished.data['error']}"

    async def job(self, prompt: str, on_open: Callable[[], None] | None = None) -> ApiJob:
        """POST /api/jobs, then its events until `finished`, as a script would."""
        job = await self.post_job(prompt)
        await self.follow(job, on_open)
        return job

    async def openai_image(self, prompt: str) -> tuple[float, float]:
        """POST /v1/images/generations; when it was sent and when its answer was read."""
        parameters = {k: v for k, v in self.parameters.items() if k not in ("width", "height", "batch_size")}
        size = f"{self.parameters['width']}x{self.parameters['height']}"
        body = {"prompt": prompt, "n": 1, "size": size, "response_format": "url", "parameters": parameters}
        started = time.perf_counter()
        async with self.http.post("/v1/images/generations", json=body) as response:
            answer = await response.json()
        answered = time.perf_counter()
        assert response.status == 200, (response.status, answer)
        assert len(answer["data"]) == 1, answer
        assert answer["data"][0]["url"], answer
        return started, answered

    async def close(self) -> None:
        await self.http.close()


def _user_key(username: str) -> str:
    user = get_user_model().objects.create_user(username)  # no password: hashing one takes 0.3 s
    return create_key(user, "bench")[1]


async def api_client(site: str, username: str, parameters: dict[str, Any]) -> ApiClient:
    return ApiClient(site, await sync_to_async(_user_key)(username), parameters)


BEHIND_SECONDS = 0.0005


async def sse_latencies(jobs: list[ApiJob], progress: list) -> tuple[list[float], list[float], int]:
    """Per SSE `progress` event of a step the emulator sent: received at − sent at, in ms; the
    same for those of them read right behind a `status` event (within 0.5 ms: they waited while
    the stream read the job again, which it does after each status change); and how many of the
    jobs had one."""
    sent = {(prompt_id, step): at for prompt_id, step, at in progress}
    ids = await comfy_ids([job.id for job in jobs])
    latencies, behind_status, jobs_with_one = [], [], 0
    for job in jobs:
        found = False
        for before, event in zip([None, *job.events], job.events, strict=False):
            if event.name == "progress" and event.data["job"] == job.id:
                key = (ids[job.id], event.data["step"])
                if key in sent:
                    latencies.append((event.at - sent[key]) * 1000)
                    if before and before.name == "status" and event.at - before.at <= BEHIND_SECONDS:
                        behind_status.append(latencies[-1])
                    found = True
        jobs_with_one += found
    return latencies, behind_status, jobs_with_one


def progress_before_status(jobs: list[ApiJob]) -> int:
    """How many streams sent a `progress` event saying `running` before the `status` event
    saying so."""
    count = 0
    for job in jobs:
        names = [(e.name, e.data.get("status")) for e in job.events]
        if ("progress", "running") in names and ("status", "running") in names:
            count += names.index(("progress", "running")) < names.index(("status", "running"))
    return count


def met(value: float, target: float) -> str:
    return f"target ≤ {target} ms: {'met' if value <= target else 'MISSED'}"


class Hold:
    """A job straight to the emulator that keeps it busy until released (bench/timed_emulator.py
    stops a `hold-` prompt at its first step until interrupted): the site's jobs wait meanwhile."""

    seeds = iter(range(90_000, 10**9))  # a new seed each time: ComfyUI would answer a repeat from its cache

    def __init__(self, comfy: ComfyClient) -> None:
        self.comfy = comfy
        self.prompt_id = f"hold-{uuid.uuid4()}"

    async def __aenter__(self) -> Hold:
        from generator.workflows import get_workflow

        graph = get_workflow("txt2img").fill({"width": 64, "height": 64, "steps": 1}, filename_prefix="hold")
        graph["3"]["inputs"]["seed"] = next(self.seeds)
        await self.comfy.queue_prompt(graph, prompt_id=self.prompt_id, client_id="hold")
        while self.prompt_id not in (await self.comfy.queue()).running:  # noqa: ASYNC110 - ComfyUI's state
            await asyncio.sleep(0.005)
        return self

    async def release(self) -> None:
        # Until it has ended: an interrupt that comes before its run has begun is lost.
        while self.prompt_id in (await self.comfy.queue()).running:
            await self.comfy.interrupt(self.prompt_id)
            await asyncio.sleep(0.005)

    async def __aexit__(self, *exc: object) -> None:
        await self.release()


async def held_round(comfy: ComfyClient, clients: list[ApiClient], prompts: list[str]) -> list[ApiJob]:
    """Each client posts a job and follows its stream while the emulator is held; the hold ends
    once every stream has sent its first event."""
    async with Hold(comfy) as hold:
        all_open, waiting = asyncio.Event(), [len(clients)]

        def opened() -> None:
            waiting[0] -= 1
            if not waiting[0]:
                all_open.set()

        jobs = asyncio.gather(*(c.job(p, opened) for c, p in zip(clients, prompts, strict=True)))
        await asyncio.wait(
            [jobs, asyncio.ensure_future(all_open.wait())], return_when=asyncio.FIRST_COMPLETED
        )
        await hold.release()
        return await jobs


async def request_costs(client: ApiClient, job_id: int, rounds: int = 30) -> dict[str, float]:
    """p50 ms of single requests on an idle site: a synchronous view (one crossing to a web
    thread), and the event stream of a job that has ended (an async view: Django adapts each
    middleware around it, crossing to the web thread for each)."""
    costs = {}
    for label, path in [
        ("GET /api/jobs/{id}", f"/api/jobs/{job_id}"),
        ("GET /api/jobs/{id}/events of an ended job", f"/api/jobs/{job_id}/events"),
    ]:
        durations = []
        for _ in range(rounds):
            started = time.perf_counter()
            async with client.http.get(path) as response:
                await response.read()
                assert response.status == 200, response.status
            durations.append(time.perf_counter() - started)
        costs[label] = ms(durations)
    return costs


class LoopStalls:
    """This process's own event loop while the clients read: each time it could not run for
    over 5 ms (the clients' reads waited too, and that wait counts as the site's latency)."""

    def __init__(self) -> None:
        self.stalls: list[float] = []

    async def _tick(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            if now - last > 0.005:
                self.stalls.append(now - last)
            last = now

    async def __aenter__(self) -> LoopStalls:
        self.task = asyncio.create_task(self._tick())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.task.cancel()


@dataclass
class Results:
    solo: list[ApiJob] = field(default_factory=list)  # 1a, one at a time
    solo_cpu_ms: float = 0.0
    solo_by_thread: str = ""
    openai: list[tuple[str, float, float]] = field(default_factory=list)  # 1b: prompt, sent, answered
    openai_cpu_ms: float = 0.0
    direct: list[float] = field(default_factory=list)
    held_solo: list[ApiJob] = field(default_factory=list)  # 2, one at a time
    crowd: list[ApiJob] = field(default_factory=list)  # 2, many at once
    free_crowd: list[ApiJob] = field(default_factory=list)  # many at once, no hold
    costs: dict[str, float] = field(default_factory=dict)
    client_stalls: list[float] = field(default_factory=list)  # during the held rounds of many jobs
    timeline: dict = field(default_factory=dict)


async def measure(args: argparse.Namespace) -> Results:
    parameters = job_parameters(args.steps)
    emulator = EmulatorProcess(step_seconds=args.step_seconds, port=args.emulator_port or None)
    site = await run_site(emulator.url, port=args.site_port or None)
    clients: list[ApiClient] = []
    results = Results()
    try:
        solo = await api_client(site.url, "solo", parameters)
        clients.append(solo)
        for n in range(args.warmup):  # the first requests load code and caches: not counted
            await solo.job(f"warm-up job {n}")
            await solo.openai_image(f"warm-up image {n}")
        site_cpu, threads_before = cpu_seconds(site.process.pid), thread_cpu_seconds(site.process.pid)
        results.solo = [await solo.job(f"solo job {n}") for n in range(args.jobs)]
        results.solo_cpu_ms = (cpu_seconds(site.process.pid) - site_cpu) / args.jobs * 1000
        threads_after = thread_cpu_seconds(site.process.pid)
        results.solo_by_thread = cpu_per_job_by_thread(threads_before, threads_after, args.jobs)
        site_cpu = cpu_seconds(site.process.pid)
        for n in range(args.jobs):
            prompt = f"openai image {n}"
            results.openai.append((prompt, *await solo.openai_image(prompt)))
        results.openai_cpu_ms = (cpu_seconds(site.process.pid) - site_cpu) / args.jobs * 1000
        results.direct = await direct_job_seconds(emulator, args.direct_jobs, steps=args.steps)
        results.costs = await request_costs(solo, results.solo[-1].id)
        async with ComfyClient(emulator.url) as comfy:
            for n in range(args.jobs):
                results.held_solo += await held_round(comfy, [solo], [f"held solo job {n}"])
            crowd = [await api_client(site.url, f"client{n}", parameters) for n in range(args.clients)]
            clients += crowd
            # What is loaded by now stays: keep it out of this process's full garbage collections,
            # so that one does not hold the clients' reads back (the site does the same).
            gc.collect()
            gc.freeze()
            async with LoopStalls() as stalls:
                for round_ in range(args.rounds):
                    prompts = [f"crowd job {round_}.{n}" for n in range(len(crowd))]
                    results.crowd += await held_round(comfy, crowd, prompts)
            results.client_stalls = stalls.stalls
        for round_ in range(args.free_rounds):
            batch = (client.job(f"free crowd job {round_}.{n}") for n, client in enumerate(crowd))
            results.free_crowd += await asyncio.gather(*batch)
    finally:
        for client in clients:
            await client.close()
        site.stop()
        results.timeline = emulator.stop()
    return results


async def report(args: argparse.Namespace, results: Results) -> None:
    executions = results.timeline["executions"]
    progress = results.timeline["progress"]

    # 1a. POST /api/jobs + its event stream
    ids = await comfy_ids([job.id for job in results.solo])
    phases = Phases()
    for job in results.solo:
        phases.add(job.started, executions[ids[job.id]], job.finished.at)
    through_api = [job.finished.at - job.started for job in results.solo]
    openai_prompts = {prompt: (sent, answered) for prompt, sent, answered in results.openai}
    openai_rows = Prompt.objects.filter(positive_text__in=openai_prompts).values_list(
        "positive_text", "comfy_prompt_id"
    )
    openai_phases = Phases()
    async for text, comfy_id in openai_rows:
        sent, answered = openai_prompts[text]
        openai_phases.add(sent, executions[str(comfy_id)], answered)
    site_ids = {str(i) async for i in Prompt.objects.values_list("comfy_prompt_id", flat=True)}
    direct_runs = [
        end - start
        for prompt_id, (start, end) in executions.items()
        if prompt_id not in site_ids and not prompt_id.startswith("hold-")
    ]
    assert len(direct_runs) == len(results.direct), (len(direct_runs), len(results.direct))
    direct_p50 = ms(results.direct)
    # Without ComfyUI's run, which varies from one minute to the next on this machine.
    direct_outside = ms([d - r for d, r in zip(results.direct, direct_runs, strict=True)])
    print(
        f"straight to the emulator ({len(results.direct)} jobs): POST /prompt → `executing` null "
        f"p50 {direct_p50:.1f} ms, of which ComfyUI's run {ms(direct_runs):.1f} ms"
    )

    def outside(phases: Phases) -> str:
        more = ms([b + a for b, a in zip(phases.before, phases.after, strict=True)]) - direct_outside
        return f"outside ComfyUI's run p50 {more:.1f} ms more than straight to it"

    overhead = ms(through_api) - direct_p50
    first = [job.events[0].at - job.answered for job in results.solo]
    print(
        f"1a. POST /api/jobs → SSE `finished` received ({len(through_api)} jobs, one at a time): "
        f"p50 {ms(through_api):.1f} ms; overhead p50 {overhead:.1f} ms "
        f"({met(overhead, TARGET_OVERHEAD_MS)})\n"
        f"    POST → 202 p50 {ms([j.answered - j.started for j in results.solo]):.1f} ms; "
        f"202 → stream's first event p50 {ms(first):.1f} ms\n"
        f"    {phases}; {outside(phases)}\n"
        f"    site CPU {results.solo_cpu_ms:.1f} ms per job (DEBUG={settings.DEBUG}):"
        f" {results.solo_by_thread}"
    )
    openai = [answered - sent for _, sent, answered in results.openai]
    overhead = ms(openai) - direct_p50
    print(
        f"1b. POST /v1/images/generations → answer ({len(openai)} jobs, one at a time): "
        f"p50 {ms(openai):.1f} ms; overhead p50 {overhead:.1f} ms ({met(overhead, TARGET_OVERHEAD_MS)})\n"
        f"    {openai_phases}; {outside(openai_phases)}\n"
        f"    site CPU {results.openai_cpu_ms:.1f} ms per job"
    )

    # 2. SSE progress latency
    for label, jobs in [
        ("1 job at a time", results.held_solo),
        (f"{args.clients} jobs at once ({args.rounds} rounds)", results.crowd),
    ]:
        latencies, behind_status, with_one = await sse_latencies(jobs, progress)
        if not latencies:
            print(f"2. SSE progress latency, {label}: no `progress` event reached a stream")
            continue
        p99 = percentile(latencies, 0.99)
        first = [job.events[0].at - job.answered for job in jobs]
        print(
            f"2. SSE progress latency, {label}: p50 {statistics.median(latencies):.2f} ms, "
            f"p99 {p99:.2f} ms, max {max(latencies):.2f} ms ({len(latencies)} events, "
            f"{with_one} of {len(jobs)} jobs; {met(p99, TARGET_SSE_P99_MS)}); while held, "
            f"202 → stream's first event p50 {ms(first):.1f} ms (max {max(first) * 1000:.0f})"
        )
        slow = [v for v in latencies if v > TARGET_SSE_P99_MS / 2]
        print(
            f"   of the {len(slow)} events over {TARGET_SSE_P99_MS / 2:.0f} ms, "
            f"{sum(v > TARGET_SSE_P99_MS / 2 for v in behind_status)} came right behind a `status` event "
            f"(p50 of all such {statistics.median(behind_status or [0]):.1f} ms, {len(behind_status)} events)"
        )
    stalls = results.client_stalls
    print(
        f"   the benchmark's own event loop stalled over 5 ms {len(stalls)} times during those rounds"
        + (f" (max {max(stalls) * 1000:.1f} ms)" if stalls else "")
    )

    # without the hold: streams opened after the POST, as a script does
    for label, jobs in [("1 job at a time", results.solo), (f"{args.clients} at once", results.free_crowd)]:
        if not jobs:
            continue
        posts = [job.answered - job.started for job in jobs]
        first = [job.events[0].at - job.answered for job in jobs]
        done = [job.finished.at - job.started for job in jobs]
        latencies, _, with_one = await sse_latencies(jobs, progress)
        print(
            f"without the hold, {label} ({len(jobs)} jobs): POST → 202 p50 {ms(posts):.1f} ms "
            f"(max {max(posts) * 1000:.0f}); 202 → stream's first event p50 {ms(first):.1f} ms "
            f"(max {max(first) * 1000:.0f}); POST → `finished` p50 {ms(done):.1f} ms "
            f"(max {max(done) * 1000:.0f}); progress reached the stream of {with_one} jobs"
            + (f", p99 {percentile(latencies, 0.99):.1f} ms" if latencies else "")
        )
    print(
        "requests on an idle site, p50: "
        + "; ".join(f"{label} {cost:.1f} ms" for label, cost in results.costs.items())
    )
    everyone = results.solo + results.held_solo + results.crowd + results.free_crowd
    unended = sum(not job.ended_after_finished for job in everyone)
    print(
        f"every job succeeded; {len(everyone) - unended} of {len(everyone)} streams ended right "
        f"after `finished`; in {progress_before_status(everyone)} a `progress` event saying "
        f"`running` came before the `status` event saying so"
    )


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--site-port", type=int, default=0, help="the site's port (0: a free one)")
    parser.add_argument("--emulator-port", type=int, default=0, help="the emulator's port (0: a free one)")
    parser.add_argument("--jobs", type=int, default=60, help="jobs one at a time, for each of 1a and 1b")
    parser.add_argument("--direct-jobs", type=int, default=30, help="jobs straight to the emulator")
    parser.add_argument("--clients", type=int, default=50, help="clients posting a job each at once")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of --clients jobs at once")
    parser.add_argument(
        "--free-rounds", type=int, default=2, help="rounds of --clients jobs at once without the hold"
    )
    parser.add_argument("--warmup", type=int, default=2, help="uncounted jobs of each kind first")
    parser.add_argument("--steps", type=int, default=8, help="sampling steps per job (64 × 64)")
    parser.add_argument("--step-seconds", type=float, default=0.0, help="the emulator's time per step")
    return parser.parse_args()


async def main(args: argparse.Namespace) -> None:
    await sync_to_async(call_command)("migrate", verbosity=0)
    if not settings.DEBUG:  # the pages' static files, as a deployment collects them
        await sync_to_async(call_command)("collectstatic", interactive=False, verbosity=0)
    print(
        f"database {settings.DATABASES['default']['ENGINE']}, "
        f"channel layer {settings.CHANNEL_LAYERS['default']['BACKEND']}"
    )
    started = time.monotonic()
    results = await measure(args)
    await report(args, results)
    print(f"({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    asyncio.run(main(arguments()))
