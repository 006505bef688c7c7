"""The production topology across real processes: bridge processes (`manage.py comfy_bridge`) and
emulated ComfyUI servers (`manage.py comfy_emulator`) in processes of their own, meeting this
process (the web side) only through PostgreSQL and Redis.

Needs the PostgreSQL database the suite runs on (the bridges must see the test database, so an
in-memory SQLite one will not do) and Redis; CI runs these in its PostgreSQL pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import redis
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.db import connection, connections

from comfysite.settings import redis_channel_layers
from conftest import require_service
from generator.consumers import JobsConsumer
from generator.live import BRIDGE_GROUP
from generator.models import Backend, GeneratedImage, Prompt
from generator.tests.browser import free_port
from generator.tests.factories import PromptFactory, UserFactory

from .test_bridge import SMALL, drain

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[3]
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0").rsplit("/", 1)[0] + "/7"
S = Prompt.Status


class Processes:
    """Child processes of one test, all stopped (killed if need be) when it ends."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.children: list[subprocess.Popen] = []
        settings = connection.settings_dict
        database_url = (
            f"postgres://{settings['USER']}@{settings['HOST'] or '127.0.0.1'}:{settings['PORT'] or 5432}"
            f"/{settings['NAME']}"
        )
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "REDIS_URL": REDIS_URL,
            "COMFYSITE_VAR_DIR": str(tmp_path / "var"),
            "MEDIA_ROOT": str(tmp_path / "media"),
            "BRIDGE_LEASE_SECONDS": "2",
            "BACKEND_DEAD_SECONDS": "3",
            "LOG_LEVEL": "WARNING",
        }

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.tmp_path / f"process-{len(self.children)}.log", "w")  # noqa: SIM115
        child = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), *args],
            env={**self.env, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.children.append(child)
        return child

    def emulator(self, step_seconds: float = 0.02) -> str:
        port = free_port()
        self.start("comfy_emulator", "--port", str(port), "--step-seconds", str(step_seconds), "--no-preview")
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/system_stats", timeout=1).status_code == 200:
                    return url
            time.sleep(0.1)
        raise AssertionError(f"the emulator at {url} never answered")

    def bridge(self, urls: list[str]) -> subprocess.Popen:
        return self.start("comfy_bridge", env={"COMFYUI_URLS": ",".join(urls)})

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text()[-3000:]}"
            for path in sorted(self.tmp_path.glob("process-*.log"))
        )

    def stop_all(self) -> None:
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signal.SIGINT)
        for child in self.children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


@pytest.fixture
async def processes(tmp_path, settings):
    require_service("Redis", REDIS_URL)
    if connection.vendor != "postgresql":
        pytest.skip(
            "Bridge processes must share the test database, which needs PostgreSQL: set DATABASE_URL "
            "(CI runs these in its PostgreSQL pass)."
        )
    redis.Redis.from_url(REDIS_URL).flushdb()
    settings.CHANNEL_LAYERS = redis_channel_layers(REDIS_URL)
    running = Processes(tmp_path)
    yield running
    await sync_to_async(running.stop_all)()
    await sync_to_async(connections.close_all)()  # let the test database be dropped


def queue_jobs(users: int, per_user: int) -> list[int]:
    owners = [UserFactory() for _ in range(users)]
    return [
        PromptFactory(owner=owner, workflow="txt2img", params={**SMALL, "seed": n}).pk
        for n in range(per_user)
        for owner in owners
    ]


async def wake_bridges() -> None:
    await get_channel_layer().group_send(BRIDGE_GROUP, {"type": "wake"})


async def until_final(pks: list[int], processes: Processes, within: float, on_progress=None) -> None:
    deadline = time.monotonic() + within
    while True:
        finals = await Prompt.objects.filter(pk__in=pks, status__in=Prompt.FINAL_STATUSES).acount()
        if finals == len(pks):
            return
        if on_progress is not None:
            await on_progress(finals)
        if time.monotonic() > deadline:
            counts = Counter([p.status async for p in Prompt.objects.filter(pk__in=pks)])
            raise AssertionError(f"not all jobs ended: {dict(counts)}\n{processes.logs()}")
        await wake_bridges()  # a nudge costs nothing; bridges also poll on their own
        await asyncio.sleep(0.25)


def completed_runs(urls: list[str]) -> Counter[int]:
    """How many times each job ran to completion, from the emulators' own /history."""
    runs: Counter[int] = Counter()
    for url in urls:
        for entry in httpx.get(f"{url}/history", timeout=10).json().values():
            if entry["status"]["status_str"] != "success":
                continue
            for output in entry["outputs"].values():
                for image in output.get("images", []):
                    if image["type"] == "output":  # comfysite/job<pk>_00001_.png
                        runs[int(image["filename"].split("_")[0].removeprefix("job"))] += 1
    return runs


