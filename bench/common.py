"""What the benchmark scripts share: ports, percentiles, CPU time, the emulator and the site in
processes of their own, the straight-to-ComfyUI baseline, and browser tabs.

Import it after django.setup(): tabs read Prompt rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import websockets
from django.test import Client

from generator.comfy.client import ComfyClient
from generator.models import Backend, Prompt

ROOT = Path(__file__).resolve().parents[1]
STEP_RE = re.compile(r'id="prompt-(\d+)-progress".*?step (\d+)/(\d+)', re.S)
CARD_RE = re.compile(r'id="prompt-(\d+)" data-status="(\w+)"')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) process `pid` has used so far, from /proc: steadier than wall
    time on a small shared machine."""
    return _stat_cpu_seconds(Path(f"/proc/{pid}/stat"))


def _stat_cpu_seconds(stat: Path) -> float:
    """User + system time from a /proc stat file (a process's or one of its threads')."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(pid: int) -> Counter[str]:
    """CPU time each kind of thread of process `pid` has used so far: its event loop (the main
    thread), its web threads ("web-…") and the bridge's database threads ("bridge-db…"), which
    the site names (comfysite.runtime.name_os_thread), and any other."""
    used = Counter[str]()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that ended meanwhile
            name = (task / "comm").read_text().strip()
            used[_thread_kind(int(task.name) == pid, name)] += _stat_cpu_seconds(task / "stat")
    return used


THREAD_KINDS = ("event loop", "web threads", "bridge database thread", "other threads")


def _thread_kind(main: bool, name: str) -> str:
    if main:
        return "event loop"
    if name.startswith("web-"):
        return "web threads"
    return "bridge database thread" if name.startswith("bridge-db") else "other threads"


def cpu_per_job_by_thread(before: Counter[str], after: Counter[str], jobs: int) -> str:
    """ "event loop 9.1 ms, web threads 12.0 ms, …" of CPU per job between two readings."""
    return ", ".join(f"{kind} {(after[kind] - before[kind]) / jobs * 1000:.1f} ms" for kind in THREAD_KINDS)


class EmulatorProcess:
    """bench/timed_emulator.py in a subprocess: ComfyUI's place, off the site's event loop.
    `options`: more of its command line (--root, --fault-control, --runs-log...); `log`: a file
    its stderr is appended to."""

    def __init__(
        self,
        step_seconds: float,
        port: int | None = None,
        *,
        options: Sequence[str] = (),
        log: Path | None = None,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.out = Path(tempfile.mkdtemp()) / "timeline.json"
        with contextlib.ExitStack() as files:
            stderr = files.enter_context(log.open("a")) if log else None
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    str(ROOT / "bench" / "timed_emulator.py"),
                    str(self.port),
                    str(step_seconds),
                    str(self.out),
                    *options,
                ],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "ready"

    def kill(self) -> None:
        """SIGKILL: gone with its queue and history, as a crashed ComfyUI."""
        self.process.kill()
        self.process.wait()

    def stop(self) -> dict:
        """Stop it; what it noted: `progress` [(prompt id, step, sent at)], `runs` [(start, end)]."""
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)
        return json.loads(self.out.read_text())


class SiteProcess:
    """`manage.py serve` against the emulator: the site and its bridge in a process of their own,
    as a user runs it; the benchmark's process plays the clients."""

    def __init__(self, emulator_url: str, port: int | None = None) -> None:
        self.url = f"http://127.0.0.1:{port or free_port()}"
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "serve", "--port", self.url.rsplit(":", 1)[1]],
            env={**os.environ, "COMFYUI_URL": emulator_url},
            stdout=subprocess.DEVNULL,
        )

    async def started(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            online = await Backend.objects.filter(online=True).aexists()
            if online:
                with contextlib.suppress(aiohttp.ClientError):
                    async with aiohttp.ClientSession() as http, http.get(self.url + "/accounts/login/"):
                        return
            await asyncio.sleep(0.1)
        raise AssertionError("the site did not start")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=30)


async def run_site(emulator_url: str, port: int | None = None) -> SiteProcess:
    await Backend.objects.all().adelete()
    site = SiteProcess(emulator_url, port)
    await site.started()
    return site


async def direct_job_seconds(emulator: EmulatorProcess, rounds: int, steps: int = 8) -> list[float]:
    """The same small workflow sent straight to the emulator: POST → `executing` null."""
    from generator.workflows import get_workflow

    values = {"width": 64, "height": 64, "steps": steps}
    graph = get_workflow("txt2img").fill(values, filename_prefix="direct")
    durations = []
    async with websockets.connect(emulator.url.replace("http", "ws") + "/ws?clientId=direct") as ws:
        await ws.recv()
        async with ComfyClient(emulator.url) as comfy:  # the bridge's own client, for a fair difference
            for n in range(rounds):
                graph["3"]["inputs"]["seed"] = n + 10_000
                started = time.perf_counter()
                prompt_id = (
                    await comfy.queue_prompt(graph, prompt_id=str(uuid.uuid4()), client_id="direct")
                ).prompt_id
                while True:
                    message = await ws.recv()
                    if isinstance(message, str):
                        event = json.loads(message)
                        data = event["data"]
                        if (
                            event["type"] == "executing"
                            and data["node"] is None
                            and data["prompt_id"] == prompt_id
                        ):
                            break
                durations.append(time.perf_counter() - started)
    return durations


def small_job(steps: int) -> dict[str, str]:
    """The generate form's fields for a small text-to-image job (64 × 64)."""
    return {
        "workflow": "txt2img",
        "size": "custom",
        "width": "64",
        "height": "64",
        "steps": str(steps),
        "cfg": "7",
        "sampler": "euler",
        "scheduler": "normal",
        "batch_size": "1",
        "checkpoint": "v1-5-pruned-emaonly.safetensors",
    }


