"""Helpers for browser tests: the real site in a subprocess, driven by headless Chromium."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from conftest import REQUIRE_SERVICES

BASE_DIR = Path(__file__).resolve().parents[2]
ARTIFACTS = BASE_DIR / "test-artifacts"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def require_chromium() -> None:
    if Path(CHROMIUM).exists() or shutil.which("chromium"):
        return
    message = f"Chromium not found at {CHROMIUM} (apt-get install chromium)"
    if REQUIRE_SERVICES:
        pytest.fail(message)
    pytest.skip(message)


@contextmanager
def running_site(tmp_path: Path, extra_env: dict[str, str] | None = None, seed: str = "") -> Iterator[str]:
    """`manage.py serve` on a free port with its own database and media; yields its URL.

    `seed` is Python run in the site's environment (`manage.py shell -c`) before it starts.
    """
    env = {
        **os.environ,
        "COMFYSITE_VAR_DIR": str(tmp_path / "var"),
        "DEBUG": "true",
        **(extra_env or {}),
    }
    env.pop("DATABASE_URL", None)
    manage = [sys.executable, str(BASE_DIR / "manage.py")]
    subprocess.run([*manage, "migrate", "--noinput", "-v0"], env=env, check=True, cwd=BASE_DIR)
    if seed:
        subprocess.run([*manage, "shell", "-c", seed], env=env, check=True, cwd=BASE_DIR)
    log = (tmp_path / "server.log").open("w")
    # The port is free when chosen, but the site's own demo ComfyUI binds a port the system
    # picks as it starts, and that can be this one (seen: the login page answered 404 by the
    # emulator, then the site gone): a site that does not come up is started on another port.
    for attempt in range(3):
        port = free_port()
        command = [*manage, "serve", "--port", str(port)]
        server = subprocess.Popen(command, env=env, cwd=BASE_DIR, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        if _came_up(url, server) or attempt == 2:
            break
        server.terminate()
        server.wait(timeout=10)
    try:
        if server.poll() is not None:
            raise RuntimeError((tmp_path / "server.log").read_text())
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)
        log.close()


def _came_up(url: str, server: subprocess.Popen) -> bool:
    """Whether the site answers its login page within 30 s (False: it stopped, or something
    else answers there)."""
    deadline = time.monotonic() + 30
    while server.poll() is None and time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/accounts/login/", timeout=1).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    return False


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
