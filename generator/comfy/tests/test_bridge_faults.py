"""The bridge when ComfyUI answers a job's POST too late, forgets our websocket (open, answering
pings, but deaf), holds jobs another bridge process queued, gains models, or makes an output too
big for Pillow's guard: no job runs twice, none waits for the two-minute silence check, none
ends without its images."""

from __future__ import annotations

import asyncio
import re
import time

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone
from PIL import Image

from generator.comfy.bridge import Bridge, BridgeSettings
from generator.comfy.emulator import Emulator
from generator.live import Relay
from generator.models import Backend, Prompt
from generator.tests.factories import UserFactory

from .test_bridge import drain, images_of, listen, new_job, running_bridge, wait_for_status

pytestmark = pytest.mark.django_db(transaction=True)

S = Prompt.Status
STEP = re.compile(r"step (\d+)/60")


def runs_of(emulator: Emulator, pk: int) -> int:
    """How many times ComfyUI ran job `pk` (its outputs are named comfysite/job<pk>_...)."""
    return sum(
        1
        for entry in emulator.history.values()
        for output in entry["outputs"].values()
        for image in output.get("images", [])
        if image["filename"].startswith(f"job{pk}_")
    )


# -- a POST /prompt whose answer does not come in time ------------------------------------------------


async def test_a_job_whose_post_answer_times_out_is_not_sent_again_while_comfyui_runs_it(slow_emulator):
    """ComfyUI queues each job but answers after the bridge stopped waiting, while the job waits
    or runs: the bridge finds it in /queue under the id it chose, instead of putting it back in
    the site's queue (3 of 4 such jobs ran twice)."""
    slow_emulator.faults.prompt_answer_delay = 1.5
    jobs = [await new_job(seed=n, steps=5) for n in range(3)]  # a second each

    async with running_bridge(slow_emulator.url, request_seconds=0.5) as bridge:
        bridge.wake.set()
        done = [await wait_for_status(job.pk, S.SUCCEEDED, S.FAILED, within=30) for job in jobs]
        await asyncio.sleep(2.0)  # anything sent twice would be running by now

    assert [job.status for job in done] == [S.SUCCEEDED] * 3
    assert [job.submit_attempts for job in done] == [1, 1, 1]
    assert [runs_of(slow_emulator, job.pk) for job in done] == [1, 1, 1]  # not run twice on the GPU
    assert slow_emulator.queue.remaining == 0
    assert [len(await images_of(job.pk)) for job in done] == [1, 1, 1]


async def test_a_job_comfyui_queues_only_after_the_post_timed_out_is_waited_for(slow_emulator):
    """A slow validation: the job is not in ComfyUI's queue yet when the POST times out. It is
    looked for again, not sent a second time."""
    slow_emulator.faults.prompt_queue_delay = 1.5
    job = await new_job(steps=5)

    async with running_bridge(slow_emulator.url, request_seconds=0.5) as bridge:
        bridge.wake.set()
        await asyncio.sleep(1.0)
        assert (await Prompt.objects.aget(pk=job.pk)).status == S.SUBMITTED  # waiting for ComfyUI's word
        done = await wait_for_status(job.pk, S.SUCCEEDED, S.FAILED, within=15)
        await asyncio.sleep(2.0)

    assert (done.status, done.submit_attempts, runs_of(slow_emulator, job.pk)) == (S.SUCCEEDED, 1, 1)
    assert slow_emulator.queue.remaining == 0


async def test_a_job_comfyui_never_took_is_sent_again_after_a_while(emulator):
    """The POST failed (HTTP 500) and ComfyUI shows the job nowhere: after unconfirmed_seconds
    it goes back to the site's queue and runs once."""
    emulator.faults.http_500 = {"/prompt"}
    job = await new_job()

    async with running_bridge(emulator.url, unconfirmed_seconds=1.0) as bridge:
        bridge.wake.set()
        await asyncio.sleep(0.5)
        emulator.faults.http_500 = set()
        done = await wait_for_status(job.pk, S.SUCCEEDED, S.FAILED, within=15)

    assert (done.status, done.submit_attempts, runs_of(emulator, job.pk)) == (S.SUCCEEDED, 2, 1)


# -- a websocket ComfyUI forgot ---------------------------------------------------------------------


async def test_a_socket_comfyui_forgot_mid_job_is_caught_in_seconds_and_progress_flows_again(slow_emulator):
    """Half-open: the socket stays open and answers pings, but ComfyUI sends it nothing. With
    the default settings (silence check at 120 s) the bridge notices within seconds, connects
    again, and the owner's tab sees the job's steps again."""
    owner = await sync_to_async(UserFactory)()
    tab = await listen(owner)
    job = await new_job(owner, steps=60)  # 12 s at 0.2 s a step

    async with running_bridge(slow_emulator.url) as bridge:
        bridge.wake.set()
        await wait_for_status(job.pk, S.RUNNING)
        await asyncio.sleep(0.5)
        slow_emulator.faults.forget_sockets()
        forgotten_at = time.monotonic()
        (active,) = bridge.active.values()
        step_when_forgotten = active.live.step
        while bridge.connection.connects < 2:
            assert time.monotonic() - forgotten_at < 10, "the deaf socket was not noticed"
            await asyncio.sleep(0.1)
        noticed_after = time.monotonic() - forgotten_at
        done = await wait_for_status(job.pk, S.SUCCEEDED, within=20)
        steps = [int(m.group(1)) for f in await drain(tab) for m in STEP.finditer(f)]

    assert noticed_after < 9  # quiet_seconds (5 s) and a probe, not the 120 s silence check
    assert step_when_forgotten < 10
    assert max(steps) == 60  # progress reached the tab again, to the last step
    assert any(step_when_forgotten + 10 < step < 60 for step in steps)
    assert (done.submit_attempts, len(await images_of(done.pk))) == (1, 1)
    await tab.disconnect()


