"""The bridge against the emulator on a real port: jobs go from queued to a final state, their
events reach their owner's websocket (and nobody else's), and nothing is lost when ComfyUI,
the websocket or the bridge itself goes away mid-job."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from generator.backends import installation_key
from generator.comfy.bridge import Bridge, BridgeSettings
from generator.comfy.client import ComfyClient
from generator.comfy.emulator import Emulator
from generator.comfy.errors import NotFound
from generator.consumers import JobsConsumer
from generator.live import Relay
from generator.models import GeneratedImage, Prompt
from generator.tests.factories import PromptFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

S = Prompt.Status
SMALL = {
    "seed": 7,
    "steps": 3,
    "cfg": 7.0,
    "sampler": "euler",
    "scheduler": "normal",
    "width": 64,
    "height": 64,
    "batch_size": 1,
    "checkpoint": "v1-5-pruned-emaonly.safetensors",
}


@contextlib.asynccontextmanager
async def running_bridge(url: str, client_id: str | None = None, **settings):
    bridge = Bridge(url, client_id=client_id, settings=BridgeSettings(poll_seconds=0.1, **settings))
    task = asyncio.create_task(bridge.run())
    try:
        await asyncio.wait_for(bridge.connected.wait(), 10)
        yield bridge
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def new_job(owner=None, **params) -> Prompt:
    owner = owner or await sync_to_async(UserFactory)()
    return await sync_to_async(PromptFactory)(owner=owner, workflow="txt2img", params={**SMALL, **params})


async def wait_for_status(pk: int, *statuses: str, within: float = 20.0) -> Prompt:
    deadline = time.monotonic() + within
    while True:
        prompt = await Prompt.objects.aget(pk=pk)
        if prompt.status in statuses:
            return prompt
        if time.monotonic() > deadline:
            raise AssertionError(f"job {pk} is {prompt.status} ({prompt.error!r}), not {statuses}")
        await asyncio.sleep(0.05)


async def wait_for_attempt_running(pk: int, attempt: int, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while True:
        prompt = await Prompt.objects.aget(pk=pk)
        if prompt.status == S.RUNNING and prompt.submit_attempts == attempt:
            return
        assert time.monotonic() < deadline, f"attempt {attempt} of job {pk} never ran ({prompt.status})"
        await asyncio.sleep(0.05)


async def listen(user) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(JobsConsumer.as_asgi(), "/ws/jobs/")
    communicator.scope["user"] = user
    connected, _ = await communicator.connect()
    assert connected
    assert (await communicator.receive_from()).startswith('<div id="jobs"')  # the tab's list
    return communicator


async def drain(communicator: WebsocketCommunicator) -> list[str]:
    received = []
    while not await communicator.receive_nothing(timeout=0.2):
        received.append(await communicator.receive_from())
    return received


async def images_of(pk: int) -> list[GeneratedImage]:
    return [
        image
        async for image in GeneratedImage.objects.filter(prompt_id=pk).order_by("node_id", "output_index")
    ]


async def test_a_job_runs_to_success_and_only_its_owner_sees_it(emulator):
    owner, stranger = await sync_to_async(UserFactory)(), await sync_to_async(UserFactory)()
    mine, theirs = await listen(owner), await listen(stranger)
    job = await new_job(owner)

    async with running_bridge(emulator.url) as bridge:
        bridge.wake.set()
        done = await wait_for_status(job.pk, S.SUCCEEDED)
        fragments = await drain(mine)

    assert done.progress == 1.0
    assert done.started_at is not None
    assert done.finished_at is not None
    assert any('data-status="running"' in f for f in fragments)
    assert any("step-bar" in f for f in fragments)
    assert any("data:image/jpeg;base64," in f for f in fragments)  # a live preview
    final = [f for f in fragments if 'data-status="succeeded"' in f]
    assert final
    assert "data-image-id" in final[-1]
    assert await theirs.receive_nothing(timeout=0.3)
    await mine.disconnect()
    await theirs.disconnect()


STEP_LINE = re.compile(r"step (\d+)/(\d+)")


async def fragments_of_a_run(steps: int, step_seconds: float) -> list[str]:
    """What the owner's tab receives while one job runs to success, every step relayed."""
    owner = await sync_to_async(UserFactory)()
    tab = await listen(owner)
    job = await new_job(owner, steps=steps)
    async with (
        Emulator(step_seconds=step_seconds) as emulator,
        running_bridge(emulator.url, progress_interval=0) as bridge,
    ):
        bridge.wake.set()
        await wait_for_status(job.pk, S.SUCCEEDED)
        fragments = await drain(tab)
    await tab.disconnect()
    return fragments


