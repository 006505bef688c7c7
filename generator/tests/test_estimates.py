"""The time a job card says is left: measured per backend, workflow and size, from the queue
ahead in the fair order, within 20 % of the real time on the emulator at a fixed step time."""

from __future__ import annotations

import asyncio
import time

import pytest
from asgiref.sync import sync_to_async

from generator.comfy.emulator import Emulator
from generator.comfy.tests.test_bridge import SMALL, new_job, running_bridge, wait_for_status
from generator.estimates import Measurement, StepClock, about, record_run, seconds_to_done
from generator.jobs import moved_queue_places
from generator.live import LiveState, load_live_states, render_cards, save_live_state
from generator.models import Prompt, StepRate
from generator.scheduling import fair_order, site_queue

from .factories import PromptFactory, UserFactory, backend

S = Prompt.Status
PARAMS = {"steps": 20, "width": 512, "height": 512}


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (None, ""),
        (3, "a few seconds"),
        (41, "about 40 s"),
        (57, "about 55 s"),
        (58, "about 1 min"),
        (170, "about 3 min"),
        (4800, "about 1 h 20 min"),
        (7200, "about 2 h"),
    ],
)
def test_estimates_read_as_rounded_words(seconds, words):
    assert about(seconds) == words


def test_a_run_is_timed_from_its_events():
    clock = StepClock()
    clock.start(100.0)
    clock.node(100.5)  # loader, encoders: before the steps
    clock.node(101.0)  # the sampler
    for step in range(1, 11):
        clock.step(step, 101.0 + 0.2 * step)
    clock.node(103.0)  # decoder, saver
    measured = clock.measurement(103.4)

    assert measured is not None
    assert measured.steps == 10
    assert measured.seconds_per_step == pytest.approx(0.2)
    assert measured.seconds_before_steps == pytest.approx(1.0)
    assert measured.seconds_after_steps == pytest.approx(0.4)


def test_a_rate_follows_the_newest_jobs_without_jumping(db):
    record_run("http://gpu", "txt2img", PARAMS, Measurement(20, 0.5, 2.0, 1.0))
    record_run("http://gpu", "txt2img", PARAMS, Measurement(20, 1.5, 2.0, 1.0))
    other_size = {**PARAMS, "width": 1024}
    record_run("http://gpu", "txt2img", other_size, Measurement(20, 2.0, 2.0, 1.0))

    rate = StepRate.objects.get(backend="http://gpu", workflow="txt2img", size="512×512")
    assert rate.seconds_per_step == pytest.approx(0.8)  # 0.5, then 30 % of the way to 1.5
    assert rate.jobs == 2
    assert StepRate.objects.get(size="1024×512").seconds_per_step == 2.0


def measured(backend: str = "http://gpu", seconds_per_step: float = 1.0) -> None:
    """20 steps at `seconds_per_step`, 2 s before and 1 s after: 23 s a job at 1 s a step."""
    record_run(backend, "txt2img", PARAMS, Measurement(20, seconds_per_step, 2.0, 1.0))


def test_a_queued_job_waits_for_the_work_ahead_of_it_in_the_fair_order(db):
    measured()
    running = PromptFactory(params=PARAMS, status=S.RUNNING, backend="http://gpu")
    save_live_state(running.pk, LiveState(seconds_left=10.0))
    waiting_in_comfy = PromptFactory(params=PARAMS, status=S.SUBMITTED, backend="http://gpu")
    first, second = PromptFactory(params=PARAMS), PromptFactory(params=PARAMS)

    estimates = seconds_to_done(site_queue(), [waiting_in_comfy, first, second])

    assert estimates[waiting_in_comfy.pk] == pytest.approx(10 + 23)
    assert estimates[first.pk] == pytest.approx(10 + 23 + 23)
    assert estimates[second.pk] == pytest.approx(10 + 23 + 23 + 23)


def test_a_job_far_back_is_estimated_from_the_front_of_the_queue_without_reading_all_of_it(db, monkeypatch):
    monkeypatch.setattr("generator.estimates.ADDED_UP", 3)
    monkeypatch.setattr("generator.jobs.ADDED_UP", 3)
    for url in ("http://gpu-a", "http://gpu-b"):  # two backends share the queue
        backend(url)
        measured(url)
    running = PromptFactory(params=PARAMS, status=S.RUNNING, backend="http://gpu-a")
    save_live_state(running.pk, LiveState(seconds_left=10.0))
    front = [
        PromptFactory(params={**PARAMS, "steps": 40}),
        PromptFactory(params=PARAMS),
        PromptFactory(params=PARAMS),
    ]
    behind = [PromptFactory(params=PARAMS) for _ in range(3)]

    estimates = seconds_to_done(site_queue(), [front[2], behind[0], behind[2]])

    # Added up job by job, the work ahead shared by the two: 10 s, then 43 s and 23 s runs.
    assert estimates[front[2].pk] == pytest.approx((10 + 43 + 23) / 2 + 23)
    # Right behind the front: exact too. Further back, the front's average run for each job between.
    assert estimates[behind[0].pk] == pytest.approx((10 + 43 + 23 + 23) / 2 + 23)
    average = (43 + 23 + 23) / 3
    assert estimates[behind[2].pk] == pytest.approx((10 + 43 + 23 + 23 + 2 * average) / 2 + 23)
    # The bridge's round of places tells the very words the card said.
    told = dict(line for relay in moved_queue_places() for line in relay.lines)
    assert f"{about(estimates[behind[2].pk])} to go" in told[behind[2].pk]