async def test_a_socket_forgotten_while_idle_is_caught_by_the_next_job_it_does_not_hear_of(slow_emulator):
    """ComfyUI tells every socket it knows when its queue changes; our socket hearing nothing
    after we queued a job is deaf: connect again before the job's events are missed."""
    owner = await sync_to_async(UserFactory)()
    tab = await listen(owner)
    async with running_bridge(slow_emulator.url, quiet_seconds=60) as bridge:
        slow_emulator.faults.forget_sockets()
        job = await new_job(owner, steps=25)
        bridge.wake.set()
        done = await wait_for_status(job.pk, S.SUCCEEDED, within=15)
        fragments = await drain(tab)

    assert bridge.connection.connects == 2
    assert any(f"prompt-{job.pk}-progress" in f and "step" in f for f in fragments)
    assert done.submit_attempts == 1
    await tab.disconnect()


async def test_a_job_that_ends_while_the_socket_is_deaf_is_settled_in_seconds(slow_emulator):
    """Found by the fault soak: ComfyUI forgot our socket just as a short job started, and the
    job ended without a word to us. Nothing ran any more, so nothing looked deaf, and the job
    stayed "running" until the two-minute silence check."""
    job = await new_job(steps=3)  # 0.6 s at 0.2 s a step

    async with running_bridge(slow_emulator.url) as bridge:
        bridge.wake.set()
        await wait_for_status(job.pk, S.RUNNING)
        slow_emulator.faults.forget_sockets()
        forgotten_at = time.monotonic()
        done = await wait_for_status(job.pk, S.SUCCEEDED, S.FAILED, within=20)
        settled_after = time.monotonic() - forgotten_at

    assert done.status == S.SUCCEEDED
    assert settled_after < 10  # quiet_seconds (5 s) and a probe, not the 120 s silence check
    assert (done.submit_attempts, len(await images_of(done.pk))) == (1, 1)
    assert runs_of(slow_emulator, job.pk) == 1


async def test_a_long_quiet_node_is_not_mistaken_for_a_deaf_socket_again_and_again():
    """A node that runs long without a message (a model loading) looks like a deaf socket; each
    reconnect that hears nothing new of our job doubles the wait, so 8 quiet seconds cost a few
    reconnects, not one a second."""
    async with Emulator(step_seconds=8.0, preview=False) as emulator:
        job = await new_job(steps=1)
        async with running_bridge(emulator.url, quiet_seconds=0.5) as bridge:
            bridge.wake.set()
            done = await wait_for_status(job.pk, S.SUCCEEDED, within=20)
            reconnects = bridge.connection.connects - 1

    assert done.submit_attempts == 1
    assert 1 <= reconnects <= 4  # after 0.5, 1, 2 and 4 quiet seconds at most (else about 8)


# -- jobs queued by another bridge process --------------------------------------------------------


async def test_a_job_queued_by_another_bridge_process_is_settled_by_polling_not_silence(slow_emulator):
    """Each bridge process has its own client id, so a job queued by one that died sends its
    events to nobody: the bridge taking over sees whose it is in /queue and follows it there."""
    job = await new_job(steps=10)
    async with running_bridge(slow_emulator.url, client_id="comfysite-a-process-that-died") as bridge:
        bridge.wake.set()
        await wait_for_status(job.pk, S.RUNNING)
    async with running_bridge(slow_emulator.url) as bridge:
        started = time.monotonic()
        done = await wait_for_status(job.pk, S.SUCCEEDED, within=15)

    assert time.monotonic() - started < 6  # settled by polling /queue, not the 120 s silence check
    assert (done.submit_attempts, len(await images_of(done.pk)), runs_of(slow_emulator, job.pk)) == (1, 1, 1)


# -- what ComfyUI has --------------------------------------------------------------------------------


async def test_models_added_to_comfyui_show_up_without_a_reconnect(emulator):
    async with running_bridge(emulator.url, object_info_seconds=0.3) as bridge:
        emulator.object_info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0].append(
            "just-downloaded.safetensors"
        )
        deadline = time.monotonic() + 5
        while True:
            row = await Backend.objects.aget(url=emulator.url)
            choices = row.object_info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
            if "just-downloaded.safetensors" in choices:
                break
            assert time.monotonic() < deadline, "the new model never showed"
            await asyncio.sleep(0.1)
        assert bridge.connection.connects == 1


