"""The fault soak of bench/soak.py, small: 24 jobs of 3 users on 2 bridge processes and 3 emulated
ComfyUI servers while every kind of fault strikes once (backends killed and restarted, their
network cut, websockets dropped or deaf, /view and POST /prompt failing or slow, a node failing,
a bridge SIGKILLed, the web process and Redis restarted). No job may be lost, imported twice,
left stuck, failed without a reason a person can read, or run again by ComfyUI where no crash
forced it; no user may see a 5xx.

Needs the PostgreSQL database the suite runs on (the processes must share it) and redis-server
(the soak restarts a Redis of its own). About a minute and a half.
"""

from __future__ import annotations

import shutil

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection, connections

from bench.soak import FAULTS, SoakOptions, fault_schedule, readable, run_soak
from conftest import REQUIRE_SERVICES

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db(transaction=True)]

SMALL_SOAK = SoakOptions(seed=14, jobs=24, users=3, rounds=1, post_seconds=35.0, drain_seconds=90.0)


def database_url() -> str:
    """The test database, for the soak's processes."""
    db = connection.settings_dict
    return f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.fixture
async def soak_services():
    if connection.vendor != "postgresql":
        pytest.skip(
            "The soak's processes must share the test database, which needs PostgreSQL: set "
            "DATABASE_URL (CI runs this in its PostgreSQL pass)."
        )
    if shutil.which("redis-server") is None:
        message = "redis-server is not installed: the soak restarts a Redis server of its own"
        if REQUIRE_SERVICES:
            pytest.fail(f"{message}, and COMFYSITE_REQUIRE_SERVICES is set (CI needs it).")
        pytest.skip(message)
    yield
    await sync_to_async(connections.close_all)()  # let the test database be dropped


def test_the_schedule_is_the_seeds_and_has_every_kind_of_fault():
    assert fault_schedule(SMALL_SOAK) == fault_schedule(SoakOptions(**vars(SMALL_SOAK)))
    assert sorted(fault.kind for fault in fault_schedule(SMALL_SOAK)) == sorted(FAULTS)
    other = fault_schedule(SoakOptions(**{**vars(SMALL_SOAK), "seed": 15}))
    assert other != fault_schedule(SMALL_SOAK)


@pytest.mark.parametrize(
    ("reason", "is_readable"),
    [
        ("KSampler (node 3) failed: Out of memory", True),
        ("The ComfyUI backend restarted and lost this job twice; please try again.", True),
        ("", False),
        ("ClientConnectorError(ConnectionKey(host='127.0.0.1'))", False),
        ("Traceback (most recent call last):\n  File ...", False),
        ("500", False),
    ],
)
def test_a_reason_is_readable_when_it_is_words_not_a_traceback_or_a_code(reason, is_readable):
    assert readable(reason) is is_readable


async def test_no_job_is_lost_duplicated_or_stuck_whatever_breaks(soak_services, tmp_path):
    report = await run_soak(SMALL_SOAK, tmp_path, database_url(), settings.MEDIA_ROOT)

    lines: list[str] = []
    report.print(lines.append)
    table = "\n".join(lines)
    assert not [i for i in report.injected if i.note.startswith("not carried out")], table
    assert {i.fault.kind for i in report.injected} == set(FAULTS), table
    assert report.total["jobs"] == SMALL_SOAK.jobs, table
    assert report.missed == [], table
    failed = [fate for fate in report.fates if fate.status in ("failed", "cancelled")]
    assert all(readable(fate.error) for fate in failed), table
    assert report.total["succeeded"] + report.total["failed, reason"] == SMALL_SOAK.jobs, table
