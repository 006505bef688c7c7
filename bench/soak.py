"""A seeded fault soak (issue #14, part 2): jobs posted by users through the web process while a
seeded random schedule breaks every part of the production topology, then a count, per kind
of fault, of what became of the jobs that fault touched.

Every piece runs as a process of its own, as in production: a Redis server of the soak's own
(so that it can be restarted), web processes (uvicorn), bridge processes (`manage.py
comfy_bridge`, each driving every backend it holds a lease on), emulated ComfyUI backends
(bench/timed_emulator.py with --fault-control: their fault switches are set over HTTP, and each
notes every prompt it queued, started and ended in a file that survives SIGKILL). This process
plays the users: half post the form (/generate/), half the API (/api/jobs with a key and an
Idempotency-Key), both through generator/submissions.py, and each retries as a person or a
script would when the site does not answer.

The faults, each kind injected `--rounds` times at seeded times on seeded targets, are listed
by --help (FAULTS below). A job counts for a fault when it was between its post and its end
while the fault lasted (and a few seconds after), and, for a fault of one backend, when it was
sent to that backend. At the end, per kind: jobs succeeded (with their image), failed with a
reason a user can read, failed without one, lost (accepted, then no such job, or succeeded
without its image), imported twice (more images than outputs), stuck (not final when the soak
gives up), runs ComfyUI made again where no crash forced it (no kill, restart or outage of the
backend that ran it before it ran again), and answers 5xx users saw. Same seed, same schedule:
a failure can be replayed. Exits 1 when a target is missed (each of those counts is 0).

    .venv/bin/python bench/soak.py [--seed 14] [--jobs 200] [--users 10] [--help]

Needs PostgreSQL at 127.0.0.1:5432 (user postgres, trust; the bench makes its own database,
`comfysite_soak` by default) and redis-server on the PATH. Logs and media are left in a
temporary folder (printed). generator/comfy/tests/test_soak.py runs the same soak, small.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FAULTS = {
    "backend-kill": "an emulator SIGKILLed mid-run, started again on its port within 1.5 s",
    "backend-dead": "an emulator SIGKILLed, started again after BACKEND_DEAD_SECONDS",
    "history-lost": "an emulator SIGKILLed just after a prompt ended, started again at once",
    "outage": "an emulator refuses connections for 0.5 s to BACKEND_DEAD_SECONDS + 2 s",
    "ws-drop": "an emulator drops the bridge's websocket after a few messages (cut or closed)",
    "ws-deaf": "an emulator forgets the bridge's websocket (open, answering pings, deaf)",
    "view-500": "an emulator's /view answers 500 for 1 to 5 s",
    "view-slow": "an emulator's /view waits 0.5 to 12 s (the bridge gives up at 10) for 5 s",
    "prompt-500": "an emulator's POST /prompt answers 500 for 1 to 4 s",
    "prompt-lost": "an emulator's POST /prompt answers after 11 s (the bridge gives up at 10)",
    "node-error": "an emulator's sampler fails at a step, for 1 to 3 s: those jobs fail",
    "bridge-kill": "a bridge process SIGKILLed, started again after 0.5 to 3 s",
    "web-restart": "the web process killed (SIGKILL or SIGTERM) and started again on its port",
    "redis-restart": "the Redis server SIGKILLed (nothing saved), started again after 0.5 to 2 s",
}
BACKEND_FAULTS = frozenset(FAULTS) - {"bridge-kill", "web-restart", "redis-restart"}
# Faults that may make ComfyUI run a job again: its run died with the process, or the site could
# not tell whether it ran (unreachable past BACKEND_DEAD_SECONDS, history gone).
CRASHES = frozenset({"backend-kill", "backend-dead", "history-lost", "outage"})
SETTLE_SECONDS = 3.0  # a fault's effects outlast it by this much (reconnects, reconciling)
BUSY_WAIT_SECONDS = 5.0  # a backend fault waits this long at most for its backend to run a job
REQUEST_TIMEOUT_SECONDS = 10.0  # BridgeSettings.request_seconds: the bridge gives up on ComfyUI
PASSWORD = "soak-password-1"


@dataclass
class SoakOptions:
    seed: int = 14
    jobs: int = 200
    users: int = 10
    bridges: int = 2
    backends: int = 3
    rounds: int = 2  # injections of each kind of fault
    kinds: tuple[str, ...] = tuple(FAULTS)
    steps: int = 8
    step_seconds: float = 0.1
    post_seconds: float = 100.0  # jobs are posted over this long; faults happen meanwhile
    drain_seconds: float = 150.0  # after the last fault, jobs not final by then are stuck
    dead_seconds: float = 4.0  # BACKEND_DEAD_SECONDS
    lease_seconds: float = 2.0  # BRIDGE_LEASE_SECONDS


@dataclass(frozen=True)
class Fault:
    """One injection of the schedule: what, when (seconds into the soak), where, how much."""

    at: float
    kind: str
    target: int  # a backend's or a bridge's index; 0 for the web process and Redis
    amount: float  # seconds down, delay or window, by kind
    variant: int  # a second seeded choice: messages before a drop, SIGKILL or SIGTERM...

    def describe(self) -> str:
        where = {"bridge-kill": "bridge", "web-restart": "web", "redis-restart": "redis"}.get(
            self.kind, "backend"
        )
        where = f"{where} {self.target}"
        return (
            f"{self.at:6.1f} s  {self.kind:14} {where:10} amount {self.amount:5.2f}  variant {self.variant}"
        )


def fault_schedule(options: SoakOptions) -> list[Fault]:
    """The seeded schedule: each kind `rounds` times, in a shuffled order, spread over the
    posting time with jitter. The same options give the same schedule."""
    rng = random.Random(options.seed)
    kinds = [kind for kind in options.kinds for _ in range(options.rounds)]
    rng.shuffle(kinds)
    span = options.post_seconds * 0.9
    start = min(5.0, span / 4)
    slot = (span - start) / max(1, len(kinds))
    faults = []
    for n, kind in enumerate(kinds):
        at = start + slot * n + rng.uniform(0, slot * 0.8)
        target = rng.randrange(options.bridges) if kind == "bridge-kill" else rng.randrange(options.backends)
        if kind in ("web-restart", "redis-restart"):
            target = 0
        faults.append(Fault(round(at, 2), kind, target, _amount(kind, rng, options), rng.randrange(1 << 16)))
    return faults


def _amount(kind: str, rng: random.Random, options: SoakOptions) -> float:
    ranges = {
        "backend-kill": (0.2, 1.5),
        "backend-dead": (options.dead_seconds + 1, options.dead_seconds + 3),
        "outage": (0.5, options.dead_seconds + 2),
        "view-500": (1.0, 5.0),
        "view-slow": (0.5, 12.0),
        "prompt-500": (1.0, 4.0),
        "prompt-lost": (1.0, 3.0),
        "node-error": (1.0, 3.0),
        "bridge-kill": (0.5, 3.0),
        "web-restart": (0.0, 1.0),
        "redis-restart": (0.5, 2.0),
    }
    low, high = ranges.get(kind, (0.0, 0.0))
    return round(rng.uniform(low, high), 2)


# -- processes ------------------------------------------------------------------------------------


def free_port() -> int:
    # bench.common reads Prompt rows, so it is imported once Django is set up (not for --help).
    from bench.common import free_port as port

    return port()


async def until(check: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within:.0f} s")
        await asyncio.sleep(0.1)


class Child:
    """A process of the topology that can be killed and started again with the same command
    line (and so the same port); its stdout and stderr are appended to `log`."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.command, self.env, self.log = name, command, env, log
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                self.command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, sig: int = signal.SIGKILL, timeout: float = 15) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Backend:
    """An emulated ComfyUI (bench/timed_emulator.py): killed and started again on its port with
    the same folders (outputs are on disk, the queue and history in memory) and runs log."""

    def __init__(self, index: int, work: Path, options: SoakOptions) -> None:
        self.index = index
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.root = work / f"comfyui-{index}"
        self.runs_log = work / f"runs-{index}.jsonl"
        self.log = work / f"emulator-{index}.log"
        self.step_seconds = options.step_seconds
        self.process: Any = None  # bench.common.EmulatorProcess
        self.started_at = 0.0

    async def start(self) -> None:
        from bench.common import EmulatorProcess

        options = [
            "--root",
            str(self.root),
            "--fault-control",
            "--runs-log",
            str(self.runs_log),
            "--no-preview",
        ]
        self.process = await asyncio.to_thread(
            EmulatorProcess, self.step_seconds, self.port, options=options, log=self.log
        )
        self.started_at = time.monotonic()

    async def kill(self) -> None:
        if self.process is not None and self.process.process.poll() is None:
            await asyncio.to_thread(self.process.kill)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.process.poll() is None

    async def faults(self, http: Any, **switches: Any) -> None:
        """Set switches through the emulator's /_faults (generator/comfy/emulator/control.py)."""
        async with http.post(f"{self.url}/_faults", json=switches) as answer:
            if answer.status != 200:
                raise AssertionError(
                    f"backend {self.index}: /_faults said {answer.status} {await answer.text()}"
                )

    async def busy(self) -> bool:
        """Whether this process of the emulator is running a prompt now."""
        ours = [r for r in self.runs() if r["event"] in ("start", "end") and r["at"] >= self.started_at]
        return bool(ours) and ours[-1]["event"] == "start"

    def runs(self) -> list[dict[str, Any]]:
        if not self.runs_log.exists():
            return []
        lines = self.runs_log.read_text().splitlines()
        return [
            json.loads(line) for line in lines if line.endswith("}")
        ]  # a killed writer's last line may be cut


