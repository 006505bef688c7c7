"""The websocket under hostile use: unknown paths, odd headers and messages never raise (a server
would log the traceback), one user cannot hold a thousand sockets, and the Origin must be the
site's own by scheme, host and port.

Everything goes through the application in comfysite/asgi.py, as a server would call it.
"""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.test import Client
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from comfysite.asgi import application
from generator.consumers import MAX_SOCKETS_PER_USER, TOO_MANY_SOCKETS
from generator.live import user_group
from generator.routing import origin_allowed

pytestmark = [pytest.mark.django_db(transaction=True)]

SITE = [(b"host", b"127.0.0.1:8000"), (b"origin", b"http://127.0.0.1:8000")]


@pytest.fixture(autouse=True)
def _site_host(settings):
    settings.ALLOWED_HOSTS = ["127.0.0.1"]
    settings.CSRF_TRUSTED_ORIGINS = []


HYPOTHESIS = hypothesis_settings(
    max_examples=150,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class Counter:
    inputs = 0


@pytest.fixture(scope="module", autouse=True)
def _report_count(request):
    yield
    if Counter.inputs:
        capture = request.config.pluginmanager.getplugin("capturemanager")
        with capture.global_and_fixture_disabled():
            print(f"\ntest_hostile_websockets: {Counter.inputs} generated connections and messages")


def session_cookie(user) -> tuple[bytes, bytes]:
    client = Client()
    client.force_login(user)
    name = django_settings.SESSION_COOKIE_NAME
    return b"cookie", f"{name}={client.cookies[name].value}".encode()


@pytest.fixture
def logged_in(user) -> list[tuple[bytes, bytes]]:
    return [*SITE, session_cookie(user)]


async def opened(
    path: str, headers: list[tuple[bytes, bytes]]
) -> tuple[WebsocketCommunicator, bool, int | None]:
    communicator = WebsocketCommunicator(application, path, headers=headers)
    connected, detail = await communicator.connect()
    return communicator, connected, None if connected else detail


# -- unknown paths -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/ws/", "/ws/jobs", "/ws/jobs/1/", "/ws/jobs/%00", "/admin/"])
async def test_a_websocket_to_an_unknown_path_is_refused_without_a_traceback(logged_in, error_log, path):
    communicator, connected, _ = await opened(path, logged_in)

    assert not connected
    assert not error_log.records
    await communicator.disconnect()


header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"))


@HYPOTHESIS
@given(
    path=st.one_of(st.just("/ws/jobs/"), st.text(max_size=60).map(lambda p: "/" + p)),
    origin=st.one_of(st.just("http://127.0.0.1:8000"), st.just("null"), header_text),
    host=st.one_of(st.just("127.0.0.1:8000"), header_text),
    cookie=st.one_of(st.none(), header_text),
    logged_in_user=st.booleans(),
)
def test_no_path_or_header_makes_the_websocket_raise(
    user, error_log, path, origin, host, cookie, logged_in_user
):
    headers = [(b"host", host.encode("latin-1")), (b"origin", origin.encode("latin-1"))]
    if logged_in_user:
        headers.append(session_cookie(user))
    elif cookie is not None:
        headers.append((b"cookie", cookie.encode("latin-1")))
    Counter.inputs += 1

    async def connect_and_leave() -> None:
        communicator, _, _ = await opened(path, headers)
        await communicator.disconnect()

    error_log.records.clear()
    async_to_sync(connect_and_leave)()
    assert not error_log.records, [r.getMessage() for r in error_log.records]


@HYPOTHESIS
@given(
    messages=st.lists(
        st.one_of(
            st.text(min_size=1).map(lambda text: {"text_data": text}),
            st.binary(min_size=1).map(lambda data: {"bytes_data": data}),
            st.sampled_from(["\x00", "{}", '{"type": "job.html", "html": "<script>"}', "x" * 100_000]).map(
                lambda text: {"text_data": text}
            ),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_whatever_a_tab_sends_is_ignored_and_the_feed_goes_on(user, error_log, messages):
    headers = [*SITE, session_cookie(user)]
    Counter.inputs += len(messages)

    async def send_and_listen() -> None:
        communicator, connected, _ = await opened("/ws/jobs/", headers)
        assert connected
        assert (await communicator.receive_from()).startswith('<div id="jobs"')  # the tab's list
        for message in messages:
            await communicator.send_to(**message)
        assert await communicator.receive_nothing(timeout=0.01)
        await get_channel_layer().group_send(user_group(user.pk), {"type": "job.html", "html": "<p>42%</p>"})
        assert await communicator.receive_from() == "<p>42%</p>"
        await communicator.disconnect()

    error_log.records.clear()
    async_to_sync(send_and_listen)()
    assert not error_log.records, [r.getMessage() for r in error_log.records]


# -- sockets per user --------------------------------------------------------------------------


async def test_one_user_may_hold_only_so_many_sockets_and_closing_one_frees_its_place(logged_in, other_user):
    tabs = []
    for _ in range(MAX_SOCKETS_PER_USER):
        communicator, connected, _ = await opened("/ws/jobs/", logged_in)
        assert connected
        tabs.append(communicator)

    one_too_many, connected, _ = await opened("/ws/jobs/", logged_in)
    closed = await one_too_many.receive_output()
    others = [*SITE, await sync_to_async(session_cookie)(other_user)]
    someone_else, someone_else_connected, _ = await opened("/ws/jobs/", others)

    assert connected  # accepted only to be told why it is closed
    assert closed == {"type": "websocket.close", "code": TOO_MANY_SOCKETS}
    assert someone_else_connected  # the cap is per user
    await tabs.pop().disconnect()
    again, connected_again, _ = await opened("/ws/jobs/", logged_in)
    assert connected_again
    for communicator in [*tabs, again, someone_else]:
        await communicator.disconnect()


async def test_a_refused_socket_does_not_use_up_a_place(logged_in):
    tabs = [(await opened("/ws/jobs/", logged_in))[0] for _ in range(MAX_SOCKETS_PER_USER)]
    for _ in range(3):
        refused, _, _ = await opened("/ws/jobs/", logged_in)
        await refused.receive_output()
        await refused.disconnect()

    await tabs.pop().disconnect()
    communicator, connected, _ = await opened("/ws/jobs/", logged_in)

    assert connected
    for tab in [*tabs, communicator]:
        await tab.disconnect()


# -- origin ------------------------------------------------------------------------------------


def scope(origin: str | None, host: str = "comfy.example.com", **extra) -> dict:
    headers = [(b"host", host.encode())]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    return {"type": "websocket", "headers": headers, **extra}


@pytest.mark.parametrize(
    ("origin", "host", "allowed"),
    [
        ("http://comfy.example.com", "comfy.example.com", True),
        ("http://comfy.example.com:80", "comfy.example.com", True),
        ("http://comfy.example.com:8000", "comfy.example.com:8000", True),
        ("HTTP://Comfy.Example.com:8000", "comfy.example.com:8000", True),
        # The same host name on another port is another site (another app on that machine).
        ("http://comfy.example.com:8080", "comfy.example.com:8000", False),
        ("http://comfy.example.com:8080", "comfy.example.com", False),
        ("http://comfy.example.com", "comfy.example.com:8000", False),
        ("https://comfy.example.com", "comfy.example.com", False),  # scheme differs
        ("http://evil.example", "comfy.example.com", False),
        ("http://comfy.example.com.evil.example", "comfy.example.com", False),
        ("http://comfy.example.com", "evil.example", False),  # a Host the site does not serve
        ("null", "comfy.example.com", False),
        ("", "comfy.example.com", False),
        (None, "comfy.example.com", False),
        ("http://comfy.example.com:99999", "comfy.example.com", False),
    ],
)
def test_the_origin_must_be_the_sites_own_by_scheme_host_and_port(settings, origin, host, allowed):
    settings.ALLOWED_HOSTS = ["comfy.example.com"]
    settings.CSRF_TRUSTED_ORIGINS = []

    assert origin_allowed(scope(origin, host)) is allowed


def test_behind_a_tls_proxy_the_origin_is_https(settings):
    settings.ALLOWED_HOSTS = ["comfy.example.com"]
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    proxied = [(b"x-forwarded-proto", b"https")]

    def behind_proxy(origin: str) -> dict:
        plain = scope(origin)
        return {**plain, "headers": plain["headers"] + proxied}

    assert origin_allowed(behind_proxy("https://comfy.example.com"))
    assert not origin_allowed(behind_proxy("http://comfy.example.com"))
    assert origin_allowed(scope("https://comfy.example.com", scheme="wss"))


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://comfy.example.com", True),
        ("https://comfy.example.com:443", True),
        ("https://comfy.example.com:8443", False),
        ("http://comfy.example.com", False),
        ("https://sub.lab.example", True),
        ("https://lab.example", True),
        ("https://sub.lab.example:444", False),
        ("https://badlab.example", False),
    ],
)
def test_csrf_trusted_origins_are_trusted_port_and_all(settings, origin, allowed):
    """Behind a proxy the Host nginx passes need not carry the public origin's scheme or port."""
    settings.ALLOWED_HOSTS = ["internal"]
    settings.CSRF_TRUSTED_ORIGINS = ["https://comfy.example.com", "https://*.lab.example"]

    assert origin_allowed(scope(origin, host="internal:8000")) is allowed


async def test_a_page_on_another_port_of_the_same_host_cannot_open_the_feed(logged_in):
    """Channels' AllowedHostsOriginValidator let this through: it compares host names only."""
    other_port = [(b"host", b"127.0.0.1:8000"), (b"origin", b"http://127.0.0.1:8080"), logged_in[-1]]

    communicator, connected, _ = await opened("/ws/jobs/", other_port)

    assert not connected
    await communicator.disconnect()


async def test_the_sites_own_page_opens_the_feed(logged_in):
    communicator, connected, _ = await opened("/ws/jobs/", logged_in)

    assert connected
    await communicator.disconnect()
