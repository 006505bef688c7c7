"""Two installations of ComfySite on one ComfyUI (staging and production, a developer's checkout
beside a test run): two `manage.py serve` processes, each with its own database and media, send
their users' jobs to one emulated ComfyUI at once. Neither disturbs the other: no job of one is
deleted, interrupted or settled by the other, no uploaded input is overwritten by the other's job
of the same number, and progress keeps reaching both sites' users, also while the other site
starts, and after one restarts (its identity is kept in its database)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
from websockets.sync.client import connect

from generator.comfy.emulator import Emulator
from generator.tests.browser import running_site
from generator.tests.factories import PASSWORD

from .recording import workflow

# Run in each site's environment before it starts: a user with text-to-image jobs and
# image-to-image jobs on a source of SIZE (each site its own, so a swapped input shows).
SEED = """
import io
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from PIL import Image
from generator.models import Prompt

user = get_user_model().objects.create_user({name!r}, password={password!r})
small = {{"steps": 8, "cfg": 7.0, "sampler": "euler", "scheduler": "normal", "batch_size": 1,
          "checkpoint": "v1-5-pruned-emaonly.safetensors"}}
for n in range({img2img}):
    out = io.BytesIO()
    Image.new("RGB", {size!r}, {colour!r}).save(out, "PNG")
    prompt = Prompt(owner=user, workflow="img2img", positive_text=f"{name} img {{n}}",
                    params={{**small, "seed": 100 + n, "denoise": 0.5}})
    prompt.source_image.save("source.png", ContentFile(out.getvalue()), save=False)
    prompt.save()
for n in range({txt2img}):
    Prompt.objects.create(owner=user, workflow="txt2img", positive_text=f"{name} {{n}}",
                          params={{**small, "seed": n, "width": 64, "height": 64}})
"""

SITES = {
    "alpha": {"size": (96, 64), "colour": (200, 40, 40), "img2img": 3, "txt2img": 3},
    "beta": {"size": (64, 96), "colour": (40, 40, 200), "img2img": 3, "txt2img": 4},
}
STEP = re.compile(r'id="prompt-(\d+)-progress".*?step (\d+)/8', re.S)


@contextlib.contextmanager
def running_emulator(root: Path, step_seconds: float) -> Iterator[Emulator]:
    """The emulator on an event loop of its own, in a thread: the sites reach it over HTTP and
    websockets like any ComfyUI, and the test can slow it down and look into its folders."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    emulator = Emulator(step_seconds=step_seconds, root=root)
    asyncio.run_coroutine_threadsafe(emulator.start(), loop).result(timeout=20)
    try:
        yield emulator
    finally:
        asyncio.run_coroutine_threadsafe(emulator.stop(), loop).result(timeout=20)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


class Tab:
    """A logged-in browser tab's websocket: every fragment it receives, with when."""

    def __init__(self, site_url: str, username: str) -> None:
        with httpx.Client(base_url=site_url, follow_redirects=False) as http:
            http.get("/accounts/login/")
            token = http.cookies["csrftoken"]
            answer = http.post(
                "/accounts/login/",
                data={"username": username, "password": PASSWORD, "csrfmiddlewaretoken": token},
            )
            assert answer.status_code == 302, answer.text
            session = http.cookies["sessionid"]
        self.received: list[tuple[float, str]] = []
        self._url = site_url.replace("http://", "ws://") + "/ws/jobs/"
        self._headers = {"Cookie": f"sessionid={session}", "Origin": site_url}
        self._open = threading.Event()
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        assert self._open.wait(10), "the tab's websocket did not open"

    def _read(self) -> None:
        with connect(self._url, additional_headers=self._headers) as socket:
            self._open.set()
            while not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    self.received.append((time.monotonic(), str(socket.recv(timeout=0.1))))

    def steps(self, since: float = 0.0) -> dict[int, set[int]]:
        """The steps of each job (by its number on the site) told since `since`."""
        told: dict[int, set[int]] = {}
        for at, html in list(self.received):
            if at >= since:
                for job, step in STEP.findall(html):
                    told.setdefault(int(job), set()).add(int(step))
        return told

    def close(self) -> None:
        self._stop.set()
        self._reader.join(timeout=5)


def database(site: Path) -> sqlite3.Connection:
    return sqlite3.connect(site / "var" / "db.sqlite3", timeout=20)


def jobs_of(site: Path) -> list[dict]:
    with contextlib.closing(database(site)) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute(
            "SELECT id, workflow, status, error, submit_attempts, comfy_prompt_id FROM generator_prompt"
        ).fetchall()
        images = db.execute("SELECT prompt_id, width, height FROM generator_generatedimage").fetchall()
    sizes: dict[int, list[tuple[int, int]]] = {}
    for image in images:
        sizes.setdefault(image["prompt_id"], []).append((image["width"], image["height"]))
    return [
        {
            **dict(row),
            "comfy_prompt_id": str(uuid.UUID(row["comfy_prompt_id"])),
            "sizes": sizes.get(row["id"], []),
        }
        if row["comfy_prompt_id"]
        else {**dict(row), "sizes": sizes.get(row["id"], [])}
        for row in rows
    ]


def identity_of(site: Path) -> str:
    with contextlib.closing(database(site)) as db:
        (key,) = db.execute("SELECT key FROM generator_installation").fetchone()
    return key.replace("-", "")