def assert_each_job_succeeded_once(pks: list[int], survivors: list[str]) -> None:
    prompts = list(Prompt.objects.filter(pk__in=pks))
    assert Counter(p.status for p in prompts) == {S.SUCCEEDED: len(pks)}
    images = Counter(GeneratedImage.objects.filter(prompt_id__in=pks).values_list("prompt_id", flat=True))
    assert images == dict.fromkeys(pks, 1)  # every job's one image, stored once
    runs = completed_runs(survivors)
    assert max(runs.values()) == 1, [pk for pk, n in runs.items() if n > 1]  # none ran twice


async def test_two_bridges_and_three_backends_run_200_jobs_of_10_users_each_exactly_once(processes):
    backends = [processes.emulator() for _ in range(3)]
    for _ in range(2):
        processes.bridge(backends)
    pks = await sync_to_async(queue_jobs)(users=10, per_user=20)
    await wake_bridges()

    await until_final(pks, processes, within=180)

    await sync_to_async(assert_each_job_succeeded_once)(pks, backends)
    used = set(await sync_to_async(list)(Prompt.objects.filter(pk__in=pks).values_list("backend", flat=True)))
    assert used == set(backends)  # the work was spread over every backend


async def test_a_backend_killed_mid_run_has_its_jobs_finished_by_the_others(processes):
    backends = [processes.emulator() for _ in range(3)]
    doomed = processes.children[0]
    for _ in range(2):
        processes.bridge(backends)
    pks = await sync_to_async(queue_jobs)(users=10, per_user=6)
    await wake_bridges()

    async def kill_a_third_of_the_way(finished: int) -> None:
        if finished >= len(pks) // 3 and doomed.poll() is None:
            doomed.kill()  # SIGKILL: the GPU server is gone with its queue, mid-job

    await until_final(pks, processes, within=180, on_progress=kill_a_third_of_the_way)

    assert doomed.poll() is not None
    await sync_to_async(assert_each_job_succeeded_once)(pks, backends[1:])
    moved = await Prompt.objects.filter(pk__in=pks, submit_attempts=2).acount()
    assert moved >= 1  # the dead backend's jobs were sent again elsewhere


async def test_a_bridge_killed_mid_run_has_its_backends_taken_over(processes):
    backends = [processes.emulator() for _ in range(3)]
    doomed, survivor = processes.bridge(backends), processes.bridge(backends)
    pks = await sync_to_async(queue_jobs)(users=10, per_user=6)
    await wake_bridges()

    held_at_kill = []

    async def kill_a_third_of_the_way(finished: int) -> None:
        if finished >= len(pks) // 3 and doomed.poll() is None:
            doomed.kill()  # SIGKILL: no clean release of its leases
            held_at_kill.append(
                await Backend.objects.filter(lease_owner__contains=f":{doomed.pid}:").acount()
            )

    await until_final(pks, processes, within=180, on_progress=kill_a_third_of_the_way)

    assert held_at_kill[0] >= 1  # it was driving backends when it died
    assert survivor.poll() is None
    await sync_to_async(assert_each_job_succeeded_once)(pks, backends)


async def test_progress_from_a_bridge_process_reaches_the_owners_tab_here_and_no_one_elses(processes):
    backend = processes.emulator(step_seconds=0.05)
    processes.bridge([backend])
    owner, stranger = await sync_to_async(UserFactory)(), await sync_to_async(UserFactory)()
    tabs = {}
    for user in (owner, stranger):
        tabs[user] = WebsocketCommunicator(JobsConsumer.as_asgi(), "/ws/jobs/")
        tabs[user].scope["user"] = user
        assert (await tabs[user].connect())[0]
        await tabs[user].receive_from()  # the tab's list, sent on connect
    job = await sync_to_async(PromptFactory)(owner=owner, workflow="txt2img", params={**SMALL, "steps": 6})
    await wake_bridges()

    received = []
    with contextlib.suppress(TimeoutError):
        deadline = time.monotonic() + 60
        while not any('data-status="succeeded"' in html for html in received):
            received.append(await tabs[owner].receive_from(timeout=max(0.1, deadline - time.monotonic())))

    assert any('data-status="succeeded"' in html for html in received), received[-3:]
    assert any(f'id="prompt-{job.pk}-progress"' in html and "step" in html for html in received)
    # The stranger's tab may be told the backend banner (every signed-in tab is), nothing else.
    told_stranger = await drain(tabs[stranger])
    assert all(html.lstrip().startswith('<div id="backend-banner"') for html in told_stranger), told_stranger
    for tab in tabs.values():
        await tab.disconnect()


async def test_a_bridge_stopped_by_sigterm_hands_its_backends_back_at_once(processes):
    backend = processes.emulator()
    bridge = processes.bridge([backend])
    held = Backend.objects.filter(url=backend, lease_owner__contains=f":{bridge.pid}:")
    deadline = time.monotonic() + 20
    while not await held.aexists():
        assert time.monotonic() < deadline, processes.logs()
        await asyncio.sleep(0.1)

    bridge.send_signal(signal.SIGTERM)  # what systemd and Docker send
    await sync_to_async(bridge.wait)(timeout=15)

    assert bridge.returncode == 0
    assert await Backend.objects.filter(url=backend, lease_owner="").aexists()  # no lease to wait out
