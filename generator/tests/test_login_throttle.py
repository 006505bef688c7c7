"""The log-in throttle: tight per username, far looser per address, so that one person failing
behind a shared address (an office proxy, a carrier's NAT) does not lock everyone there out."""

import pytest
from django.urls import reverse

from .factories import UserFactory

pytestmark = pytest.mark.django_db


def log_in(client, username, password, address="203.0.113.7"):
    return client.post(reverse("login"), {"username": username, "password": password}, REMOTE_ADDR=address)


def test_failures_for_one_user_do_not_lock_out_others_behind_the_same_address(client, password, settings):
    settings.LOGIN_FAILURE_LIMIT = 5
    settings.LOGIN_FAILURE_LIMIT_PER_ADDRESS = 50
    careless, colleague = UserFactory(), UserFactory()
    for _ in range(5):
        log_in(client, careless.username, "wrong")

    locked = log_in(client, careless.username, password)
    colleague_logs_in = log_in(client, colleague.username, password)

    assert "Too many failed log-in attempts" in locked.text
    assert colleague_logs_in.status_code == 302


def test_one_address_trying_many_accounts_is_stopped_at_the_per_address_limit(client, password, settings):
    settings.LOGIN_FAILURE_LIMIT = 5
    settings.LOGIN_FAILURE_LIMIT_PER_ADDRESS = 12
    target = UserFactory()
    for n in range(12):
        log_in(client, f"guess{n}", "wrong")

    from_there = log_in(client, target.username, password)
    from_elsewhere = log_in(client, target.username, password, address="198.51.100.1")

    assert "Too many failed log-in attempts" in from_there.text
    assert from_elsewhere.status_code == 302


def test_the_per_address_limit_defaults_far_above_the_per_username_limit():
    from django.conf import settings

    assert settings.LOGIN_FAILURE_LIMIT_PER_ADDRESS >= 10 * settings.LOGIN_FAILURE_LIMIT
