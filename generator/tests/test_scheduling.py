"""Fair scheduling: one user's long queue does not starve another user's job."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from generator.jobs import claim_next_job
from generator.models import GeneratedImage, Prompt
from generator.scheduling import fair_order

from .factories import PromptFactory, UserFactory

pytestmark = pytest.mark.django_db


def test_a_single_job_queued_after_fifty_starts_within_the_next_two_slots():
    alice, bob = UserFactory(), UserFactory()
    for _ in range(50):
        PromptFactory(owner=alice)
    bobs = PromptFactory(owner=bob)

    started = [claim_next_job("http://gpu", on_demo_backend=False).job.pk for _ in range(2)]

    assert bobs.pk in started


def claim_queries(queued: int) -> int:
    users = UserFactory.create_batch(3)
    for n in range(queued):
        PromptFactory(owner=users[n % 3])
    running = PromptFactory(owner=users[0])
    running.transition_to(Prompt.Status.SUBMITTED)
    running.transition_to(Prompt.Status.RUNNING)
    with CaptureQueriesContext(connection) as queries:
        assert claim_next_job("http://gpu", on_demo_backend=False) is not None
    Prompt.objects.all().delete()
    return len(queries)


def test_claiming_a_job_runs_the_same_few_queries_however_long_the_queue():
    # the jobs on GPUs, their owners' limits, the head of the queue, the claim itself;
    # on PostgreSQL the row lock too, in a savepoint
    expected = 4 + (3 if connection.features.has_select_for_update_skip_locked else 0)
    assert claim_queries(queued=1) == claim_queries(queued=60) == expected


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


def test_a_user_at_the_queued_limit_is_told_so_on_the_form(user_client, user, settings):
    from django.urls import reverse

    from .test_generate_views import HTMX, valid_data

    settings.DEFAULT_QUOTA = {**settings.DEFAULT_QUOTA, "max_queued": 2}
    for _ in range(2):
        PromptFactory(owner=user)

    response = user_client.post(reverse("generate"), valid_data(), **HTMX)

    assert "You already have 2 jobs waiting" in response.text
    assert Prompt.objects.filter(owner=user).count() == 2


def test_the_daily_image_limit_counts_made_and_pending_images(user_client, user, settings):
    from django.urls import reverse

    from .factories import GeneratedImageFactory
    from .test_generate_views import HTMX, valid_data

    settings.DEFAULT_QUOTA = {**settings.DEFAULT_QUOTA, "max_images_per_day": 3}
    GeneratedImageFactory(prompt=PromptFactory(owner=user))
    PromptFactory(owner=user, params={"batch_size": 1})

    response = user_client.post(reverse("generate"), valid_data(batch_size="2"), **HTMX)

    assert "limit 3 a day" in response.text
    assert "made 0 images in the last 24 hours and 2 more are on the way" in response.text


def test_deleting_images_does_not_give_back_the_days_allowance(user_client, user, settings):
    from django.urls import reverse

    from .factories import GeneratedImageFactory
    from .test_generate_views import HTMX, valid_data

    settings.DEFAULT_QUOTA = {**settings.DEFAULT_QUOTA, "max_images_per_day": 2}
    done = PromptFactory(owner=user, params={"batch_size": 2})
    done.transition_to(Prompt.Status.SUBMITTED)
    done.transition_to(Prompt.Status.SUCCEEDED)
    GeneratedImageFactory(prompt=done)
    GeneratedImageFactory(prompt=done)
    GeneratedImage.objects.filter(owner=user).delete()

    response = user_client.post(reverse("generate"), valid_data(), **HTMX)

    assert "You have made 2 images in the last 24 hours (limit 2 a day)" in response.text
    assert Prompt.objects.filter(owner=user).count() == 1


def test_a_group_quota_lifts_the_default_limits(user):
    from django.contrib.auth.models import Group

    from generator.models import Quota
    from generator.quotas import limits_for

    group = Group.objects.create(name="patrons")
    Quota.objects.create(group=group, max_queued=100, max_running=None, max_images_per_day=5000)
    user.groups.add(group)

    limits = limits_for(user)

    assert (limits.max_queued, limits.max_running, limits.max_images_per_day) == (100, None, 5000)


def test_jobs_of_a_user_at_the_running_limit_wait_while_others_go(settings):
    settings.DEFAULT_QUOTA = {**settings.DEFAULT_QUOTA, "max_running": 1}
    alice, bob = UserFactory(), UserFactory()
    first = PromptFactory(owner=alice)
    PromptFactory(owner=alice)
    bobs = PromptFactory(owner=bob)

    claimed = [claim_next_job("http://gpu", on_demo_backend=False).job.pk for _ in range(2)]

    assert claimed == [first.pk, bobs.pk]
    assert claim_next_job("http://gpu", on_demo_backend=False) is None


def test_when_the_queue_moves_each_user_is_told_once_of_their_jobs_whose_place_changed():
    from generator.jobs import moved_queue_places

    alice, bob = UserFactory(), UserFactory()
    alices = [PromptFactory(owner=alice), PromptFactory(owner=alice)]
    bobs = PromptFactory(owner=bob)
    relays = moved_queue_places()
    told = {relay.owner_id: relay.html for relay in relays}
    assert set(told) == {alice.pk, bob.pk}  # one message per user...
    assert all(f"prompt-{p.pk}-progress" in told[alice.pk] for p in alices)  # ...with all their lines
    assert "#3 in the queue" in told[alice.pk]  # fair order: alice, bob, alice
    # The same moves as data, for the API's event streams.
    events = {e["job"]: e for relay in relays for e in relay.events}
    assert events[alices[1].pk] == {"job": alices[1].pk, "kind": "queue", "place": 3}
    assert events[bobs.pk]["place"] == 2

    carol = UserFactory()
    PromptFactory(owner=carol)  # a first job: it goes ahead of alice's second, not of bob's
    told = {relay.owner_id: relay.html for relay in moved_queue_places()}
    assert set(told) == {alice.pk, carol.pk}
    assert f"prompt-{alices[1].pk}-progress" in told[alice.pk]
    assert f"prompt-{alices[0].pk}-progress" not in told[alice.pk]  # its place did not change
    assert "#4 in the queue" in told[alice.pk]
    assert moved_queue_places() == []  # told already, by this bridge or any other

    claim_next_job("http://gpu", on_demo_backend=False)  # alice's first goes to the GPU
    # It still counts ahead of the others while it waits in ComfyUI: no place moved.
    assert moved_queue_places() == []
    assert bobs.pk  # still queued, still told nothing new


@pytest.mark.parametrize(
    ("told", "place", "tell"),
    [
        (None, 150, True),  # never told
        (5, 4, True),  # near the front: every move
        (21, 20, True),
        (150, 140, False),  # far back: not every step...
        (150, 135, True),  # ...but each tenth of the way
        (40, 36, True),
        (40, 37, False),
    ],
)
def test_far_back_in_a_long_queue_only_real_progress_is_told(told, place, tell):
    from generator.jobs import worth_telling

    assert worth_telling(told, place) is tell


def test_a_newcomer_joins_the_round_being_served_not_the_back_of_anothers_backlog():
    alice, bob = UserFactory(), UserFactory()
    alices = [PromptFactory(owner=alice) for _ in range(6)]
    for _ in range(3):  # three of alice's jobs ran and ended
        claimed = claim_next_job("http://gpu", on_demo_backend=False).job.pk
        Prompt.objects.get(pk=claimed).transition_to(Prompt.Status.SUCCEEDED)
    on_gpu = claim_next_job("http://gpu", on_demo_backend=False).job.pk  # her fourth is on the GPU
    assert on_gpu == alices[3].pk

    bobs = [PromptFactory(owner=bob), PromptFactory(owner=bob)]

    # Bob's first goes next, his second after alice's next one: turns, not arrival.
    assert fair_order() == [bobs[0].pk, alices[4].pk, bobs[1].pk, alices[5].pk]


def test_a_job_its_backend_lost_goes_ahead_of_older_queued_jobs():
    from generator.jobs import requeue_or_fail

    waiting = [PromptFactory(), PromptFactory()]
    lost = PromptFactory()
    lost.transition_to(Prompt.Status.SUBMITTED, submit_attempts=1)  # as if a bridge took it

    requeue_or_fail(lost.pk, "ComfyUI lost it")

    assert fair_order() == [lost.pk, *(p.pk for p in waiting)]


def test_queue_places_counted_for_some_jobs_agree_with_the_whole_order():
    from generator.scheduling import site_queue

    users = UserFactory.create_batch(4)
    for n in range(30):
        PromptFactory(owner=users[n % 7 % 4])
    claim_next_job("http://gpu", on_demo_backend=False)
    queue = site_queue()
    order = fair_order()

    every_third = list(Prompt.objects.filter(pk__in=order[::3]))
    places = queue.places(every_third)
    one = queue.places(every_third[-1:])  # counted alone, another way

    assert places == {pk: place for place, pk in enumerate(order, 2) if pk in places}  # one waits in ComfyUI
    assert len(places) == len(every_third)
    assert one == {every_third[-1].pk: places[every_third[-1].pk]}


def test_places_already_told_are_remembered_however_many_jobs_wait():
    """LocMemCache keeps 300 entries: a memory there forgot most places of a long queue, and each
    move re-sent them. The rows remember."""
    from django.core.cache import cache

    from generator.jobs import moved_queue_places

    users = UserFactory.create_batch(5)
    for n in range(400):
        PromptFactory(owner=users[n % 5])
    told = sum(len(relay.events) for relay in moved_queue_places())
    assert told == 400
    cache.clear()

    assert moved_queue_places() == []


def test_a_round_of_telling_places_looks_only_as_far_back_as_asked():
    from generator.jobs import moved_queue_places, places_looked_at

    users = UserFactory.create_batch(3)
    for n in range(9):
        PromptFactory(owner=users[n % 3])

    told = [event["place"] for relay in moved_queue_places(looked_at=4) for event in relay.events]

    assert sorted(told) == [1, 2, 3, 4]
    assert [places_looked_at(n) for n in range(1, 9)] == [40, 80, 40, 160, 40, 80, 40, 320]


def test_owners_at_their_running_limit_are_found_in_one_query(settings, django_assert_num_queries):
    from collections import Counter

    from django.contrib.auth.models import Group

    from generator.models import Quota
    from generator.quotas import users_at_running_limit

    settings.DEFAULT_QUOTA = {**settings.DEFAULT_QUOTA, "max_running": 1}
    plain, patron, staff, unlimited, idle = UserFactory.create_batch(5)
    patrons = Group.objects.create(name="patrons")
    Quota.objects.create(group=patrons, max_running=3)
    patron.groups.add(patrons)
    free = Group.objects.create(name="free")
    Quota.objects.create(group=free, max_running=None)
    unlimited.groups.add(free, patrons)
    staff.is_staff = True
    staff.save()
    on_gpu = Counter({plain.pk: 1, patron.pk: 2, staff.pk: 9, unlimited.pk: 9, idle.pk: 0})

    with django_assert_num_queries(1):
        blocked = users_at_running_limit(on_gpu)

    assert blocked == {plain.pk}


def read_plan(queryset) -> str:
    """How the database means to run `queryset`. PostgreSQL is told to avoid whole-table scans,
    bitmaps of several indexes and sorts where it can, as it does at scale: a test's tables are
    too small for its statistics (with bitmaps allowed it once and-ed two other indexes)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            for setting in ("enable_seqscan", "enable_sort", "enable_bitmapscan"):
                cursor.execute(f"SET LOCAL {setting} = off")
    return queryset.explain()


def test_the_next_job_and_a_place_are_read_from_the_queue_index_not_sorted_from_every_row():
    from generator.scheduling import queued_in_order

    for _ in range(3):
        PromptFactory()
    last = Prompt.objects.latest("pk")

    next_jobs = read_plan(queued_in_order().exclude(owner_id__in=[0])[:20])
    place = read_plan(Prompt.objects.filter(status=Prompt.Status.QUEUED, turn__lte=last.turn).order_by())

    for plan in (next_jobs, place):
        assert "prompt_queue_order" in plan, plan
        assert "TEMP B-TREE" not in plan, plan  # SQLite sorting
        assert "Sort" not in plan, plan  # PostgreSQL sorting