async def test_a_tab_sees_every_step_in_order_and_the_finished_card_last():
    fragments = await fragments_of_a_run(steps=4, step_seconds=0.05)

    progress = [n for n, f in enumerate(fragments) if f.startswith('<div class="job-progress"')]
    steps = [int(m.group(1)) for n in progress for m in STEP_LINE.finditer(fragments[n]) if m.group(2) == "4"]
    assert steps == [1, 2, 3, 4]
    finished = [n for n, f in enumerate(fragments) if 'data-status="succeeded"' in f]
    assert finished
    assert finished[0] > progress[-1]


class SlowLayer:
    """A channel layer whose first send takes longest, as a busy Redis might."""

    def __init__(self) -> None:
        self.delivered: list[str] = []
        self.delays = iter([0.05, 0.001, 0.001, 0.001])

    async def group_send(self, group: str, message: dict) -> None:
        await asyncio.sleep(next(self.delays))
        self.delivered.append(message["html"])


async def test_fragments_relayed_from_two_tasks_are_delivered_in_the_order_relayed():
    bridge = Bridge("http://127.0.0.1:9")
    bridge.layer = SlowLayer()
    outbox = asyncio.create_task(bridge._run_outbox())

    bridge._relay(Relay(1, "running card"))  # from the state worker: the outbox task sends it...
    await asyncio.sleep(0.01)  # ...and is still at it when
    bridge._relay(Relay(1, "step 1"))  # the event consumer relays and sends its own
    await bridge._send_relayed()
    bridge._relay(Relay(1, "finished card"))
    bridge._relay(Relay(1, "step 2"))
    await bridge._send_relayed()
    outbox.cancel()

    assert bridge.layer.delivered == ["running card", "step 1", "finished card", "step 2"]


async def test_stored_images_are_byte_identical_to_what_comfyui_serves(emulator):
    job = await new_job(batch_size=2)
    async with running_bridge(emulator.url) as bridge:
        bridge.wake.set()
        done = await wait_for_status(job.pk, S.SUCCEEDED)

    stored = await images_of(job.pk)
    async with ComfyClient(emulator.url) as comfy:
        entry = await comfy.history(str(done.comfy_prompt_id))
        served = [await comfy.view(f) for f in entry.outputs["9"]]
    assert len(stored) == 2
    for image, data in zip(stored, served, strict=True):
        with image.file.open("rb") as handle:
            assert handle.read() == data
        assert image.thumbnail.name.endswith(".webp")
        assert (image.width, image.height, image.bytes) == (64, 64, len(data))


async def test_cancel_works_queued_waiting_in_comfyui_and_running(slow_emulator, settings):
    owner = await sync_to_async(UserFactory)()
    running, waiting, queued = [await new_job(owner, steps=30) for _ in range(3)]
    browser = Client()
    await sync_to_async(browser.force_login)(owner)

    async def cancel(job):
        response = await sync_to_async(browser.post)(f"/jobs/{job.pk}/cancel/")
        assert response.status_code == 200
        return response.text

    async with running_bridge(slow_emulator.url) as bridge:
        bridge.wake.set()
        await wait_for_status(running.pk, S.RUNNING)
        await wait_for_status(waiting.pk, S.SUBMITTED)
        assert (await Prompt.objects.aget(pk=queued.pk)).status == S.QUEUED

        assert 'data-status="cancelled"' in await cancel(queued)
        await cancel(waiting)
        assert "Cancelling…" in await cancel(running)

        for job in (queued, waiting, running):
            await wait_for_status(job.pk, S.CANCELLED)

    async with ComfyClient(slow_emulator.url) as comfy:
        assert await comfy.history(str((await Prompt.objects.aget(pk=waiting.pk)).comfy_prompt_id)) is None
        interrupted = await comfy.history(str((await Prompt.objects.aget(pk=running.pk)).comfy_prompt_id))
        assert interrupted.status_str == "error"
        assert (await comfy.queue()).pending == ()
    assert await images_of(running.pk) == []


async def test_an_execution_error_fails_the_job_in_words(emulator):
    emulator.faults.fail_node = "VAEDecode"
    failing = await new_job()

    async with running_bridge(emulator.url) as bridge:
        bridge.wake.set()
        failed = await wait_for_status(failing.pk, S.FAILED)
        emulator.faults.fail_node = None
        fine = await new_job()  # the bridge carries on with the next job
        bridge.wake.set()
        await wait_for_status(fine.pk, S.SUCCEEDED)

    assert failed.error == "VAE Decode (node 8) failed: Emulated failure (fault switch)"


async def test_a_workflow_comfyui_rejects_fails_with_its_node_errors_in_words(emulator):
    job = await new_job(checkpoint="missing.safetensors", steps=0)

    async with running_bridge(emulator.url) as bridge:
        bridge.wake.set()
        failed = await wait_for_status(job.pk, S.FAILED)

    assert "the model 'missing.safetensors' is not installed on this ComfyUI" in failed.error
    assert "“steps” must be at least 1 (got 0)" in failed.error