def until(condition, within: float, message: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, message()
        time.sleep(0.1)


def comfyui_runs(emulator: Emulator) -> dict[str, str]:
    """What ComfyUI ran, by prompt id: "success" or "error"."""
    return {prompt_id: entry["status"]["status_str"] for prompt_id, entry in list(emulator.history.items())}


def in_comfyui(emulator: Emulator, site: Path) -> int:
    """How many of a site's jobs wait or run in ComfyUI now."""
    queued = {item.prompt_id for item in list(emulator.pending)}
    if emulator.running is not None:
        queued.add(emulator.running.prompt_id)
    return len(queued & {job["comfy_prompt_id"] for job in jobs_of(site)})


def test_two_sites_share_one_comfyui_without_disturbing_each_other(tmp_path):
    paths = {name: tmp_path / name for name in SITES}
    seeds = {name: SEED.format(name=name, password=PASSWORD, **options) for name, options in SITES.items()}
    with running_emulator(tmp_path / "comfyui", step_seconds=1.0) as comfyui:
        # Someone else's long job (a person in ComfyUI's own page) holds the GPU while both sites
        # start, so that each site's first jobs wait in ComfyUI's queue together: same numbers,
        # both with an input image, both listed when the other site's bridge connects.
        blocker = workflow("txt2img")
        blocker["3"]["inputs"]["steps"] = 60
        blocker = httpx.post(f"{comfyui.url}/prompt", json={"prompt": blocker, "client_id": "a-person"})
        blocker_id = blocker.json()["prompt_id"]
        env = {"COMFYUI_URL": comfyui.url, "LOG_LEVEL": "WARNING"}
        with contextlib.ExitStack() as sites:
            alpha = sites.enter_context(running_site(paths["alpha"], env, seed=seeds["alpha"]))
            alpha_tab = Tab(alpha, "alpha")
            sites.callback(alpha_tab.close)
            until(
                lambda: in_comfyui(comfyui, paths["alpha"]) == 2,
                within=30,
                message=lambda: f"alpha's jobs never reached ComfyUI: {jobs_of(paths['alpha'])}",
            )

            # Beta starts while alpha's jobs wait in ComfyUI: its bridge connects, looks for stale
            # copies of its own jobs, uploads its inputs and queues its jobs, all beside alpha's.
            beta_started = time.monotonic()
            beta_stack = contextlib.ExitStack()
            beta = beta_stack.enter_context(running_site(paths["beta"], env, seed=seeds["beta"]))
            until(
                lambda: in_comfyui(comfyui, paths["beta"]) == 2,
                within=30,
                message=lambda: f"beta's jobs never reached ComfyUI: {jobs_of(paths['beta'])}",
            )
            assert in_comfyui(comfyui, paths["alpha"]) == 2  # beta left alpha's jobs alone
            comfyui.step_seconds = 0.08
            httpx.post(f"{comfyui.url}/interrupt", json={"prompt_id": blocker_id})

            # Beta restarts mid-run: a new process (with a new client id), the same identity.
            until(
                lambda: any(job["status"] == "succeeded" for job in jobs_of(paths["beta"])),
                within=30,
                message=lambda: f"no job of beta ever finished: {jobs_of(paths['beta'])}",
            )
            beta_stack.close()
            restarted = time.monotonic()
            beta = sites.enter_context(running_site(paths["beta"], env))
            beta_tab = Tab(beta, "beta")
            sites.callback(beta_tab.close)

            def all_final() -> bool:
                return all(
                    job["status"] in {"succeeded", "failed", "cancelled"}
                    for path in paths.values()
                    for job in jobs_of(path)
                )

            until(all_final, within=90, message=lambda: json.dumps({n: jobs_of(p) for n, p in paths.items()}))
            time.sleep(0.5)  # the last fragments on their way to the tabs

            alpha_steps, beta_steps = alpha_tab.steps(since=beta_started), beta_tab.steps(since=restarted)
            runs = comfyui_runs(comfyui)
            identities = {name: identity_of(path) for name, path in paths.items()}
            input_folder = tmp_path / "comfyui" / "input"
            inputs = sorted(str(p.relative_to(input_folder)) for p in input_folder.rglob("*.png"))

    results = {name: jobs_of(path) for name, path in paths.items()}
    for name, jobs in results.items():
        options = SITES[name]
        assert len(jobs) == options["txt2img"] + options["img2img"]
        for job in jobs:
            # None stopped by the other site ("Stopped on the ComfyUI server"), none lost and
            # sent again, each run by ComfyUI exactly once.
            assert (job["status"], job["error"], job["submit_attempts"]) == ("succeeded", "", 1), (name, job)
            assert runs[job["comfy_prompt_id"]] == "success"
            # Image to image keeps its source's size: each job got its own site's input.
            expected = options["size"] if job["workflow"] == "img2img" else (64, 64)
            assert job["sizes"] == [expected], (name, job)
    assert runs.pop(blocker_id) == "error"  # interrupted by the test, by its id
    assert len(runs) == sum(len(jobs) for jobs in results.values())  # nothing ran twice

    assert identities["alpha"] != identities["beta"]
    for name, identity in identities.items():  # each site's inputs under its own names
        assert [f for f in inputs if identity[:12] in f] == sorted(
            f"comfysite/{identity[:12]}-job{job['id']}.png"
            for job in results[name]
            if job["workflow"] == "img2img"
        )

    # Progress kept reaching alpha's user after beta started (every step of some job), and
    # beta's user after beta's restart.
    assert len(alpha_steps) >= 2, alpha_steps
    assert any(steps >= {1, 8} for steps in alpha_steps.values()), alpha_steps
    assert any(steps >= {8} for steps in beta_steps.values()), beta_steps
