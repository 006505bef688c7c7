"""The defaults are a self-hosted product's: `make run` works with one command on a fresh machine,
and nobody is shown Django's debug page (the code, the settings, the request) unless a developer
asks for it with DEBUG=true."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest
from django.test import RequestFactory
from django.views.defaults import server_error

from .browser import BASE_DIR, running_site

CONFIG_VARIABLES = ("DEBUG", "ALLOWED_HOSTS", "SECRET_KEY", "SECURE_SSL_REDIRECT")
SHOW_SETTINGS = """
import django, json
django.setup()
from django.conf import settings as s
print(json.dumps({"debug": s.DEBUG, "hosts": s.ALLOWED_HOSTS, "key": len(s.SECRET_KEY),
                  "https": s.SECURE_SSL_REDIRECT, "static": s.STORAGES["staticfiles"]["BACKEND"]}))
"""


def settings_with(tmp_path, **env: str) -> subprocess.CompletedProcess:
    """comfysite.settings as a process started with `env` (and none of the variables above) sees it."""
    clean = {name: value for name, value in os.environ.items() if name not in CONFIG_VARIABLES}
    return subprocess.run(
        [sys.executable, "-c", SHOW_SETTINGS],
        env={
            **clean,
            "DJANGO_SETTINGS_MODULE": "comfysite.settings",
            "COMFYSITE_VAR_DIR": str(tmp_path),
            **env,
        },
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        check=False,
    )


def test_by_default_debug_is_off_and_the_site_serves_localhost_over_http(tmp_path):
    shown = json.loads(settings_with(tmp_path).stdout)

    assert shown["debug"] is False
    assert shown["hosts"] == ["127.0.0.1", "localhost", "[::1]"]
    assert shown["https"] is False  # no certificate for localhost: no redirect to https
    assert shown["key"] >= 50
    assert (tmp_path / "secret_key").exists()
    assert shown["static"].endswith("StaticFilesStorage")  # no collectstatic needed


def test_developers_turn_debug_on(tmp_path):
    shown = json.loads(settings_with(tmp_path, DEBUG="true").stdout)

    assert shown["debug"] is True


def test_a_site_serving_a_host_name_needs_its_secret_key_and_expects_https(tmp_path):
    refused = settings_with(tmp_path, ALLOWED_HOSTS="comfy.example.com")
    shown = json.loads(settings_with(tmp_path, ALLOWED_HOSTS="comfy.example.com", SECRET_KEY="k" * 50).stdout)

    assert refused.returncode != 0
    assert "SECRET_KEY must be set" in refused.stderr
    assert shown["https"] is True
    assert shown["static"].endswith("CompressedManifestStaticFilesStorage")


def test_a_server_error_is_a_page_in_words_without_the_code():
    response = server_error(RequestFactory().get("/"))

    assert response.status_code == 500
    assert "Something went wrong on our side" in response.content.decode()


@pytest.mark.django_db
def test_a_missing_page_is_the_sites_own(client):
    response = client.get("/no-such-page/")

    assert response.status_code == 404
    assert "There is nothing at this address" in response.content.decode()


def test_the_site_as_make_run_serves_it_has_its_pages_and_static_files_and_no_tracebacks(tmp_path):
    with running_site(tmp_path, extra_env={"DEBUG": ""}) as url:
        login = httpx.get(f"{url}/accounts/login/")
        css = httpx.get(f"{url}/static/css/site.css")
        missing = httpx.get(f"{url}/no-such-page/")
        too_long = httpx.get(f"{url}/history/?q={'%C3%A9' * 2000}")

    assert login.status_code == 200
    assert "Log in" in login.text
    assert css.status_code == 200
    assert css.headers["content-type"].startswith("text/css")
    assert missing.status_code == 404
    assert "DEBUG = True" not in missing.text
    assert "There is nothing at this address" in missing.text
    assert too_long.status_code == 414
    assert "Traceback" not in (tmp_path / "server.log").read_text()