async def test_a_websocket_dropped_mid_job_loses_nothing(slow_emulator):
    job = await new_job(steps=6)
    async with running_bridge(slow_emulator.url) as bridge:
        bridge.wake.set()
        await wait_for_status(job.pk, S.RUNNING)
        slow_emulator.faults.drop_ws_after = 3  # the socket goes a few messages into the job
        done = await wait_for_status(job.pk, S.SUCCEEDED)

    assert len(await images_of(done.pk)) == 1


async def test_a_job_that_finished_while_the_bridge_was_down_is_imported_once(slow_emulator):
    job = await new_job(steps=5)
    async with running_bridge(slow_emulator.url) as bridge:
        bridge.wake.set()
        await wait_for_status(job.pk, S.RUNNING)
    # The bridge is gone; ComfyUI finishes the job on its own.
    for _ in range(100):
        if slow_emulator.history:
            break
        await asyncio.sleep(0.05)

    async with running_bridge(slow_emulator.url):
        done = await wait_for_status(job.pk, S.SUCCEEDED)

    assert len(await images_of(done.pk)) == 1


async def test_a_bridge_restarted_mid_job_picks_the_running_job_up_again(slow_emulator):
    job = await new_job(steps=15)
    async with running_bridge(slow_emulator.url) as bridge:
        bridge.wake.set()
        await wait_for_status(job.pk, S.RUNNING)
    async with running_bridge(slow_emulator.url):
        done = await wait_for_status(job.pk, S.SUCCEEDED)

    assert len(await images_of(done.pk)) == 1
    assert done.submit_attempts == 1  # it was not run twice


async def test_comfyui_restarting_and_losing_its_queue_gets_the_job_resubmitted_once(slow_emulator):
    job = await new_job(steps=8)
    async with running_bridge(slow_emulator.url) as bridge:
        bridge.wake.set()
        await wait_for_status(job.pk, S.RUNNING)
        await slow_emulator.restart()
        done = await wait_for_status(job.pk, S.SUCCEEDED, within=30)

    assert done.submit_attempts == 2
    assert len(await images_of(done.pk)) == 1


async def test_a_job_lost_by_two_restarts_fails_instead_of_running_forever(slow_emulator):
    job = await new_job(steps=30)
    async with running_bridge(slow_emulator.url) as bridge:
        bridge.wake.set()
        for attempt in (1, 2):
            await wait_for_attempt_running(job.pk, attempt)
            await slow_emulator.restart()
        failed = await wait_for_status(job.pk, S.FAILED, within=30)

    assert "restarted" in failed.error


async def test_comfyui_down_leaves_jobs_waiting_then_runs_them(emulator):
    await emulator.refuse_connections(1.5)
    job = await new_job()
    bridge = Bridge(emulator.url, settings=BridgeSettings(poll_seconds=0.1))
    task = asyncio.create_task(bridge.run())
    try:
        await asyncio.sleep(0.5)
        assert (await Prompt.objects.aget(pk=job.pk)).status == S.QUEUED
        done = await wait_for_status(job.pk, S.SUCCEEDED)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert done.status == S.SUCCEEDED


async def test_a_silent_running_job_is_reconciled(slow_emulator):
    """Events stop (a half-open socket); after the silence timeout the bridge asks ComfyUI."""
    job = await new_job(steps=4)
    async with running_bridge(slow_emulator.url, silence_seconds=1.0) as bridge:
        bridge.wake.set()
        await wait_for_status(job.pk, S.RUNNING)
        slow_emulator.sockets.clear()  # the emulator forgets the socket: no more events reach us
        done = await wait_for_status(job.pk, S.SUCCEEDED, within=15)

    assert len(await images_of(done.pk)) == 1


async def test_image_to_image_uploads_the_source_and_runs_end_to_end(emulator):
    from django.core.files.base import ContentFile

    from generator.tests.factories import png_bytes

    owner = await sync_to_async(UserFactory)()
    source = png_bytes((96, 64))

    def make_job():
        prompt = PromptFactory.build(
            owner=owner,
            workflow="img2img",
            params={**SMALL, "denoise": 0.5},
            positive_text="as a watercolour",
        )
        prompt.params.pop("width")
        prompt.params.pop("height")
        prompt.source_image.save("upload.png", ContentFile(source), save=False)
        prompt.save()
        return prompt

    job = await sync_to_async(make_job)()
    async with running_bridge(emulator.url) as bridge:
        bridge.wake.set()
        done = await wait_for_status(job.pk, S.SUCCEEDED)

    installation = await sync_to_async(installation_key)()
    uploaded = emulator.folders.root / "input" / "comfysite" / f"{installation[:12]}-job{job.pk}.png"
    assert uploaded.read_bytes() == source  # named for this installation's job, not any site's
    (image,) = await images_of(done.pk)
    assert (image.width, image.height) == (96, 64)  # image to image keeps the source's size


