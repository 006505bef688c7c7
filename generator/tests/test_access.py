"""Anonymous visitors may see the account pages and nothing else. (The API answers keys, not
sessions: generator/api/tests/test_authorization.py.)"""

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
    "backend-banner",  # what the log-in page polls; says nothing of the backends but up or down
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
    numeric = ("IntConverter", "IdConverter")
    return {name: "1" if type(conv).__name__ in numeric else "x" for name, conv in converters.items()}


# Not pages: the API (its key or a 401; its schema and docs are public) and signed image links
# (the link is the permission).
NOT_PAGES = ("admin:", "api:", "image-link")


def protected_urls():
    for name, pattern in named_routes():
        if name.startswith(NOT_PAGES) or name in PUBLIC_URL_NAMES:
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


def test_the_api_answers_anonymous_visitors_with_401_and_only_its_docs_are_open(client):
    # api:api-root is "/", the home page's address: the home page answers there.
    api_routes = {name: p for name, p in named_routes() if name.startswith("api:") and name != "api:api-root"}
    open_routes = {"api:openapi-json", "api:openapi-view"}

    for name, pattern in api_routes.items():
        url = reverse(name, kwargs=placeholder_kwargs(pattern))
        if name in open_routes:
            assert client.get(url).status_code == 200, name
        else:
            assert client.get(url).status_code in (401, 405), name


def test_an_image_link_without_a_valid_signature_is_a_404(client):
    assert client.get(reverse("image-link", args=["1:abc:def"])).status_code == 404
