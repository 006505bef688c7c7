"""Accounts: sign-up, log in and out, password change and reset, throttled log-in."""

import re

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.urls import reverse

pytestmark = pytest.mark.django_db

User = get_user_model()


def sign_up(client, **overrides):
    data = {
        "username": "ada",
        "email": "ada@example.com",
        "password1": "analytical engine 1843",
        "password2": "analytical engine 1843",
        **overrides,
    }
    return client.post(reverse("signup"), data)


def test_sign_up_creates_the_user_and_logs_them_in(client):
    response = sign_up(client)

    assert response.status_code == 302
    assert response.url == reverse("home")
    user = User.objects.get(username="ada")
    assert user.email == "ada@example.com"
    home = client.get(reverse("home"))
    assert home.status_code == 200
    assert home.context["user"] == user
    assert "Signed in as" in home.text
    assert "ada" in home.text


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"username": ""}, "username", "This field is required."),
        ({"email": "not-an-email"}, "email", "Enter a valid email address."),
        ({"password2": "something else entirely"}, "password2", "The two password fields didn"),
        ({"password1": "123", "password2": "123"}, "password2", "This password is too short."),
    ],
)
def test_bad_sign_up_input_is_refused_with_field_errors(client, overrides, field, message):
    response = sign_up(client, **overrides)

    assert response.status_code == 200
    errors = response.context["form"].errors
    assert field in errors
    assert any(message in error for error in errors[field])
    assert message.split("'")[0] in response.text
    assert not User.objects.filter(username=overrides.get("username", "ada") or "ada").exists()


def test_sign_up_refuses_a_taken_username_and_email(client, user):
    response = sign_up(client, username=user.username, email=user.email.upper())

    assert response.status_code == 200
    assert set(response.context["form"].errors) == {"username", "email"}
    assert User.objects.count() == 1


def test_log_in_and_log_out(client, user, password):
    response = client.post(reverse("login"), {"username": user.username, "password": password})
    assert response.status_code == 302
    assert client.get(reverse("home")).status_code == 200

    response = client.post(reverse("logout"))
    assert response.status_code == 302
    assert client.get(reverse("home")).status_code == 302


def test_log_in_with_a_wrong_password_shows_an_error(client, user):
    response = client.post(reverse("login"), {"username": user.username, "password": "wrong"})

    assert response.status_code == 200
    assert "Please enter a correct username and password" in response.text


def test_repeated_failed_log_ins_are_throttled_even_with_the_right_password(client, user, password, settings):
    settings.LOGIN_FAILURE_LIMIT = 3
    for _ in range(3):
        client.post(reverse("login"), {"username": user.username, "password": "wrong"})

    response = client.post(reverse("login"), {"username": user.username, "password": password})

    assert response.status_code == 200
    assert "Too many failed log-in attempts" in response.text
    assert client.get(reverse("home")).status_code == 302


def test_password_change(client, user, password):
    client.force_login(user)
    response = client.post(
        reverse("password_change"),
        {
            "old_password": password,
            "new_password1": "a brand new secret 9",
            "new_password2": "a brand new secret 9",
        },
    )

    assert response.status_code == 302
    assert response.url == reverse("password_change_done")
    user.refresh_from_db()
    assert user.check_password("a brand new secret 9")


def test_password_reset_email_is_sent_through_the_console_backend(client, user, settings, capsys):
    settings.EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
    response = client.post(reverse("password_reset"), {"email": user.email})

    assert response.status_code == 302
    printed = capsys.readouterr().out
    assert "Reset your ComfySite password" in printed
    assert f"To: {user.email}" in printed
    link = re.search(r"http://testserver(/accounts/reset/\S+/)", printed)
    assert link, printed

    # The link works: it leads to the form where a new password is chosen.
    confirm = client.get(link.group(1), follow=True)
    assert confirm.status_code == 200
    assert "Choose a new password" in confirm.text


def test_password_reset_for_an_unknown_address_sends_nothing_and_says_the_same(client, db):
    response = client.post(reverse("password_reset"), {"email": "nobody@example.com"}, follow=True)

    assert "Check your email" in response.text
    assert mail.outbox == []
