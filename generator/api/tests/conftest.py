"""Fixtures for the API: keys, and clients that present them."""

from __future__ import annotations

import pytest
from django.test import Client

from generator.api.keys import create_key


def key_client(key: str) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {key}")


@pytest.fixture
def api_key(user) -> str:
    return create_key(user, "tests")[1]


@pytest.fixture
def api(api_key) -> Client:
    """A client with the user's key (and no session)."""
    return key_client(api_key)


@pytest.fixture
def other_api(other_user) -> Client:
    return key_client(create_key(other_user, "other")[1])


@pytest.fixture
def staff_api(staff_user) -> Client:
    return key_client(create_key(staff_user, "staff")[1])
