"""The backend banner's poll, measured: what GET /backend-status/ (which every open page asks
for every BANNER_POLL_SECONDS) costs the web process.

Runs the site as `manage.py serve` does, against the emulator in a process of its own; this
process plays the polling tabs, visitors not signed in and signed-in users, `--concurrency` at
a time. Prints latency (p50/p95/p99), requests a second, the web process's CPU per poll, and
what that makes for 1,000 open tabs at the default poll interval.

    .venv/bin/python bench/banner_poll.py [--polls 2000] [--concurrency 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "comfysite.settings")
os.environ["COMFYSITE_VAR_DIR"] = tempfile.mkdtemp(prefix="bench-banner-")
os.environ.setdefault("LOG_LEVEL", "WARNING")

import django  # noqa: E402

django.setup()

import aiohttp  # noqa: E402
from asgiref.sync import sync_to_async  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402

from bench.common import EmulatorProcess, cpu_seconds, percentile, run_site, session_cookie  # noqa: E402


async def poll(url: str, polls: int, concurrency: int, cookies: dict[str, str]) -> tuple[list[float], float]:
    """`polls` GETs of the banner, `concurrency` at a time: each one's seconds, and the wall time."""
    latencies: list[float] = []
    left = iter(range(polls))

    async def tab(http: aiohttp.ClientSession) -> None:
        for _ in left:
            started = time.perf_counter()
            async with http.get(url) as response:
                body = await response.text()
            latencies.append(time.perf_counter() - started)
            assert response.status == 200, response.status
            assert 'id="backend-banner"' in body, body[:200]

    started = time.perf_counter()
    async with aiohttp.ClientSession(cookies=cookies) as http:
        await asyncio.gather(*(tab(http) for _ in range(concurrency)))
    return latencies, time.perf_counter() - started


async def main(polls: int, concurrency: int) -> None:
    await sync_to_async(call_command)("migrate", verbosity=0)
    user = await get_user_model().objects.acreate(username="bench")
    cookie = await sync_to_async(session_cookie)(user)
    emulator = EmulatorProcess(step_seconds=0.0)
    site = await run_site(emulator.url)
    try:
        url = f"{site.url}/backend-status/"
        await poll(url, 50, 5, {})  # warm up: templates, connections
        for who, cookies in (("visitor", {}), ("signed in", {"sessionid": cookie})):
            cpu_before = cpu_seconds(site.process.pid)
            latencies, wall = await poll(url, polls, concurrency, cookies)
            cpu_per_poll = (cpu_seconds(site.process.pid) - cpu_before) / polls
            per_1000_tabs = 1000 / settings.BANNER_POLL_SECONDS * cpu_per_poll
            p50, p95, p99 = (percentile(latencies, q) * 1000 for q in (0.5, 0.95, 0.99))
            print(
                f"{who}: {polls} polls, {concurrency} at a time: "
                f"p50 {p50:.2f} ms, p95 {p95:.2f} ms, p99 {p99:.2f} ms; {polls / wall:.0f} polls/s; "
                f"site CPU {cpu_per_poll * 1000:.2f} ms a poll, so 1,000 tabs polling every "
                f"{settings.BANNER_POLL_SECONDS} s take {per_1000_tabs:.1%} of a core"
            )
    finally:
        site.stop()
        emulator.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--polls", type=int, default=2000, help="polls per kind of visitor (default 2000)")
    parser.add_argument("--concurrency", type=int, default=20, help="polls in flight at once (default 20)")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.polls, arguments.concurrency))
