"""Fair scheduling: one user's long queue does not starve another user's job."""

import pytest

from generator.jobs import claim_next_job
from generator.models import Prompt
from generator.scheduling import fair_order

from .factories import PromptFactory, UserFactory

pytestmark = pytest.mark.django_db


def test_a_single_job_queued_after_fifty_starts_within_the_next_two_slots():
    alice, bob = UserFactory(), UserFactory()
    for _ in range(50):
        PromptFactory(owner=alice)
    bobs = PromptFactory(owner=bob)

    started = [claim_next_job("http://gpu", on_demo_backend=False)[0].pk for _ in range(2)]

    assert bobs.pk in started


def test_users_take_turns_and_each_users_jobs_keep_their_order():
    alice, bob = UserFactory(), UserFactory()
    a = [PromptFactory(owner=alice) for _ in range(3)]
    b = [PromptFactory(owner=bob) for _ in range(2)]

    assert fair_order() == [a[0].pk, b[0].pk, a[1].pk, b[1].pk, a[2].pk]


def test_jobs_already_on_the_gpu_count_against_their_owner():
    alice, bob = UserFactory(), UserFactory()
    running = PromptFactory(owner=alice)
    running.transition_to(Prompt.Status.SUBMITTED)
    alices_next = PromptFactory(owner=alice)
    bobs = PromptFactory(owner=bob)

    assert fair_order() == [bobs.pk, alices_next.pk]


def test_a_job_its_backend_lost_goes_first():
    lost = PromptFactory()
    lost.transition_to(Prompt.Status.SUBMITTED, submit_attempts=1)
    fresh = PromptFactory()
    lost.transition_to(Prompt.Status.QUEUED)

    assert fair_order()[0] == lost.pk
    assert fresh.pk in fair_order()


def test_queue_positions_follow_the_fair_order(user_client, user):
    from generator.live import queue_positions

    other = UserFactory()
    theirs = [PromptFactory(owner=other) for _ in range(5)]
    mine = PromptFactory(owner=user)

    positions = queue_positions([mine, *theirs])

    assert positions[mine.pk] == 2
    assert positions[theirs[-1].pk] == 6
