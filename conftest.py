"""Project-wide test fixtures: users, clients, and access to optional services."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

import pytest

from generator.tests.factories import PASSWORD, UserFactory

REQUIRE_SERVICES = os.environ.get("COMFYSITE_REQUIRE_SERVICES", "") not in {"", "0", "false"}


def service_reachable(url: str, timeout: float = 0.5) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 0), timeout=timeout):
            return True
    except OSError:
        return False


def require_service(name: str, url: str) -> None:
    """Skip (on a laptop) or fail (in CI, where the service must be there) when `url` is down."""
    if service_reachable(url):
        return
    message = f"{name} is not reachable at {url}"
    if REQUIRE_SERVICES:
        pytest.fail(f"{message}, and COMFYSITE_REQUIRE_SERVICES is set (CI needs it).")
    pytest.skip(f"{message}; start it to run this test.")


def pytest_configure(config: pytest.Config) -> None:
    from django.conf import settings

    # A connection kept open on a worker thread (the web threads, a bridge's, asgiref's) would
    # outlive the test that opened it and hold the test database open when it is dropped.
    settings.DATABASES["default"]["CONN_MAX_AGE"] = 0


@pytest.fixture(autouse=True)
def _test_settings(settings, tmp_path):
    """Every test writes its media under its own folder; passwords hash fast."""
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _fresh_cache():
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def password() -> str:
    return PASSWORD


@pytest.fixture
def user(db):
    return UserFactory()


@pytest.fixture
def other_user(db):
    return UserFactory()


@pytest.fixture
def staff_user(db):
    return UserFactory(is_staff=True, is_superuser=True)


@pytest.fixture
def user_client(client, user):
    client.force_login(user)
    return client
