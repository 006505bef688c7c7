"""The production topology of issue #7, measured: PostgreSQL, Redis, one `manage.py comfy_bridge`
process driving several emulated ComfyUI backends (COMFYUI_URLS), web processes under uvicorn.

Every piece runs in a process of its own: each backend is bench/timed_emulator.py (it notes
when it sent each `progress` message and when it ran each prompt, on CLOCK_MONOTONIC, which
time.perf_counter reads here too); this process plays the users (form posts, websockets).
The bench makes its own PostgreSQL database (`comfysite_bench`, dropped and made again, then
migrated) and uses Redis database 3 (flushed at the start).

1. Throughput with 1, 2 and 4 backends at a fixed step time (8 steps at 0.05 s, 64 × 64,
   previews on). Per N: N emulators, one bridge process for all of them, 24 × N jobs from 8
   users, made by posting the form (Django's test client, in one transaction so that every job
   becomes visible at the same instant), then the bridge is woken as a post wakes it. Timed
   from that commit to the last job's `finished_at`; one job per backend is run first, untimed,
   so each bridge is connected and warm. Reports jobs/s and the ratio to N × the one-backend
   figure (target ≥ 0.95), and checks every job succeeded.
2. Relay latency through Redis with 200 websocket clients: one web process (uvicorn), one bridge
   process (two backends), 200 users each logged in with a websocket open on /ws/jobs/ and one
   job posted through /generate/. Latency: the emulator sends a `progress` message → the owner's
   websocket receives the fragment showing that step. p50/p99 and the number of fragments, the
   same by thirds of the run, whether every tab got its job's final card, what the tabs received
   by kind, and how many messages channels_redis dropped because a channel was full.

    .venv/bin/python bench/topology.py [--skip-throughput] [--crowd 200] ...  (--help)

Needs PostgreSQL at 127.0.0.1:5432 (user postgres, trust) and Redis at 127.0.0.1:6379. The
database and the child processes' logs (a temporary folder, printed) are left behind for
inspection; every child process is stopped on the way out. Takes about three minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--pg-server", default="postgresql://postgres@127.0.0.1:5432", help="PostgreSQL server"
    )
    parser.add_argument("--database", default="comfysite_bench", help="database to drop, make again and use")
    parser.add_argument(
        "--redis-url", default="redis://127.0.0.1:6379/3", help="Redis database to flush and use"
    )
    parser.add_argument("--backends", default="1,2,4", help="backend counts for the throughput figures")
    parser.add_argument("--jobs-per-backend", type=int, default=24)
    parser.add_argument("--crowd", type=int, default=200, help="websocket clients, one job each")
    parser.add_argument("--crowd-backends", type=int, default=2)
    parser.add_argument("--skip-throughput", action="store_true", help="only the relay through Redis")
    return parser.parse_args()


ARGS = parse_args()
PG_SERVER = ARGS.pg_server
BENCH_DATABASE = ARGS.database
VAR_DIR = Path(tempfile.mkdtemp(prefix="bench-topology-"))
for inherited in ("COMFYUI_URL", "COMFYUI_URLS", "MEDIA_ROOT"):
    os.environ.pop(inherited, None)
os.environ.update(
    DJANGO_SETTINGS_MODULE="comfysite.settings",
    DATABASE_URL=f"{PG_SERVER}/{BENCH_DATABASE}",
    REDIS_URL=ARGS.redis_url,
    COMFYSITE_VAR_DIR=str(VAR_DIR),
    QUOTA_MAX_QUEUED="100000",
    QUOTA_MAX_RUNNING="100000",
    QUOTA_MAX_IMAGES_PER_DAY="1000000",
)
os.environ.setdefault("LOG_LEVEL", "WARNING")

import psycopg  # noqa: E402
import redis  # noqa: E402

with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as admin:
    admin.execute(f"DROP DATABASE IF EXISTS {BENCH_DATABASE} WITH (FORCE)")
    admin.execute(f"CREATE DATABASE {BENCH_DATABASE}")
redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()

import django  # noqa: E402

django.setup()

import httpx  # noqa: E402
from asgiref.sync import sync_to_async  # noqa: E402
from channels.layers import get_channel_layer  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import transaction  # noqa: E402
from django.db.models import Max  # noqa: E402
from django.test import Client  # noqa: E402

from bench.common import (  # noqa: E402
    CARD_RE,
    STEP_RE,
    Tab,
    cpu_seconds,
    free_port,
    logged_in_client,
    percentile,
    relay_latencies,
    session_cookie,
    small_job,
)
from generator.live import BRIDGE_GROUP  # noqa: E402
from generator.models import Backend, Prompt  # noqa: E402

STEPS, STEP_SECONDS = 8, 0.05
JOBS_PER_BACKEND = ARGS.jobs_per_backend
THROUGHPUT_USERS = 8
BACKEND_COUNTS = tuple(int(n) for n in ARGS.backends.split(","))
CROWD = ARGS.crowd
CROWD_BACKENDS = ARGS.crowd_backends
SMALL_JOB = small_job(steps=STEPS)
CHILDREN: list[subprocess.Popen] = []


def spawn(args: list[str], *, log: str | None = None, **kwargs) -> subprocess.Popen:
    """A child process, remembered so that it is stopped however the bench ends."""
    stderr = (VAR_DIR / log).open("a") if log else None
    try:
        process = subprocess.Popen(args, cwd=ROOT, stderr=stderr, **kwargs)
    finally:
        if stderr:
            stderr.close()
    CHILDREN.append(process)
    return process


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def stop_all_children() -> None:
    for process in CHILDREN:
        if process.poll() is None:
            process.terminate()
    for process in CHILDREN:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class EmulatorProcess:
    """bench/timed_emulator.py: one ComfyUI backend in a process of its own."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.out = VAR_DIR / f"emulator-{self.port}.json"
        self.process = spawn(
            [
                sys.executable,
                str(ROOT / "bench" / "timed_emulator.py"),
                str(self.port),
                str(STEP_SECONDS),
                str(self.out),
            ],
            log="emulators.log",
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "ready", "the emulator did not start"

    def stop(self) -> dict:
        stop(self.process)
        return json.loads(self.out.read_text())


def multi_backend_bridge() -> bool:
    """Whether this checkout's bridge drives several backends (COMFYUI_URLS) in one process."""
    return hasattr(settings, "COMFYUI_URLS")


class BridgeProcess:
    """`manage.py comfy_bridge` for the given backends."""

    def __init__(self, urls: list[str], log: str) -> None:
        self.urls = urls
        self.log = VAR_DIR / log
        backend_env = {"COMFYUI_URLS": ",".join(urls)} if multi_backend_bridge() else {"COMFYUI_URL": urls[0]}
        self.process = spawn(
            [sys.executable, str(ROOT / "manage.py"), "comfy_bridge"],
            log=log,
            # INFO: channels_redis says so when a group_send finds a channel full and drops the message.
            env={**os.environ, **backend_env, "LOG_LEVEL": "INFO"},
            stdout=subprocess.DEVNULL,
        )

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(f"the bridge exited: {self.log.read_text()[-3000:]}")

    async def online(self, within: float = 60) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            self.check_alive()
            if await Backend.objects.filter(url__in=self.urls, online=True).acount() == len(self.urls):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"the bridge did not reach its backends: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        stop(self.process)


class WebProcess:
    """One web process: uvicorn serving comfysite.asgi (HTTP and the websockets)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = spawn(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "comfysite.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--lifespan",
                "off",
                "--ws-per-message-deflate",
                "false",  # as the README's production command
                "--log-level",
                "warning",
            ],
            log="web.log",
            stdout=subprocess.DEVNULL,
        )

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(f"the web process exited: {(VAR_DIR / 'web.log').read_text()[-3000:]}")

    async def started(self) -> None:
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient() as http:
            while time.monotonic() < deadline:
                self.check_alive()
                with contextlib.suppress(httpx.HTTPError):
                    await http.get(self.url + "/accounts/login/")
                    return
                await asyncio.sleep(0.1)
        raise AssertionError("the web process did not start")

    def stop(self) -> None:
        stop(self.process, signal.SIGINT)


# -- users and jobs -------------------------------------------------------------------------------


def make_users(prefix: str, count: int) -> list:
    model = get_user_model()
    users = [model(username=f"{prefix}{n}") for n in range(count)]
    for user in users:
        user.set_unusable_password()
    return model.objects.bulk_create(users)


def post_jobs(clients: list[Client], per_client: int, label: str) -> tuple[list[int], float]:
    """Post the form `per_client` times for each user, round robin, all in one transaction;
    return the new jobs and when they became visible (the commit, wall clock)."""
    pks = []
    with transaction.atomic():
        for n in range(per_client):
            for client in clients:
                response = client.post(
                    "/generate/", {**SMALL_JOB, "prompt": f"{label} {n} {len(pks)}"}, HTTP_HX_REQUEST="true"
                )
                card = CARD_RE.search(response.content.decode())
                assert card, response.content.decode()[:1000]
                pks.append(int(card.group(1)))
    return pks, time.time()


async def wake_bridge() -> None:
    await get_channel_layer().group_send(BRIDGE_GROUP, {"type": "wake"})


async def wait_final(pks: list[int], within: float, *, watch: list[BridgeProcess | WebProcess]) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for child in watch:
            child.check_alive()
        left = await Prompt.objects.filter(pk__in=pks).exclude(status__in=Prompt.FINAL_STATUSES).acount()
        if not left:
            return
        await asyncio.sleep(0.02)
    statuses = Counter([s async for s in Prompt.objects.filter(pk__in=pks).values_list("status", flat=True)])
    raise AssertionError(f"jobs not finished after {within:.0f} s: {dict(statuses)}")


async def outcome(pks: list[int]) -> tuple[Counter, Counter]:
    rows = [row async for row in Prompt.objects.filter(pk__in=pks).values_list("status", "backend")]
    return Counter(status for status, _ in rows), Counter(backend for _, backend in rows)


# -- 1. throughput --------------------------------------------------------------------------------


async def throughput_round(count: int, clients: list[Client]) -> dict:
    await Backend.objects.all().adelete()
    emulators = [EmulatorProcess() for _ in range(count)]
    bridge = BridgeProcess([e.url for e in emulators], log=f"bridge-{count}.log")
    try:
        await bridge.online()
        warm, _ = await sync_to_async(post_jobs)(clients[:count], 1, f"warm-up {count}")
        await wake_bridge()
        await wait_final(warm, 60, watch=[bridge])
        per_client = JOBS_PER_BACKEND * count // len(clients)
        pks, queued_at = await sync_to_async(post_jobs)(clients, per_client, f"throughput {count}")
        queued_perf, cpu_before = time.perf_counter(), cpu_seconds(bridge.process.pid)
        await wake_bridge()
        await wait_final(pks, 120 + 3 * len(pks), watch=[bridge])
        bridge_cpu = (cpu_seconds(bridge.process.pid) - cpu_before) / (time.perf_counter() - queued_perf)
    finally:
        bridge.stop()
        timelines = [e.stop() for e in emulators]
    last = await Prompt.objects.filter(pk__in=pks).aaggregate(last=Max("finished_at"))
    elapsed = last["last"].timestamp() - queued_at
    statuses, by_backend = await outcome(pks)
    runs = [(s, e) for t in timelines for s, e in t["runs"] if s >= queued_perf]
    busy = sum(e - s for s, e in runs) / (elapsed * count)
    return {
        "backends": count,
        "jobs": len(pks),
        "elapsed": elapsed,
        "rate": len(pks) / elapsed,
        "statuses": statuses,
        "per_backend": sorted(by_backend.values(), reverse=True),
        "job_seconds": statistics.median(e - s for s, e in runs),
        "busy": busy,
        "bridge_cpu": bridge_cpu,
    }


async def throughput() -> None:
    users = await sync_to_async(make_users)("throughput", THROUGHPUT_USERS)
    clients = [await sync_to_async(logged_in_client)(user) for user in users]
    counts = BACKEND_COUNTS if multi_backend_bridge() else (1,)
    if counts != BACKEND_COUNTS:
        print("this checkout's bridge reads COMFYUI_URL only: measuring 1 backend, not 2 and 4")
    results = []
    for count in counts:
        result = await throughput_round(count, clients)
        results.append(result)
        single = results[0]["rate"]
        ok = result["statuses"] == Counter({Prompt.Status.SUCCEEDED.value: result["jobs"]})
        print(
            f"throughput, {count} backend{'s' if count > 1 else ''}: {result['jobs']} jobs in "
            f"{result['elapsed']:.2f} s = {result['rate']:.2f} jobs/s; "
            f"ratio to {count} × one backend {result['rate'] / (count * single):.3f} (target ≥ 0.95); "
            f"backends busy {100 * result['busy']:.1f}%, median job {1000 * result['job_seconds']:.0f} ms "
            f"on the backend, bridge CPU {100 * result['bridge_cpu']:.0f}%; "
            f"jobs per backend {'/'.join(map(str, result['per_backend']))}; "
            f"{'all succeeded' if ok else 'NOT ALL SUCCEEDED: ' + str(dict(result['statuses']))}"
        )


# -- 2. relay latency through Redis ---------------------------------------------------------------


def fragment_kinds(tabs: list[Tab]) -> tuple[Counter, int]:
    """What the tabs received, by kind; and how many queue places repeated the tab's previous one."""
    kinds: Counter[str] = Counter()
    repeats = 0
    for tab in tabs:
        last_place = ""
        for _, html in tab.received:
            if html.startswith("<article"):
                kinds["cards"] += 1
            elif html.startswith('<div class="job-preview"'):
                kinds["previews"] += 1
            elif "in the queue" in html:
                kinds["queue places"] += 1
                repeats += html == last_place
                last_place = html
            elif STEP_RE.search(html):
                kinds["step progress"] += 1
            else:
                kinds["other status lines"] += 1
    return kinds, repeats


def p50_p99(latencies: list[float]) -> str:
    return f"p50 {statistics.median(latencies):.2f} ms, p99 {percentile(latencies, 0.99):.2f} ms"


async def bounded(limit: int, work: list) -> list:
    gate = asyncio.Semaphore(limit)

    async def one(coroutine):
        async with gate:
            return await coroutine

    return await asyncio.gather(*(one(c) for c in work))


async def final_cards(tabs: list[Tab], pks: list[int], *, quiet: float, within: float) -> int:
    """Wait until each tab has its job's final card, or no tab has received anything for `quiet`
    seconds, or `within` seconds passed; how many tabs lack their final card."""
    deadline = time.perf_counter() + within
    while True:
        missing = sum(pk not in tab.final_card_at for tab, pk in zip(tabs, pks, strict=True))
        last = max((tab.received[-1][0] for tab in tabs if tab.received), default=0.0)
        now = time.perf_counter()
        if not missing or now - last > quiet or now > deadline:
            return missing
        await asyncio.sleep(0.05)


async def crowd_latency() -> None:
    await Backend.objects.all().adelete()
    count = CROWD_BACKENDS if multi_backend_bridge() else 1
    emulators = [EmulatorProcess() for _ in range(count)]
    bridge = BridgeProcess([e.url for e in emulators], log="bridge-crowd.log")
    web = WebProcess()
    tabs: list[Tab] = []
    try:
        await bridge.online()
        await web.started()
        users = await sync_to_async(make_users)("crowd", CROWD)
        sessions = [await sync_to_async(session_cookie)(user) for user in users]
        tabs = [Tab(web.url, session, SMALL_JOB) for session in sessions]
        await bounded(20, [tab.open() for tab in tabs])
        cpu_before = [cpu_seconds(bridge.process.pid), cpu_seconds(web.process.pid), time.process_time()]
        started = time.perf_counter()
        posts = await bounded(20, [tab.generate(f"crowd job {n}") for n, tab in enumerate(tabs)])
        pks = [pk for pk, _ in posts]
        posted = time.perf_counter() - started
        await wait_final(pks, 240, watch=[bridge, web])
        final_at = time.perf_counter()
        ran = final_at - started
        cpu = [  # from the first post until every job was final
            100 * (used - before) / ran
            for used, before in zip(
                [cpu_seconds(bridge.process.pid), cpu_seconds(web.process.pid), time.process_time()],
                cpu_before,
                strict=True,
            )
        ]
        missing = await final_cards(tabs, pks, quiet=10, within=120)
        drained = max(0.0, max(at for tab in tabs for at, _ in tab.received) - final_at)
    finally:
        for tab in tabs:
            with contextlib.suppress(Exception):
                await tab.close()
        web.stop()
        bridge.stop()
        timelines = [e.stop() for e in emulators]
    statuses, by_backend = await outcome(pks)
    progress = [row for t in timelines for row in t["progress"]]
    timed = sorted(await relay_latencies(tabs, pks, progress))
    latencies = [latency for _, latency in timed]
    thirds = [latencies[n * len(latencies) // 3 : (n + 1) * len(latencies) // 3] for n in range(3)]
    ok = statuses == Counter({Prompt.Status.SUCCEEDED.value: len(pks)})
    print(
        f"relay latency through Redis, {CROWD} websocket clients, {len(pks)} jobs on {count} "
        f"backend{'s' if count > 1 else ''} ({posted:.1f} s to post them, {ran:.1f} s to run them; "
        f"jobs per backend {'/'.join(str(n) for n in sorted(by_backend.values(), reverse=True))}): "
        f"{p50_p99(latencies)}, max {max(latencies):.2f} ms ({len(latencies)} progress fragments, of "
        f"{len(progress)} progress messages sent); "
        f"{'all succeeded' if ok else 'NOT ALL SUCCEEDED: ' + str(dict(statuses))}"
    )
    print(
        "    the same by thirds of the run (in the order the steps were sent): "
        + "; ".join(p50_p99(part) for part in thirds if part)
    )
    print(
        f"    every job final in the database {ran:.1f} s after the first post; the last fragment reached "
        f"a tab {drained:.1f} s after that; "
        + (
            f"{missing} tabs never received their job's final card"
            if missing
            else "every tab got its final card"
        )
        + f"; CPU over the run: bridge {cpu[0]:.0f}%, web {cpu[1]:.0f}%, this process (the 200 clients) "
        f"{cpu[2]:.0f}%"
    )
    kinds, repeats = fragment_kinds(tabs)
    print(
        f"    the tabs received {sum(kinds.values())} fragments: "
        + ", ".join(f"{n} {kind}" for kind, n in kinds.most_common())
        + f" ({repeats} of the queue places the same as the one the tab had just received)"
    )


OVER_CAPACITY_RE = re.compile(r"channels_redis.core: (\d+) of \d+ channels over capacity")


def report_logs() -> None:
    """What the child processes said on stderr: warnings, errors, and messages channels_redis dropped
    because the receiving channel was full (the bridges log at INFO, the rest at WARNING)."""
    for log in sorted(VAR_DIR.glob("*.log")):
        lines = [line for line in log.read_text().splitlines() if line.strip()]
        dropped = sum(int(m.group(1)) for line in lines if (m := OVER_CAPACITY_RE.search(line)))
        if dropped:
            print(f"{log.name}: channels_redis dropped {dropped} message(s): the receiving channel was full")
        problems = [line for line in lines if " INFO " not in line]
        if problems:
            print(f"{log.name}: {len(problems)} line(s) of warnings or errors on stderr, for instance:")
            for line in list(dict.fromkeys(problems))[:8]:
                print(f"    {line[:200]}")


async def main() -> None:
    began = time.monotonic()
    await sync_to_async(call_command)("migrate", verbosity=0)
    print(
        f"database {settings.DATABASES['default']['ENGINE']} ({BENCH_DATABASE}), channel layer "
        f"{settings.CHANNEL_LAYERS['default']['BACKEND']} at {settings.REDIS_URL}, "
        f"{os.cpu_count()} CPUs (load {os.getloadavg()[0]:.2f}), {STEPS} steps at {STEP_SECONDS} s, "
        f"64 × 64, previews on; logs in {VAR_DIR}"
    )
    try:
        if not ARGS.skip_throughput:
            await throughput()
        await crowd_latency()
    finally:
        stop_all_children()
        report_logs()
    print(f"bench took {datetime.timedelta(seconds=round(time.monotonic() - began))}")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    finally:
        stop_all_children()