def logged_in_client(user: Any) -> Client:
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(user)
    return client


def session_cookie(user: Any) -> str:
    return logged_in_client(user).cookies["sessionid"].value


class Tab:
    """A logged-in browser tab: its session, its websocket, what it received and when."""

    def __init__(self, site: str, session: str, job: dict[str, str]) -> None:
        self.site = site
        self.session = session
        self.job = job
        self.received: list[tuple[float, str]] = []
        self.final_card_at: dict[int, float] = {}
        self.answered_at: dict[int, float] = {}  # when the form post was answered, by job
        self.final_status: dict[int, str] = {}
        self.arrived = asyncio.Event()

    async def open(self) -> None:
        # aiohttp, not httpx: the tabs share this process, and a post through httpx costs several
        # times the CPU. Fifty posts at once through httpx kept this process from reading the
        # fragments that had arrived, and the wait was counted as the site's relay latency.
        self.http = aiohttp.ClientSession(
            base_url=self.site,
            cookie_jar=aiohttp.CookieJar(unsafe=True),  # keeps cookies of an IP address host
            timeout=aiohttp.ClientTimeout(total=60),
            # uvicorn closes a connection idle for 5 s: a post on a connection closing just then
            # failed (browsers retry; a bench client does not).
            connector=aiohttp.TCPConnector(keepalive_timeout=2),
        )
        self.http.cookie_jar.update_cookies({"sessionid": self.session})
        async with self.http.get("/") as response:  # sets the CSRF cookie
            assert response.status == 200, response.status
        cookies = {cookie.key: cookie.value for cookie in self.http.cookie_jar}
        self.csrf_token = cookies["csrftoken"]
        header = "; ".join(f"{key}={value}" for key, value in cookies.items())
        self.socket = await websockets.connect(
            self.site.replace("http", "ws") + "/ws/jobs/",
            additional_headers={"Cookie": header, "Origin": self.site},
            open_timeout=60,
            ping_interval=None,
            max_size=None,
        )
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for message in self.socket:
                at = time.perf_counter()
                self.received.append((at, message))
                card = CARD_RE.match(message, message.find("id=")) if message.startswith("<article") else None
                if card and card.group(2) in Prompt.FINAL_STATUSES:  # only whole cards say it ended
                    self.final_card_at.setdefault(int(card.group(1)), at)
                    self.final_status.setdefault(int(card.group(1)), card.group(2))
                self.arrived.set()

    async def generate(self, prompt: str) -> tuple[int, float]:
        """Post the form; the new job and when the post started."""
        started = time.perf_counter()
        async with self.http.post(
            "/generate/",
            data={**self.job, "prompt": prompt},
            headers={"X-CSRFToken": self.csrf_token, "HX-Request": "true"},
        ) as response:
            text = await response.text()
        card = CARD_RE.search(text)
        assert card, text[:1000]
        self.answered_at[int(card.group(1))] = time.perf_counter()
        return int(card.group(1)), started

    async def finished_at(self, pk: int, within: float = 120) -> float:
        """When this tab received the job's card saying it succeeded."""
        deadline = time.perf_counter() + within
        while time.perf_counter() < deadline:
            if pk in self.final_card_at:
                assert self.final_status[pk] == "succeeded", f"job {pk} {self.final_status[pk]}"
                return self.final_card_at[pk]
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), 1)
        raise AssertionError(f"job {pk} never finished")

    async def close(self) -> None:
        await self.socket.close()
        self.reader.cancel()
        await self.http.close()


async def comfy_ids(jobs: list[int]) -> dict[int, str]:
    """The ComfyUI prompt id of each of these jobs."""
    return {p.pk: str(p.comfy_prompt_id) async for p in Prompt.objects.filter(pk__in=jobs)}


def ms(values: list[float]) -> float:
    """p50 of durations in seconds, in ms."""
    return statistics.median(values) * 1000


@dataclass
class Phases:
    """Where a job's time went, from the emulator's timeline: before ComfyUI started it, its
    run, after ComfyUI ended it (each a list of seconds)."""

    before: list[float] = field(default_factory=list)
    run: list[float] = field(default_factory=list)
    after: list[float] = field(default_factory=list)

    def add(self, started: float, execution: list[float], done: float) -> None:
        self.before.append(execution[0] - started)
        self.run.append(execution[1] - execution[0])
        self.after.append(done - execution[1])

    def __str__(self) -> str:
        return (
            f"before ComfyUI starts it {ms(self.before):.1f} ms, ComfyUI's run {ms(self.run):.1f} ms, "
            f"after ComfyUI ends it {ms(self.after):.1f} ms"
        )


async def relay_latencies(tabs: list[Tab], jobs: list[int], progress: list) -> list[tuple[float, float]]:
    """Per step fragment a tab received: (when the emulator sent that `progress` message,
    received at − sent at in ms). `progress` is the timed emulators' (prompt id, step, sent at)."""
    sent = {(prompt_id, step): at for prompt_id, step, at in progress}
    ids = await comfy_ids(jobs)
    latencies = []
    for tab in tabs:
        for at, html in tab.received:
            if not html.startswith('<div class="job-progress"'):
                continue  # whole cards come from the database side, after the step itself
            for match in STEP_RE.finditer(html):
                key = (ids.get(int(match.group(1)), ""), int(match.group(2)))
                if key in sent:
                    latencies.append((sent[key], (at - sent[key]) * 1000))
    return latencies
