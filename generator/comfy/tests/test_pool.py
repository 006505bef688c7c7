"""Several ComfyUI backends, several bridge processes: who drives what, where jobs go, and what
happens to the jobs of a backend that dies. (Across real processes, PostgreSQL and Redis:
test_topology.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from generator.backends import (
    BackendConfig,
    has_least_work,
    healthy_backends,
    installation_key,
    parse_backend_urls,
    release_leases,
    renew_leases,
    take_lease,
)
from generator.comfy.bridge import BridgeSettings, client_id_for
from generator.comfy.client import ComfyClient
from generator.comfy.emulator import Emulator
from generator.comfy.pool import BridgePool
from generator.models import Backend, Prompt
from generator.scheduling import site_queue
from generator.tests.factories import PromptFactory, UserFactory

from .test_bridge import new_job, wait_for_status

pytestmark = pytest.mark.django_db(transaction=True)

S = Prompt.Status
FAST = BridgeSettings(poll_seconds=0.1, health_seconds=0.2, dead_seconds=1.0)


@contextlib.asynccontextmanager
async def running_pool(urls: list[str], owner: str, lease_seconds: float = 1.0):
    pool = BridgePool(
        [BackendConfig(u) for u in urls], lease_seconds=lease_seconds, settings=FAST, owner=owner
    )
    task = asyncio.create_task(pool.run())
    try:
        yield pool
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def until(condition, within: float = 15.0, message: str = "condition never held") -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, message
        await asyncio.sleep(0.05)


def connected_urls(pool: BridgePool) -> set[str]:
    return {url for url, (bridge, _) in pool.bridges.items() if bridge.connected.is_set()}


# -- configuration ---------------------------------------------------------------------------------


def test_comfyui_urls_take_labels_and_weights():
    configs = parse_backend_urls(["http://gpu-a:8188/?label=GPU%20A&weight=3", " http://gpu-b:8188 "])

    assert configs == [BackendConfig("http://gpu-a:8188", "GPU A", 3), BackendConfig("http://gpu-b:8188")]


@pytest.mark.parametrize(
    ("entry", "complaint"),
    [
        ("gpu-a:8188", "not an http(s) URL"),
        ("http://gpu-a:8188?weight=0", "weight must be a whole number"),
        ("http://gpu-a:8188?weight=fast", "weight must be a whole number"),
        ("http://gpu-a:8188?lable=A", "unknown option(s) lable"),
    ],
)
def test_a_wrong_comfyui_urls_entry_is_refused_with_the_reason(entry, complaint):
    with pytest.raises(ValueError, match=complaint.replace("(", r"\(").replace(")", r"\)")):
        parse_backend_urls([entry])


# -- leases ------------------------------------------------------------------------------------------


def test_a_backend_is_driven_by_one_process_until_its_lease_runs_out():
    gpu = BackendConfig("http://gpu:8188", "GPU", 2)

    assert take_lease(gpu, "process-1", 10)
    assert not take_lease(gpu, "process-2", 10)
    assert renew_leases([gpu.url], "process-1", 10) == {gpu.url}
    assert renew_leases([gpu.url], "process-2", 10) == set()

    Backend.objects.filter(url=gpu.url).update(
        lease_expires_at=timezone.now() - datetime.timedelta(seconds=1)
    )
    assert take_lease(gpu, "process-2", 10)  # process-1 stopped renewing: taken over
    assert renew_leases([gpu.url], "process-1", 10) == set()  # and process-1 learns it lost it
    assert Backend.objects.get(url=gpu.url).weight == 2


def test_a_process_that_stops_cleanly_hands_its_backends_back_at_once():
    gpu = BackendConfig("http://gpu:8188")
    take_lease(gpu, "process-1", 60)

    release_leases([gpu.url], "process-1")

    assert take_lease(gpu, "process-2", 60)


# -- least work --------------------------------------------------------------------------------------


def online_backend(url: str, weight: int = 1) -> Backend:
    """A backend a bridge process drives and that reported just now."""
    return Backend.objects.create(
        url=url,
        online=True,
        checked_at=timezone.now(),
        weight=weight,
        lease_owner="process-1",
        lease_expires_at=timezone.now() + datetime.timedelta(seconds=10),
    )


def jobs_on(url: str, count: int) -> None:
    for _ in range(count):
        PromptFactory().transition_to(S.SUBMITTED, backend=url)


def takes_next_job(url: str, depth: int) -> bool:
    return has_least_work(url, depth=depth, peers=healthy_backends(30), load=site_queue().per_backend)


def test_the_next_job_goes_to_the_backend_with_the_least_work():
    online_backend("http://busy"), online_backend("http://idle")
    jobs_on("http://busy", 1)

    assert not takes_next_job("http://busy", depth=2)
    assert takes_next_job("http://idle", depth=2)


def test_work_is_weighed_by_each_backends_capacity():
    online_backend("http://big", weight=3), online_backend("http://small")
    jobs_on("http://big", 2)
    jobs_on("http://small", 1)

    assert takes_next_job("http://big", depth=4)  # 2/3 of its capacity < 1/1
    assert not takes_next_job("http://small", depth=4)


def test_a_backend_whose_bridge_went_quiet_does_not_hold_jobs_back():
    online_backend("http://busy")
    quiet = online_backend("http://quiet")
    Backend.objects.filter(pk=quiet.pk).update(checked_at=timezone.now() - datetime.timedelta(minutes=5))
    jobs_on("http://busy", 1)

    assert takes_next_job("http://busy", depth=2)


def test_a_backend_no_bridge_drives_any_more_does_not_hold_jobs_back():
    """Its URL was taken out of the configuration: the row still says online, fresh, but no
    bridge holds its lease, so no job waits for it."""
    online_backend("http://busy")
    online_backend("http://removed")
    Backend.objects.filter(url="http://removed").update(lease_owner="", lease_expires_at=None)
    jobs_on("http://busy", 1)

    assert [b.url for b in healthy_backends(30)] == ["http://busy"]
    assert takes_next_job("http://busy", depth=2)


# -- bridges at work -----------------------------------------------------------------------------------


async def test_two_bridge_processes_share_the_backends_and_one_takes_over_when_the_other_stops():
    async with Emulator(step_seconds=0.0) as first, Emulator(step_seconds=0.0) as second:
        urls = [first.url, second.url]
        async with running_pool(urls, "process-1") as one:
            async with running_pool(urls, "process-2") as two:
                await until(lambda: len(connected_urls(one)) + len(connected_urls(two)) == 2)
                assert not connected_urls(one) & connected_urls(two)  # one websocket owner each
                assert len(connected_urls(one)) == len(connected_urls(two)) == 1  # shared out
            await until(lambda: connected_urls(one) == set(urls), message="process-1 never took over")
            job = await new_job()
            assert (await wait_for_status(job.pk, S.SUCCEEDED)).status == S.SUCCEEDED


async def test_jobs_spread_over_the_backends_and_each_runs_once():
    async with (
        Emulator(step_seconds=0.02) as first,
        Emulator(step_seconds=0.02) as second,
        running_pool([first.url, second.url], "process-1") as pool,
    ):
        await until(lambda: len(connected_urls(pool)) == 2)
        user = await sync_to_async(UserFactory)()
        jobs = [await new_job(user, steps=5, seed=n) for n in range(8)]
        await pool.bridges[first.url][0].layer.group_send("comfy-bridge", {"type": "wake"})
        done = [await wait_for_status(job.pk, S.SUCCEEDED, S.FAILED) for job in jobs]

    assert {job.status for job in done} == {S.SUCCEEDED}
    assert {job.backend for job in done} == {first.url, second.url}
    for job in done:
        ran_on = [emu for emu in (first, second) if str(job.comfy_prompt_id) in emu.history]
        assert [emu.url for emu in ran_on] == [job.backend]


async def test_a_dead_backends_jobs_go_to_another_backend_and_do_not_run_twice():
    async with (
        Emulator(step_seconds=0.1) as doomed,
        Emulator(step_seconds=0.0) as healthy,
        running_pool([doomed.url], "process-1") as pool,
    ):
        await until(lambda: connected_urls(pool) == {doomed.url})
        job = await new_job(steps=50)
        await wait_for_status(job.pk, S.RUNNING)
        await doomed.restart(down_seconds=60)  # the GPU machine dies mid-job with its queue
        pool.backends.append(BackendConfig(healthy.url))  # another backend joins
        moved = await wait_for_status(job.pk, S.SUCCEEDED, S.FAILED, within=20)

    assert moved.status == S.SUCCEEDED
    assert moved.backend == healthy.url
    assert moved.submit_attempts == 2
    assert str(moved.comfy_prompt_id) in healthy.history


async def test_a_backend_that_returns_drops_its_copy_of_a_job_that_moved_elsewhere(emulator):
    """A copy in ComfyUI's queue, queued by this installation, of a job the site no longer
    expects there (moved to another backend while this one was unreachable) is deleted, not run
    twice; whatever other installations sharing the ComfyUI queued stays, even under a client id
    like ours."""
    installation = await sync_to_async(installation_key)()
    ours = {"comfysite": {"installation": installation, "job": 1}}
    theirs = {"comfysite": {"installation": "f" * 32, "job": 1}}
    running_copy = "00000000-0000-0000-0000-0000000000ff"
    stale_copy = "00000000-0000-0000-0000-00000000dead"
    other_site = ["00000000-0000-0000-0000-0000000000a1", "00000000-0000-0000-0000-0000000000a2"]
    emulator.step_seconds = 1.0
    async with ComfyClient(emulator.url) as comfy:
        queued = [(running_copy, ours), (stale_copy, ours), (other_site[0], theirs), (other_site[1], {})]
        for prompt_id, extra_data in queued:  # one runs, the others wait
            await comfy.queue_prompt(
                small_graph(),
                prompt_id=prompt_id,
                client_id=client_id_for(installation, emulator.url),
                extra_data=extra_data,
            )
        async with running_pool([emulator.url], "process-1") as pool:
            await until(lambda: connected_urls(pool) == {emulator.url})
            await asyncio.sleep(0.3)  # reconciling happens right after connecting
            queue = await comfy.queue()
            assert stale_copy not in queue
            assert all(prompt_id in queue for prompt_id in other_site)
            await until(lambda: running_copy in emulator.history, within=5)
        assert emulator.history[running_copy]["status"]["status_str"] == "error"  # interrupted


async def test_a_job_some_bridge_of_this_installation_still_drives_is_no_stale_copy(emulator):
    """Two URLs of one ComfyUI (an alias), each driven by a bridge: each sees the other's jobs
    in the queue, tagged with our installation, and leaves them alone."""
    job = await new_job(steps=20)
    installation = await sync_to_async(installation_key)()
    prompt_id = "00000000-0000-0000-0000-00000000beef"
    await sync_to_async(job.transition_to)(
        S.SUBMITTED, backend="http://alias:8188", comfy_prompt_id=prompt_id
    )
    emulator.step_seconds = 0.5
    async with ComfyClient(emulator.url) as comfy:
        await comfy.queue_prompt(
            small_graph(),
            prompt_id=prompt_id,
            client_id="another-process",
            extra_data={"comfysite": {"installation": installation, "job": job.pk}},
        )
        async with running_pool([emulator.url], "process-1") as pool:
            await until(lambda: connected_urls(pool) == {emulator.url})
            await asyncio.sleep(0.3)
            assert prompt_id in await comfy.queue()


def small_graph() -> dict:
    from generator.workflows import get_workflow

    return get_workflow("txt2img").fill({"width": 64, "height": 64, "steps": 30}, filename_prefix="stale")
