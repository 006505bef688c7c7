"""Anonymous visitors may see the account pages and nothing else."""

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, reverse

pytestmark = pytest.mark.django_db

PUBLIC_URL_NAMES = {
    "login",
    "signup",
    "password_reset",
    "password_reset_done",
    "password_reset_confirm",
    "password_reset_complete",
}


def named_routes(resolver=None, namespace=""):
    """Every named URL of the project, with placeholder arguments."""
    resolver = resolver or get_resolver()
    for entry in resolver.url_patterns:
        if isinstance(entry, URLResolver):
            inner = f"{namespace}{entry.namespace}:" if entry.namespace else namespace
            yield from named_routes(entry, inner)
        elif isinstance(entry, URLPattern) and entry.name:
            yield f"{namespace}{entry.name}", entry


def placeholder_kwargs(pattern: URLPattern) -> dict:
    converters = getattr(pattern.pattern, "converters", {})
    return {name: "1" if type(conv).__name__ == "IntConverter" else "x" for name, conv in converters.items()}


def protected_urls():
    for name, pattern in named_routes():
        if name.startswith("admin:") or name in PUBLIC_URL_NAMES:
            continue
        yield reverse(name, kwargs=placeholder_kwargs(pattern))


@pytest.mark.parametrize("url", sorted(protected_urls()))
def test_every_non_auth_page_sends_anonymous_visitors_to_log_in(client, url):
    response = client.get(url)

    assert response.status_code == 302
    assert response.url.startswith(reverse("login"))


@pytest.mark.parametrize("name", ["login", "signup", "password_reset"])
def test_auth_pages_are_open_to_anonymous_visitors(client, name):
    assert client.get(reverse(name)).status_code == 200


def test_admin_sends_anonymous_visitors_to_its_log_in(client):
    response = client.get("/admin/")
    assert response.status_code == 302
    assert "/admin/login/" in response.url
