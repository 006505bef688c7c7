"""Websocket routes, and the check that a websocket comes from one of the site's own pages.

Browsers send cookies with a websocket handshake to any site, whatever page opened it, and
websockets are not subject to CSRF tokens: the Origin header is the only defence. Channels'
AllowedHostsOriginValidator compares only the origin's host name with ALLOWED_HOSTS, so a page
on another port of the same host (another app on :8080) could open a user's job feed. Here the
origin must match as Django's CSRF check matches a form post's: scheme, host and port equal to
those the request was made to (its allowed Host header), or one of CSRF_TRUSTED_ORIGINS.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host
from django.urls import path, re_path

from .consumers import JobsConsumer, UnknownPathConsumer

websocket_urlpatterns = [
    path("ws/jobs/", JobsConsumer.as_asgi()),
    re_path(r"", UnknownPathConsumer.as_asgi()),  # last: every other path
]

DEFAULT_PORTS = {"http": 80, "https": 443}
Origin = tuple[str, str, int]  # scheme, host, port


def parse_origin(text: str) -> Origin | None:
    """("https", "comfy.example.com", 443) for "https://comfy.example.com"; None for anything
    that is not an http(s) origin ("null", garbage, a port out of range)."""
    try:
        parts = urlsplit(text.strip().lower())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return parts.scheme, parts.hostname, port or DEFAULT_PORTS[parts.scheme]


def _header(scope: dict[str, Any], name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return ""


def _scheme(scope: dict[str, Any]) -> str:
    """http or https, as Django's HttpRequest.scheme decides it (the proxy's header first)."""
    if settings.SECURE_PROXY_SSL_HEADER:
        meta_name, secure_value = settings.SECURE_PROXY_SSL_HEADER
        value = _header(scope, meta_name.removeprefix("HTTP_").replace("_", "-").lower().encode())
        if value:
            return "https" if value.split(",", 1)[0].strip() == secure_value else "http"
    return "https" if scope.get("scheme") in {"wss", "https"} else "http"


def _allowed_hosts() -> list[str]:
    # As Django's HttpRequest.get_host: in debug with none configured, the local names.
    if settings.DEBUG and not settings.ALLOWED_HOSTS:
        return [".localhost", "127.0.0.1", "[::1]"]
    return list(settings.ALLOWED_HOSTS)


def site_origin(scope: dict[str, Any]) -> Origin | None:
    """The origin the websocket was opened to, if its Host header is one the site serves."""
    host = _header(scope, b"host")
    domain, _ = split_domain_port(host)
    if not domain or not validate_host(domain, _allowed_hosts()):
        return None
    return parse_origin(f"{_scheme(scope)}://{host}")


def is_trusted(origin: Origin) -> bool:
    """One of CSRF_TRUSTED_ORIGINS; "https://*.example.com" covers example.com and its
    subdomains, as it does for Django's CSRF check."""
    scheme, host, port = origin
    for entry in settings.CSRF_TRUSTED_ORIGINS:
        entry_scheme, _, netloc = entry.partition("://")
        wildcard = netloc.startswith("*.")
        trusted = parse_origin(f"{entry_scheme}://{netloc.removeprefix('*.')}")
        if trusted is None:
            continue
        if origin == trusted:
            return True
        trusted_scheme, trusted_host, trusted_port = trusted
        same_scheme_and_port = (scheme, port) == (trusted_scheme, trusted_port)
        within = host == trusted_host or host.endswith("." + trusted_host)
        if wildcard and same_scheme_and_port and within:
            return True
    return False


def origin_allowed(scope: dict[str, Any]) -> bool:
    origin = parse_origin(_header(scope, b"origin"))
    site = site_origin(scope)
    if origin is None or site is None:
        return False
    return origin == site or is_trusted(origin)


class SameOriginOnly:
    """ASGI middleware: a websocket whose Origin is not the site's own is refused at the
    handshake (HTTP 403), before its session is even looked up."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket" and not origin_allowed(scope):
            await WebsocketDenier()(scope, receive, send)
            return
        await self.application(scope, receive, send)
