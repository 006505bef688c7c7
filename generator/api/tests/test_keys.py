"""API keys: made and shown once, kept hashed, revocable; only the API opens with one."""

from __future__ import annotations

import pytest
from django.urls import reverse

from generator.api.keys import create_key
from generator.models import ApiKey

from .conftest import key_client

pytestmark = pytest.mark.django_db


def test_a_key_is_shown_once_and_kept_only_as_a_hash(user_client, user):
    response = user_client.post(reverse("api-keys"), {"name": "notebook"})

    key = response.context["new_key"]
    assert key.startswith("csk_")
    assert key in response.text
    row = ApiKey.objects.get(owner=user)
    assert row.name == "notebook"
    assert key not in str(list(ApiKey.objects.values()))  # not stored, not even in part beyond the prefix
    again = user_client.get(reverse("api-keys"))
    assert key not in again.text
    assert f"csk_{row.prefix}_…" in again.text
    assert key_client(key).get("/api/jobs").status_code == 200


def test_the_key_page_is_in_the_navigation(user_client):
    assert f'href="{reverse("api-keys")}"' in user_client.get(reverse("home")).text


def test_a_revoked_key_opens_nothing(user_client, user):
    row, key = create_key(user, "bot")

    user_client.post(reverse("api-key-revoke", args=[row.pk]))

    response = key_client(key).get("/api/jobs")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert "revoked" in user_client.get(reverse("api-keys")).text


def test_nobody_revokes_another_users_key(user_client, other_user):
    row, key = create_key(other_user, "theirs")

    assert user_client.post(reverse("api-key-revoke", args=[row.pk])).status_code == 404
    assert key_client(key).get("/api/jobs").status_code == 200


@pytest.mark.parametrize(
    "header",
    ["", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer csk_", "Bearer csk_000000000000_nope", "Token x"],
)
def test_a_missing_or_malformed_key_is_a_json_401_never_a_login_redirect(client, header):
    response = client.get("/api/jobs", HTTP_AUTHORIZATION=header) if header else client.get("/api/jobs")

    assert response.status_code == 401
    assert response["Content-Type"] == "application/json"
    assert response["WWW-Authenticate"] == "Bearer"
    assert response.json()["error"]["type"] == "authentication_error"


def test_a_key_with_the_right_prefix_but_wrong_secret_is_refused(user):
    _row, key = create_key(user, "bot")

    assert key_client(key[:-2] + "xx").get("/api/jobs").status_code == 401


@pytest.mark.parametrize("path", ["/api/nothing", "/api/jobs/1/nothing", "/v1/models", "/v1/"])
def test_an_unknown_api_address_is_a_json_404(api, path):
    response = api.get(path)

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_a_deactivated_users_keys_stop_working(user, api):
    user.is_active = False
    user.save()

    assert api.get("/api/jobs").status_code == 401


def test_a_browser_session_does_not_open_the_api(user_client):
    assert user_client.get("/api/jobs").status_code == 401


def test_a_key_does_not_open_the_pages_or_the_admin(staff_api):
    assert staff_api.get(reverse("home")).status_code == 302  # to the log-in page
    assert staff_api.get(reverse("history")).status_code == 302
    admin = staff_api.get("/admin/")
    assert admin.status_code == 302
    assert "/admin/login/" in admin["Location"]


def test_last_use_is_recorded(user, api):
    assert ApiKey.objects.get(owner=user).last_used_at is None

    api.get("/api/jobs")

    assert ApiKey.objects.get(owner=user).last_used_at is not None


def test_staff_see_and_revoke_any_users_keys_in_the_admin(admin_client, user):
    row, key = create_key(user, "someone's bot")

    listing = admin_client.get(reverse("admin:generator_apikey_changelist"))
    assert "someone&#x27;s bot" in listing.text or "someone's bot" in listing.text
    admin_client.post(
        reverse("admin:generator_apikey_changelist"), {"action": "revoke", "_selected_action": [row.pk]}
    )

    assert key_client(key).get("/api/jobs").status_code == 401