def test_nothing_is_said_of_a_job_whose_wait_was_never_measured(db):
    measured()
    unmeasured_size = PromptFactory(params={**PARAMS, "width": 2048})
    behind_it = PromptFactory(params=PARAMS)

    assert seconds_to_done(site_queue(), [unmeasured_size, behind_it]) == {}
    cards = render_cards([unmeasured_size, behind_it])
    assert all("to go" not in card for card in cards)


def test_the_card_of_a_queued_job_says_how_long_it_has_left(db):
    measured()
    job = PromptFactory(params=PARAMS)

    [card] = render_cards([job])

    assert "#1 in the queue" in card
    assert "about 25 s to go" in card  # 23 s, rounded to 5 s


def test_a_queued_line_is_told_again_only_when_its_words_change(db):
    measured()
    running = PromptFactory(params=PARAMS, status=S.RUNNING, backend="http://gpu")
    job = PromptFactory(params=PARAMS)
    save_live_state(running.pk, LiveState(seconds_left=20.0))
    [told] = moved_queue_places()
    assert f'id="prompt-{job.pk}-progress"' in told.html
    assert "about 45 s to go" in told.html

    save_live_state(running.pk, LiveState(seconds_left=21.0))  # 44 s: the same words
    assert moved_queue_places() == []
    save_live_state(running.pk, LiveState(seconds_left=5.0))
    [told] = moved_queue_places()
    assert "about 30 s to go" in told.html


# -- against the emulator at a fixed step time -------------------------------------------------

STEP_SECONDS = 0.1
STEPS = 10  # a second of sampling a job


async def run_to_measure(url: str, owner) -> None:
    for _ in range(2):
        job = await new_job(owner, steps=STEPS)
        async with running_bridge(url) as bridge:
            bridge.wake.set()
            await wait_for_status(job.pk, S.SUCCEEDED)


async def when_running_at_step(pk: int, step: int) -> LiveState:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        live = (await sync_to_async(load_live_states)([pk])).get(pk)
        if live is not None and live.step >= step and live.seconds_left is not None:
            return live
        await asyncio.sleep(0.01)
    raise AssertionError(f"job {pk} never reached step {step} with an estimate")


async def seconds_until_succeeded(pk: int, since: float) -> float:
    await wait_for_status(pk, S.SUCCEEDED, within=30)
    return time.monotonic() - since


@pytest.mark.django_db(transaction=True)
async def test_estimates_are_within_a_fifth_of_the_real_time_on_the_emulator():
    owner = await sync_to_async(UserFactory)()
    async with Emulator(step_seconds=STEP_SECONDS) as emulator:
        await run_to_measure(emulator.url, owner)
        rate = await StepRate.objects.aget(workflow="txt2img", size=f"{SMALL['width']}×{SMALL['height']}")
        assert rate.seconds_per_step == pytest.approx(STEP_SECONDS, rel=0.2)

        jobs = [await new_job(owner, steps=STEPS) for _ in range(4)]
        async with running_bridge(emulator.url, live_save_interval=0.05) as bridge:
            bridge.wake.set()
            running = await when_running_at_step(jobs[0].pk, 3)
            now = time.monotonic()
            queued = jobs[-1]
            queue = await sync_to_async(site_queue)()
            order = await sync_to_async(fair_order)()
            assert order[-1] == queued.pk  # last of those waiting in the site's queue
            assert queue.waiting_in_comfy == 1  # and one waits in ComfyUI, behind the running one
            queued_estimate = (await sync_to_async(seconds_to_done)(queue, [queued]))[queued.pk]
            running_took = await seconds_until_succeeded(jobs[0].pk, now)
            queued_took = await seconds_until_succeeded(queued.pk, now)

    # Seen: running 0.73-0.76 s said, 0.81 s taken; queued 3.90-4.10 s said, 3.95-4.06 s taken.
    assert running.seconds_left == pytest.approx(running_took, rel=0.2), (running.seconds_left, running_took)
    assert queued_estimate == pytest.approx(queued_took, rel=0.2), (queued_estimate, queued_took)