async def test_a_workflow_with_several_outputs_stores_each_once_and_no_temp_previews(
    emulator, settings, tmp_path
):
    import json
    import shutil

    from django.conf import settings as django_settings

    shutil.copy(django_settings.BASE_DIR / "workflows" / "txt2img.json", tmp_path / "two.json")
    graph = json.loads((tmp_path / "two.json").read_text())
    graph["10"] = {"inputs": {"filename_prefix": "second", "images": ["8", 0]}, "class_type": "SaveImage"}
    graph["11"] = {"inputs": {"images": ["8", 0]}, "class_type": "PreviewImage"}
    (tmp_path / "two.json").write_text(json.dumps(graph))
    settings.WORKFLOWS_DIR = tmp_path
    job = await sync_to_async(PromptFactory)(workflow="two", params={**SMALL, "batch_size": 2})

    async with running_bridge(emulator.url) as bridge:
        bridge.wake.set()
        done = await wait_for_status(job.pk, S.SUCCEEDED)
        await bridge.reconcile([])  # nothing to do; a second import would only come from a bug

    stored = await images_of(done.pk)
    assert [(i.node_id, i.output_index) for i in stored] == [("10", 0), ("10", 1), ("9", 0), ("9", 1)]


async def test_waiting_users_see_their_place_in_the_queue_move(slow_emulator):
    for _ in range(3):  # three other users' jobs ahead: two go to ComfyUI, one waits here
        await new_job(steps=4)
    waiting_owner = await sync_to_async(UserFactory)()
    waiting = await new_job(waiting_owner)
    tab = await listen(waiting_owner)
    await drain(tab)

    async with running_bridge(slow_emulator.url) as bridge:
        bridge.wake.set()
        await wait_for_status(waiting.pk, S.SUCCEEDED, within=30)
        fragments = await drain(tab)

    places = [f for f in fragments if f"prompt-{waiting.pk}-progress" in f and "in the queue" in f]
    assert places  # told where it stands while the others ran
    assert any('data-status="succeeded"' in f for f in fragments)
    await tab.disconnect()


async def test_a_job_whose_image_cannot_be_fetched_yet_is_not_succeeded_without_it(emulator):
    emulator.faults.http_500 = {"/view"}  # ComfyUI finished, but its files do not come
    job = await new_job()

    async with running_bridge(emulator.url, silence_seconds=1.0) as bridge:
        bridge.wake.set()
        await asyncio.sleep(1.0)
        assert (await Prompt.objects.aget(pk=job.pk)).status == S.RUNNING  # not succeeded, imageless
        emulator.faults.http_500 = set()
        done = await wait_for_status(job.pk, S.SUCCEEDED, S.FAILED, within=15)

    assert done.status == S.SUCCEEDED
    assert len(await images_of(job.pk)) == 1


async def test_a_job_whose_image_comfyui_no_longer_has_fails_in_words(emulator, monkeypatch):
    async def view_of_a_deleted_file(self, file):
        raise NotFound(f"ComfyUI has no file {file.filename!r} in its output folder.")

    monkeypatch.setattr(ComfyClient, "view", view_of_a_deleted_file)
    job = await new_job()

    async with running_bridge(emulator.url) as bridge:
        bridge.wake.set()
        done = await wait_for_status(job.pk, S.SUCCEEDED, S.FAILED)

    assert done.status == S.FAILED
    assert "no longer has its output" in done.error


BADGE = re.compile(r'class="badge status-(\w+)"')
CARD_STATUS = re.compile(r'<article class="job-card[^"]*" id="prompt-\d+" data-status="(\w+)"')
STATUS_ORDER = [S.QUEUED, S.SUBMITTED, S.RUNNING, S.SUCCEEDED]


async def test_the_badge_and_data_status_agree_at_every_update_and_never_step_back():
    """What a tab shows after each fragment: a fragment replaces the elements it holds, so the
    badge on the page is the last one sent, and data-status is the last card's."""
    fragments = await fragments_of_a_run(steps=6, step_seconds=0.02)

    shown: list[tuple[str, str]] = []  # (badge, data-status) after each fragment
    badge = card_status = S.QUEUED
    for fragment in fragments:
        badge = (BADGE.findall(fragment) or [badge])[-1]
        card_status = (CARD_STATUS.findall(fragment) or [card_status])[-1]
        shown.append((badge, card_status))
    assert all(badge == card_status for badge, card_status in shown), shown
    ranks = [STATUS_ORDER.index(badge) for badge, _ in shown]
    assert ranks == sorted(ranks), shown
    assert shown[-1] == (S.SUCCEEDED, S.SUCCEEDED)