# -- outputs -----------------------------------------------------------------------------------------


async def test_an_output_over_pillows_size_guard_is_stored_with_its_thumbnail(emulator, monkeypatch):
    """A 185-megapixel upscale trips Pillow's decompression-bomb guard (2 × MAX_IMAGE_PIXELS);
    here the guard is lowered so that a 64 × 64 output trips it."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    job = await new_job()

    async with running_bridge(emulator.url) as bridge:
        bridge.wake.set()
        done = await wait_for_status(job.pk, S.SUCCEEDED, S.FAILED)

    (image,) = await images_of(done.pk)
    assert done.status == S.SUCCEEDED
    assert (image.width, image.height) == (64, 64)
    assert image.thumbnail.name.endswith(".webp")


async def test_an_output_that_cannot_be_stored_does_not_leave_the_job_succeeded_without_it(
    emulator, monkeypatch
):
    from generator import jobs

    real_store = jobs.store_output
    failures = iter([OSError("No space left on device")])

    def store_once_failing(*args, **kwargs):
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return real_store(*args, **kwargs)

    monkeypatch.setattr(jobs, "store_output", store_once_failing)
    job = await new_job()

    async with running_bridge(emulator.url, silence_seconds=1.0) as bridge:
        bridge.wake.set()
        done = await wait_for_status(job.pk, S.SUCCEEDED, S.FAILED, within=15)

    assert done.status == S.SUCCEEDED
    assert len(await images_of(done.pk)) == 1


def test_bridges_of_two_installations_have_their_own_client_ids_and_upload_names():
    one = Bridge("http://gpu:8188", installation="a" * 32)
    other = Bridge("http://gpu:8188", installation="b" * 32)

    assert one.client_id != other.client_id
    assert one.client_id.startswith("comfysite-aaaaaaaaaaaa-")
    job = Prompt(pk=7)
    from generator.jobs import _job

    assert one.upload_name(_job(job)) != other.upload_name(_job(job))
    assert one.extra_data(_job(job)) == {"comfysite": {"installation": "a" * 32, "job": 7}}
    assert BridgeSettings().silence_seconds > BridgeSettings().quiet_seconds


# -- the channel layer ---------------------------------------------------------------------------


class RestartingLayer:
    """A channel layer (Redis) that goes away once while the bridge listens, then comes back."""

    def __init__(self) -> None:
        self.messages: asyncio.Queue[dict] = asyncio.Queue()
        self.failures = 1
        self.channels = 0

    async def new_channel(self) -> str:
        self.channels += 1
        return f"bridge-{self.channels}"

    async def group_add(self, group: str, channel: str) -> None:
        pass

    async def group_discard(self, group: str, channel: str) -> None:
        raise ConnectionError("Connection refused")  # still down while the listener cleans up

    async def receive(self, channel: str) -> dict:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        return await self.messages.get()


async def test_the_bridge_keeps_listening_for_wakes_after_redis_restarts():
    """Found by the soak: Redis restarting ended the bridge's control listener, and with it the
    whole bridge (its socket, its jobs' live state); the process started it again from scratch."""
    bridge = Bridge("http://127.0.0.1:9")
    bridge.layer = layer = RestartingLayer()
    listener = asyncio.create_task(bridge._listen_control())
    try:
        await asyncio.sleep(0.1)
        bridge.wake.clear()
        await layer.messages.put({"type": "wake"})
        await asyncio.wait_for(bridge.wake.wait(), 3)
        await asyncio.sleep(0.1)
        assert layer.messages.empty()  # the wake sent after the outage was received
        assert not listener.done()
        assert layer.channels == 2  # it subscribed again once the layer was back
    finally:
        listener.cancel()


async def test_fragments_lost_while_redis_restarts_are_a_warning_not_an_error(caplog):
    class AwayLayer:
        async def group_send(self, group: str, message: dict) -> None:
            raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    bridge = Bridge("http://127.0.0.1:9")
    bridge.layer = AwayLayer()
    bridge._relay(Relay(1, "step 1"))
    bridge._relay(Relay(1, "step 2"))

    await bridge._send_relayed()

    assert not bridge._outbox
    assert [r.levelname for r in caplog.records if r.name == "generator.comfy.bridge"] == ["WARNING"] * 2
    assert all(r.exc_info is None for r in caplog.records)  # no traceback for a known outage


async def test_a_cancel_whose_message_was_lost_still_stops_the_job(slow_emulator):
    # Redis restarting as the owner pressed Cancel: the cancel is saved on the job, the message
    # to the bridge is lost. The bridge finds it at its next health round.
    job = await new_job(steps=30)
    async with running_bridge(slow_emulator.url, health_seconds=0.2) as bridge:
        bridge.wake.set()
        await wait_for_status(job.pk, S.RUNNING)
        await Prompt.objects.filter(pk=job.pk).aupdate(cancel_requested_at=timezone.now())

        cancelled = await wait_for_status(job.pk, S.CANCELLED, within=10)

    assert cancelled.error == "Cancelled while it ran."