class Topology:
    """Redis, web process, bridges and backends, with the environment they share."""

    def __init__(self, work: Path, database_url: str, media_root: Path, options: SoakOptions) -> None:
        from django.conf import settings

        self.work = work
        self.options = options
        self.redis_port = free_port()
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/5"
        self.backends = [Backend(n, work, options) for n in range(options.backends)]
        self.env = {
            **{k: v for k, v in os.environ.items() if k not in ("COMFYUI_URL", "COMFYUI_URLS")},
            "DJANGO_SETTINGS_MODULE": "comfysite.settings",
            "DATABASE_URL": database_url,
            "SECRET_KEY": settings.SECRET_KEY,  # the sessions this process makes for the users
            "REDIS_URL": self.redis_url,
            "COMFYSITE_VAR_DIR": str(work / "var"),
            "MEDIA_ROOT": str(media_root),
            "COMFYUI_URLS": ",".join(b.url for b in self.backends),
            "BRIDGE_LEASE_SECONDS": str(options.lease_seconds),
            "BACKEND_DEAD_SECONDS": str(options.dead_seconds),
            "QUOTA_MAX_QUEUED": "100000",
            "QUOTA_MAX_RUNNING": "100000",
            "QUOTA_MAX_IMAGES_PER_DAY": "1000000",
            "API_RATE_LIMIT": "100000/m",
            "LOG_LEVEL": "WARNING",
        }
        self.web_port = free_port()
        self.web_url = f"http://127.0.0.1:{self.web_port}"
        self.redis = Child(
            "redis",
            [
                "redis-server",
                "--port",
                str(self.redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            self.env,
            work / "redis.log",
        )
        self.web = Child(
            "web",
            [
                sys.executable, "-m", "uvicorn", "comfysite.asgi:application", "--host", "127.0.0.1",
                "--port", str(self.web_port), "--lifespan", "off", "--ws-per-message-deflate", "false",
                "--log-level", "warning",
            ],
            self.env,
            work / "web.log",
        )  # fmt: skip
        self.bridges = [
            Child(
                f"bridge-{n}",
                [sys.executable, str(ROOT / "manage.py"), "comfy_bridge"],
                self.env,
                work / f"bridge-{n}.log",
            )
            for n in range(options.bridges)
        ]

    async def start(self) -> None:
        (self.work / "var").mkdir(exist_ok=True)
        await self.start_redis()
        await asyncio.gather(*(backend.start() for backend in self.backends))
        for bridge in self.bridges:
            bridge.start()
        await self.start_web()

    async def start_redis(self) -> None:
        import redis.asyncio

        self.redis.start()
        client = redis.asyncio.Redis.from_url(self.redis_url)

        async def answers() -> bool:
            with contextlib.suppress(redis.RedisError, OSError):
                return bool(await client.ping())
            return False

        try:
            await until(answers, 20, "Redis did not start")
        finally:
            await client.aclose()

    async def start_web(self) -> None:
        import aiohttp

        self.web.start()

        async def answers() -> bool:
            if not self.web.running:
                raise AssertionError(f"the web process exited: {self.web.log.read_text()[-3000:]}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with (
                    aiohttp.ClientSession() as http,
                    http.get(self.web_url + "/accounts/login/") as answer,
                ):
                    return answer.status == 200
            return False

        await until(answers, 60, "the web process did not start")

    async def heal(self) -> None:
        """Everything up again and every switch off: the soak's end, before the drain."""
        import aiohttp

        if not self.redis.running:
            await self.start_redis()
        for backend in self.backends:
            if not backend.running:
                await backend.start()
        async with aiohttp.ClientSession() as http:
            for backend in self.backends:
                await backend.faults(http, reset=True)
        for bridge in self.bridges:
            if not bridge.running:
                bridge.start()
        if not self.web.running:
            await self.start_web()

    async def stop(self) -> None:
        for child in [self.web, *self.bridges]:
            await asyncio.to_thread(child.stop, signal.SIGTERM)
        for backend in self.backends:
            if backend.running:
                await asyncio.to_thread(backend.process.stop)
        await asyncio.to_thread(self.redis.stop, signal.SIGTERM)

    def log_problems(self) -> dict[str, int]:
        """Lines with a traceback or an ERROR in each process's log."""
        counts = {}
        for log in sorted(self.work.glob("*.log")):
            text = log.read_text(errors="replace")
            counts[log.stem] = text.count("Traceback") + text.count(" ERROR ")
        return counts


# -- the faults -----------------------------------------------------------------------------------


@dataclass
class Injected:
    fault: Fault
    began: float  # monotonic
    ended: float = 0.0
    note: str = ""
    pages: int = 0  # pages a user loaded while it lasted
    pages_5xx: int = 0


class Injector:
    """Carries out the schedule; each fault is a task of its own (faults overlap), but faults of
    one process wait for each other (a backend is not killed while it is being restarted)."""

    def __init__(self, topology: Topology, options: SoakOptions, viewer: SoakUser | None = None) -> None:
        self.topology = topology
        self.options = options
        self.viewer = viewer  # loads their page all through each fault
        self.injected: list[Injected] = []
        self._locks: dict[tuple[str, int], asyncio.Lock] = defaultdict(asyncio.Lock)

    async def run(self, schedule: list[Fault], started: float) -> None:
        import aiohttp

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            tasks = []
            for fault in schedule:
                await asyncio.sleep(max(0.0, started + fault.at - time.monotonic()))
                tasks.append(asyncio.create_task(self._inject(fault, http)))
            await asyncio.gather(*tasks)

    async def _inject(self, fault: Fault, http: Any) -> None:
        key = ("backend" if fault.kind in BACKEND_FAULTS else fault.kind, fault.target)
        async with self._locks[key]:
            if fault.kind in BACKEND_FAULTS - {"history-lost"}:
                # Mid-job, as a fault that matters strikes: when the backend runs something.
                with contextlib.suppress(AssertionError):
                    await until(self._backend(fault).busy, BUSY_WAIT_SECONDS, "idle")
            record = Injected(fault, time.monotonic())
            self.injected.append(record)
            viewing = asyncio.create_task(self._view_pages(record))
            try:
                await getattr(self, "_" + fault.kind.replace("-", "_"))(fault, http, record)
            except Exception as error:  # a fault that could not be carried out is reported, not fatal
                record.note = f"not carried out: {error!r}"[:200]
            record.ended = time.monotonic()
            await viewing

    async def _view_pages(self, record: Injected) -> None:
        """A user loads their page over and over while the fault lasts: never a 5xx."""
        import aiohttp

        while self.viewer is not None and not record.ended:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):  # the web process is down
                async with self.viewer.http.get("/") as answer:
                    record.pages += 1
                    record.pages_5xx += answer.status >= 500
            await asyncio.sleep(0.25)

    def _backend(self, fault: Fault) -> Backend:
        return self.topology.backends[fault.target]

    async def _switch_for(self, fault: Fault, http: Any, seconds: float, **switches: Any) -> None:
        backend = self._backend(fault)
        await backend.faults(http, **switches)
        await asyncio.sleep(seconds)
        await backend.faults(http, reset=True)

    async def _backend_kill(self, fault: Fault, http: Any, record: Injected) -> None:
        backend = self._backend(fault)
        await backend.kill()
        await asyncio.sleep(fault.amount)
        await backend.start()

    _backend_dead = _backend_kill  # the same, down past BACKEND_DEAD_SECONDS (its amount)

    async def _history_lost(self, fault: Fault, http: Any, record: Injected) -> None:
        backend = self._backend(fault)
        ended = sum(1 for run in backend.runs() if run["event"] == "end")

        async def another_ended() -> bool:
            return sum(1 for run in backend.runs() if run["event"] == "end") > ended

        try:
            await until(another_ended, 10, "no prompt ended")
            record.note = "after a prompt ended"
        except AssertionError as error:
            record.note = str(error)
        await backend.kill()
        await backend.start()

    async def _outage(self, fault: Fault, http: Any, record: Injected) -> None:
        await self._backend(fault).faults(http, refuse_connections=fault.amount)
        await asyncio.sleep(fault.amount + 0.2)

    async def _ws_drop(self, fault: Fault, http: Any, record: Injected) -> None:
        after = 2 + fault.variant % 24
        abruptly = bool(fault.variant & 1 << 8)
        record.note = f"after {after} messages, {'cut' if abruptly else 'closed'}"
        await self._backend(fault).faults(http, drop_ws_after=after, drop_abruptly=abruptly, drop_once=True)
        await asyncio.sleep(2.0)

    async def _ws_deaf(self, fault: Fault, http: Any, record: Injected) -> None:
        await self._backend(fault).faults(http, forget_sockets=True)
        await asyncio.sleep(2.0)

    async def _view_500(self, fault: Fault, http: Any, record: Injected) -> None:
        await self._switch_for(fault, http, fault.amount, http_500=["/view"])

    async def _view_slow(self, fault: Fault, http: Any, record: Injected) -> None:
        await self._switch_for(fault, http, 5.0, view_delay=fault.amount)
        await asyncio.sleep(fault.amount)  # the last slow answers are still on their way

    async def _prompt_500(self, fault: Fault, http: Any, record: Injected) -> None:
        await self._switch_for(fault, http, fault.amount, http_500=["/prompt"])

    async def _prompt_lost(self, fault: Fault, http: Any, record: Injected) -> None:
        await self._switch_for(fault, http, fault.amount, prompt_answer_delay=REQUEST_TIMEOUT_SECONDS + 1)
        await asyncio.sleep(REQUEST_TIMEOUT_SECONDS + 1)

    async def _node_error(self, fault: Fault, http: Any, record: Injected) -> None:
        step = 1 + fault.variant % self.options.steps
        record.note = f"KSampler fails at step {step}"
        await self._switch_for(
            fault,
            http,
            fault.amount,
            fail_node="KSampler",
            fail_at_step=step,
            fail_message="Out of memory (soak)",
        )

    async def _bridge_kill(self, fault: Fault, http: Any, record: Injected) -> None:
        bridge = self.topology.bridges[fault.target]
        await asyncio.to_thread(bridge.stop, signal.SIGKILL)
        await asyncio.sleep(fault.amount)
        bridge.start()

    async def _web_restart(self, fault: Fault, http: Any, record: Injected) -> None:
        sig = signal.SIGKILL if fault.variant & 1 else signal.SIGTERM
        record.note = "SIGKILL" if sig == signal.SIGKILL else "SIGTERM"
        await asyncio.to_thread(self.topology.web.stop, sig)
        await asyncio.sleep(fault.amount)
        await self.topology.start_web()

    async def _redis_restart(self, fault: Fault, http: Any, record: Injected) -> None:
        await asyncio.to_thread(self.topology.redis.stop, signal.SIGKILL)
        await asyncio.sleep(fault.amount)
        await self.topology.start_redis()


# -- the users ------------------------------------------------------------------------------------


@dataclass
class Posted:
    """One job a user asked for, and what the site answered."""

    user: int
    text: str
    via: str  # "form" or "api"
    asked_at: float
    pk: int | None = None  # the job the site said it made
    accepted_at: float = 0.0
    answers_5xx: int = 0
    refusals: list[str] = field(default_factory=list)  # other answers without a job


class SoakUser:
    """A person at the form or a script with an API key: posts a job, and when the site does
    not answer (it restarts), tries again as they would: the script with the same
    Idempotency-Key; the person after looking in their history for the job."""

    def __init__(self, index: int, user: Any, via: str, site: str, api_key: str, session: str) -> None:
        self.index, self.user, self.via, self.site = index, user, via, site
        self.api_key, self.session = api_key, session
        self.http: Any = None
        self.csrf_token = ""

    async def open(self) -> None:
        import aiohttp

        self.http = aiohttp.ClientSession(
            base_url=self.site,
            cookie_jar=aiohttp.CookieJar(unsafe=True),
            timeout=aiohttp.ClientTimeout(total=30),
            # A fresh connection each time: a restarted web process leaves no dead one behind.
            connector=aiohttp.TCPConnector(force_close=True),
        )
        if self.via == "form":
            self.http.cookie_jar.update_cookies({"sessionid": self.session})
            async with self.http.get("/") as answer:
                assert answer.status == 200, answer.status
            self.csrf_token = next(c.value for c in self.http.cookie_jar if c.key == "csrftoken")

    async def close(self) -> None:
        await self.http.close()

    async def post(self, posted: Posted, steps: int, give_up_at: float) -> None:
        import aiohttp

        idempotency_key = uuid.uuid4().hex
        while time.monotonic() < give_up_at:
            try:
                status, pk, text = await self._post_once(posted, steps, idempotency_key)
            except aiohttp.ClientConnectorError:
                await asyncio.sleep(0.3)  # not even connected: nothing reached the site
                continue
            except (aiohttp.ClientError, TimeoutError):
                # Sent, answer lost: the person looks in their history before posting again.
                if self.via == "form" and (pk := await self._find_in_history(posted.text)):
                    posted.pk, posted.accepted_at = pk, time.monotonic()
                    return
                await asyncio.sleep(0.3)
                continue
            if pk is not None:
                posted.pk, posted.accepted_at = pk, time.monotonic()
                return
            posted.refusals.append(f"{status}: {text[:200]}")
            if status >= 500:
                posted.answers_5xx += 1
                if self.via == "form" and (pk := await self._find_in_history(posted.text)):
                    posted.pk, posted.accepted_at = pk, time.monotonic()  # made after all
                    return
            await asyncio.sleep(0.5)

    async def _post_once(
        self, posted: Posted, steps: int, idempotency_key: str
    ) -> tuple[int, int | None, str]:
        from bench.common import CARD_RE, small_job

        if self.via == "api":
            body = {"workflow": "txt2img", "parameters": {**api_parameters(steps), "prompt": posted.text}}
            headers = {"Authorization": f"Bearer {self.api_key}", "Idempotency-Key": idempotency_key}
            async with self.http.post("/api/jobs", json=body, headers=headers) as answer:
                text = await answer.text()
                pk = json.loads(text)["id"] if answer.status == 202 else None
                return answer.status, pk, text
        headers = {"X-CSRFToken": self.csrf_token, "HX-Request": "true"}
        async with self.http.post(
            "/generate/", data={**small_job(steps), "prompt": posted.text}, headers=headers
        ) as answer:
            text = await answer.text()
            card = CARD_RE.search(text) if answer.status == 200 else None
            return answer.status, int(card.group(1)) if card else None, text

    async def _find_in_history(self, text: str) -> int | None:
        from generator.models import Prompt

        return (
            await Prompt.objects.filter(owner=self.user, positive_text=text)
            .values_list("pk", flat=True)
            .afirst()
        )


def api_parameters(steps: int) -> dict[str, Any]:
    """The form's small job (bench.common.small_job) as POST /api/jobs's parameters."""
    from bench.common import small_job

    fields = {k: v for k, v in small_job(steps).items() if k not in ("workflow", "size")}
    return {k: int(v) if v.isdigit() else v for k, v in fields.items()}


def make_users(count: int, seed: int, site: str) -> list[SoakUser]:
    from django.contrib.auth import get_user_model

    from bench.common import session_cookie
    from generator.api.keys import create_key

    users = []
    for n in range(count):
        user = get_user_model().objects.create_user(f"soak{seed}-{n}", password=PASSWORD)
        via = "form" if n % 2 == 0 else "api"
        users.append(SoakUser(n, user, via, site, create_key(user, "soak")[1], session_cookie(user)))
    return users


async def post_jobs(users: list[SoakUser], options: SoakOptions, started: float) -> list[Posted]:
    """Each user posts their share at seeded times over `post_seconds`."""
    rng = random.Random(options.seed + 1)
    plan = sorted((rng.uniform(0, options.post_seconds), n % len(users), n) for n in range(options.jobs))
    posted = [
        Posted(user, f"soak {options.seed} user {user} job {n}", users[user].via, 0.0) for _, user, n in plan
    ]
    give_up_at = started + options.post_seconds + 120

    async def one(at: float, job: Posted) -> None:
        await asyncio.sleep(max(0.0, started + at - time.monotonic()))
        job.asked_at = time.monotonic()
        await users[job.user].post(job, options.steps, give_up_at)

    await asyncio.gather(*(one(at, job) for (at, _, _), job in zip(plan, posted, strict=True)))
    return posted


# -- what became of the jobs ----------------------------------------------------------------------


def readable(error: str) -> bool:
    """A reason a user can read: a sentence in words, not a traceback, an exception's repr or a
    bare code."""
    text = error.strip()
    if not text or not text[0].isupper() or " " not in text:
        return False
    return not any(marker in text for marker in ("Traceback", "Error(", "Exception(", "<", "errno", "\\n"))


@dataclass
class JobFate:
    posted: Posted
    status: str = ""  # "" when the site has no such job
    error: str = ""
    images: int = 0
    images_on_disk: int = 0
    ended_at: float | None = None  # monotonic
    backends: set[int] = field(default_factory=set)  # where ComfyUI got it
    runs: int = 0
    unforced_reruns: int = 0

    def describe(self) -> str:
        posted = self.posted
        if posted.pk is None:
            refused = posted.refusals[-1] if posted.refusals else "no answer"
            return f"{posted.text} ({posted.via}): never accepted; {len(posted.refusals)} refusals, {refused}"
        return (
            f"job {posted.pk} ({posted.via}): {self.status or 'no such job'} {self.error[:80]!r}, "
            f"{self.images} images ({self.images_on_disk} on disk), "
            f"sent to backends {sorted(self.backends)}, {self.runs} runs"
        )

    @property
    def outcome(self) -> str:
        if self.posted.pk is None or not self.status:
            return "lost"
        if self.status not in ("succeeded", "failed", "cancelled"):
            return "stuck"
        if self.status == "succeeded":
            return "succeeded" if self.images_on_disk >= 1 else "lost"
        return "failed, reason" if readable(self.error) else "failed, no reason"


def runs_by_job(backends: list[Backend]) -> dict[int, list[dict[str, Any]]]:
    """Every run ComfyUI began, by the site's job: {backend, start, end, status} (no end: cut)."""
    found: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for backend in backends:
        open_runs: dict[str, dict[str, Any]] = {}
        for line in backend.runs():
            if line["job"] is None:
                continue
            if line["event"] == "start":
                run = {"backend": backend.index, "start": line["at"], "end": None, "status": "cut"}
                open_runs[line["prompt_id"]] = run
                found[line["job"]].append(run)
            elif line["event"] == "end" and line["prompt_id"] in open_runs:
                run = open_runs.pop(line["prompt_id"])
                run["end"], run["status"] = line["at"], line["status"]
    return found


def unforced_reruns(runs: list[dict[str, Any]], injected: list[Injected]) -> int:
    """Runs of one job after its first that no crash forced: between the previous run's start
    and this one's, its backend was not killed, restarted or unreachable."""
    ordered = sorted(runs, key=lambda run: run["start"])
    unforced = 0
    for before, after in itertools.pairwise(ordered):
        forced = any(
            i.fault.kind in CRASHES
            and i.fault.target == before["backend"]
            and i.began <= after["start"]
            and (i.ended or time.monotonic()) + SETTLE_SECONDS >= before["start"]
            for i in injected
        )
        unforced += not forced
    return unforced


def collect_fates(
    posted: list[Posted], topology: Topology, media_root: Path, injected: list[Injected]
) -> list[JobFate]:
    from generator.models import GeneratedImage, Prompt

    clock_offset = time.time() - time.monotonic()
    rows = {p.pk: p for p in Prompt.objects.filter(pk__in=[p.pk for p in posted if p.pk])}
    images: dict[int, list[str]] = defaultdict(list)
    for prompt_id, name in GeneratedImage.objects.filter(prompt_id__in=rows).values_list("prompt_id", "file"):
        images[prompt_id].append(name)
    sent_to: dict[int, set[int]] = defaultdict(set)
    for backend in topology.backends:
        for line in backend.runs():
            if line["event"] == "queued" and line["job"] is not None:
                sent_to[line["job"]].add(backend.index)
    runs = runs_by_job(topology.backends)
    url_index = {backend.url: backend.index for backend in topology.backends}
    fates = []
    for job in posted:
        fate = JobFate(job)
        row = rows.get(job.pk)
        if row is not None:
            fate.status, fate.error = row.status, row.error
            fate.images = len(images[row.pk])
            fate.images_on_disk = sum((media_root / name).is_file() for name in images[row.pk])
            fate.ended_at = row.finished_at.timestamp() - clock_offset if row.finished_at else None
            fate.backends = sent_to[row.pk] | (
                {url_index[row.backend]} if row.backend in url_index else set()
            )
            fate.runs = len(runs[row.pk])
            fate.unforced_reruns = unforced_reruns(runs[row.pk], injected)
        fates.append(fate)
    return fates


def touched(fate: JobFate, injected: Injected, now: float) -> bool:
    """Whether the fault touched the job: while it was between its post and its end, and, for
    a fault of one backend, with the job sent to that backend."""
    began = fate.posted.asked_at
    ended = fate.ended_at if fate.ended_at is not None else now
    window_end = (injected.ended or now) + SETTLE_SECONDS
    if ended < injected.began or began > window_end:
        return False
    return injected.fault.kind not in BACKEND_FAULTS or injected.fault.target in fate.backends


COLUMNS = (
    "jobs",
    "succeeded",
    "failed, reason",
    "failed, no reason",
    "lost",
    "twice",
    "stuck",
    "reruns",
    "5xx",
    "pages",
    "pages 5xx",
)


@dataclass
class SoakReport:
    options: SoakOptions
    schedule: list[Fault]
    injected: list[Injected]
    fates: list[JobFate]
    elapsed: float
    log_problems: dict[str, int]
    rows: dict[str, Counter] = field(default_factory=dict)

    def __post_init__(self) -> None:
        now = time.monotonic()
        kinds = list(dict.fromkeys(i.fault.kind for i in self.injected))
        self.rows = {kind: Counter() for kind in kinds}
        self.rows["no fault"] = Counter()
        self.rows["all jobs"] = Counter()
        for fate in self.fates:
            kinds_of_job = {i.fault.kind for i in self.injected if touched(fate, i, now)} or {"no fault"}
            for row in [*kinds_of_job, "all jobs"]:
                self.rows[row].update(_tally(fate))
        for injected in self.injected:
            for row in (injected.fault.kind, "all jobs"):
                self.rows[row].update({"pages": injected.pages, "pages 5xx": injected.pages_5xx})

    @property
    def total(self) -> Counter:
        return self.rows["all jobs"]

    @property
    def missed(self) -> list[str]:
        """The targets missed, in words; empty when the soak passed."""
        total = self.total
        problems = [
            f"{total[column]} {what}"
            for column, what in (
                ("lost", "jobs lost"),
                ("twice", "jobs with an image imported twice"),
                ("stuck", "jobs stuck not final"),
                ("failed, no reason", "jobs failed without a readable reason"),
                ("reruns", "runs ComfyUI made again with no crash forcing it"),
                ("5xx", "answers 5xx to users posting"),
                ("pages 5xx", "pages answered 5xx"),
            )
            if total[column]
        ]
        if total["jobs"] != len(self.fates):
            problems.append("jobs missing from the count")
        return problems

    def table(self) -> str:
        width = max(len(row) for row in self.rows) + 2
        injections = Counter(i.fault.kind for i in self.injected)
        lines = [f"{'fault (injections)':{width + 5}}" + "".join(f"{c:>{len(c) + 2}}" for c in COLUMNS)]
        for row, counts in self.rows.items():
            label = f"{row} ({injections[row]})" if row in injections else row
            lines.append(f"{label:{width + 5}}" + "".join(f"{counts[c]:>{len(c) + 2}}" for c in COLUMNS))
        return "\n".join(lines)

    def failures(self) -> Counter:
        return Counter(
            f.error.splitlines()[0][:150] for f in self.fates if f.status in ("failed", "cancelled")
        )

    def print(self, out: Callable[[str], Any] = print) -> None:
        out(f"seed {self.options.seed}: {len(self.fates)} jobs from {self.options.users} users, "
            f"{self.options.bridges} bridges, {self.options.backends} backends, {len(self.injected)} faults, "
            f"{self.elapsed:.0f} s")  # fmt: skip
        out(self.table())
        out("columns: jobs touched by the fault; succeeded with their image; failed with a reason a "
            "user can read; failed without one; lost; an image imported twice; stuck not final; runs "
            "ComfyUI made again with no crash forcing it; answers 5xx users saw while posting; pages a "
            "user loaded while the fault lasted, and how many were 5xx")  # fmt: skip
        runs = sum(fate.runs for fate in self.fates)
        again = sum(max(0, fate.runs - 1) for fate in self.fates)
        unforced = self.total["reruns"]
        forced = again - unforced
        out(f"ComfyUI began {runs} runs for {len(self.fates)} jobs: {again} of them again, "
            f"{forced} forced by a kill, restart or outage of the backend, {unforced} not")  # fmt: skip
        reasons = self.failures()
        if reasons:
            out("failure reasons users read:")
            for reason, count in reasons.most_common():
                out(f"  {count:4} × {reason}")
        lost = [fate for fate in self.fates if fate.outcome in ("lost", "stuck")]
        if lost:
            out("lost or stuck:")
            for fate in lost[:20]:
                out(f"  {fate.describe()}")
        notes = [f"  {i.fault.describe()}: {i.note}" for i in self.injected if i.note]
        if notes:
            out("fault notes:")
            out("\n".join(notes))
        problems = {name: n for name, n in self.log_problems.items() if n}
        if problems:
            out(f"tracebacks or ERROR lines in the logs: {problems}")
        out("TARGET MET: lost 0, twice 0, stuck 0, every failure readable, no unforced re-run, no 5xx"
            if not self.missed else "TARGET MISSED: " + "; ".join(self.missed))  # fmt: skip


def _tally(fate: JobFate) -> Counter:
    counts = Counter({"jobs": 1, fate.outcome: 1})
    counts["twice"] = int(fate.images > 1)
    counts["reruns"] = fate.unforced_reruns
    counts["5xx"] = fate.posted.answers_5xx
    return counts


async def wait_final(posted: list[Posted], within: float) -> None:
    from generator.models import Prompt

    pks = [p.pk for p in posted if p.pk]
    deadline = time.monotonic() + within
    pending = Prompt.objects.filter(pk__in=pks).exclude(status__in=Prompt.FINAL_STATUSES)
    while time.monotonic() < deadline and await pending.aexists():  # noqa: ASYNC110 - other processes
        await asyncio.sleep(0.5)


async def run_soak(
    options: SoakOptions, work: Path, database_url: str, media_root: Path, out: Callable[[str], Any] = print
) -> SoakReport:
    """The whole soak; the caller has a migrated, empty database at `database_url`, shared with
    this process (Django set up on it)."""
    from asgiref.sync import sync_to_async

    schedule = fault_schedule(options)
    topology = Topology(work, database_url, media_root, options)
    began = time.monotonic()
    users: list[SoakUser] = []
    try:
        await topology.start()
        users = await sync_to_async(make_users)(options.users, options.seed, topology.web_url)
        for user in users:
            await user.open()
        injector = Injector(topology, options, viewer=users[0])
        started = time.monotonic()
        posting = asyncio.create_task(post_jobs(users, options, started))
        await injector.run(schedule, started)
        posted = await posting
        await topology.heal()
        await wait_final(posted, options.drain_seconds)
        fates = await sync_to_async(collect_fates)(posted, topology, media_root, injector.injected)
    finally:
        for user in users:
            await user.close()
        await topology.stop()
    return SoakReport(
        options, schedule, injector.injected, fates, time.monotonic() - began, topology.log_problems()
    )


# -- the command ----------------------------------------------------------------------------------


def parse_args(argv: Iterable[str] | None = None) -> tuple[SoakOptions, argparse.Namespace]:
    defaults = SoakOptions()
    kinds = "\n".join(f"  {kind:14} {text}" for kind, text in FAULTS.items())
    parser = argparse.ArgumentParser(
        description=f"{__doc__}\nThe faults:\n{kinds}", formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--seed", type=int, default=defaults.seed, help="the schedule's seed (default %(default)s)"
    )
    parser.add_argument("--jobs", type=int, default=defaults.jobs, help="jobs posted (default %(default)s)")
    parser.add_argument(
        "--users", type=int, default=defaults.users, help="users posting (default %(default)s)"
    )
    parser.add_argument(
        "--bridges", type=int, default=defaults.bridges, help="bridge processes (default %(default)s)"
    )
    parser.add_argument(
        "--backends", type=int, default=defaults.backends, help="emulators (default %(default)s)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=defaults.rounds,
        help="injections of each fault kind (default %(default)s)",
    )
    parser.add_argument(
        "--kinds", default=",".join(defaults.kinds), help="fault kinds, comma-separated (default: all)"
    )
    parser.add_argument(
        "--steps", type=int, default=defaults.steps, help="sampler steps a job (default %(default)s)"
    )
    parser.add_argument(
        "--step-seconds",
        type=float,
        default=defaults.step_seconds,
        help="seconds a step (default %(default)s)",
    )
    parser.add_argument(
        "--post-seconds",
        type=float,
        default=defaults.post_seconds,
        help="jobs are posted over this long (default %(default)s)",
    )
    parser.add_argument(
        "--drain-seconds",
        type=float,
        default=defaults.drain_seconds,
        help="then jobs have this long to end (default %(default)s)",
    )
    parser.add_argument(
        "--dead-seconds",
        type=float,
        default=defaults.dead_seconds,
        help="BACKEND_DEAD_SECONDS (default %(default)s)",
    )
    parser.add_argument(
        "--database",
        default="comfysite_soak",
        help="PostgreSQL database, dropped and made again (default %(default)s)",
    )
    parser.add_argument("--schedule-only", action="store_true", help="print the seed's schedule and stop")
    args = parser.parse_args(argv)  # fmt: skip
    kinds = tuple(kind for kind in args.kinds.split(",") if kind)
    unknown = set(kinds) - set(FAULTS)
    if unknown:
        parser.error(f"unknown fault kinds: {', '.join(sorted(unknown))} (known: {', '.join(FAULTS)})")
    options = SoakOptions(
        seed=args.seed, jobs=args.jobs, users=args.users, bridges=args.bridges, backends=args.backends,
        rounds=args.rounds, kinds=kinds, steps=args.steps, step_seconds=args.step_seconds,
        post_seconds=args.post_seconds, drain_seconds=args.drain_seconds, dead_seconds=args.dead_seconds,
    )  # fmt: skip
    return options, args


def main() -> int:
    options, args = parse_args()
    schedule = fault_schedule(options)
    print(f"seed {options.seed}: the schedule")
    print("\n".join(fault.describe() for fault in schedule))
    if args.schedule_only:
        return 0
    server = "postgresql://postgres@127.0.0.1:5432"
    database_url = f"{server}/{args.database}"
    work = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    media_root = work / "media"
    os.environ.update(
        DJANGO_SETTINGS_MODULE="comfysite.settings",
        DATABASE_URL=database_url,
        COMFYSITE_VAR_DIR=str(work / "var"),
        MEDIA_ROOT=str(media_root),
        LOG_LEVEL=os.environ.get("LOG_LEVEL", "WARNING"),
    )
    for inherited in ("COMFYUI_URL", "COMFYUI_URLS", "REDIS_URL"):
        os.environ.pop(inherited, None)
    import psycopg

    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {args.database} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {args.database}")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    print(f"logs and media in {work}; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    report = asyncio.run(run_soak(options, work, database_url, media_root))
    report.print()
    print(f"soak took {datetime.timedelta(seconds=round(report.elapsed))}")
    return 1 if report.missed else 0


if __name__ == "__main__":
    sys.exit(main())
