"""The backend banner in a real browser: a ComfyUI that goes down and comes back shows in tabs
already open, logged out (polling) and signed in (the jobs websocket), without a reload."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import expect

from .browser import BASE_DIR, free_port, running_site, screenshot
from .factories import PASSWORD
from .test_browser_history import log_in

pytestmark = pytest.mark.browser

SEED = (
    "from django.contrib.auth import get_user_model; "
    f"get_user_model().objects.create_user('mei', 'mei@example.com', '{PASSWORD}')"
)
BANNER = "#backend-banner"
SECONDS = 30_000  # ms: the bridge reconnects with a backoff of up to 10 s


class EmulatorProcess:
    """A ComfyUI emulator process on a fixed port, to stop and start again."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(BASE_DIR / "manage.py"), "comfy_emulator", "--port", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while not _up(f"http://127.0.0.1:{self.port}"):
            assert time.monotonic() < deadline, "the emulator never answered"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/system_stats", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture
def comfyui() -> Iterator[EmulatorProcess]:
    emulator = EmulatorProcess(free_port())
    emulator.start()
    yield emulator
    emulator.stop()


def site_env(comfyui: EmulatorProcess, poll_seconds: int) -> dict[str, str]:
    return {"COMFYUI_URL": f"http://127.0.0.1:{comfyui.port}", "BANNER_POLL_SECONDS": str(poll_seconds)}


def test_a_signed_in_tab_hears_comfyui_go_down_and_come_back_over_its_websocket(page, comfyui, tmp_path):
    # Polling once a minute: a change shown within seconds came over the jobs websocket.
    with running_site(tmp_path, extra_env=site_env(comfyui, 60), seed=SEED) as site:
        log_in(page, site, "mei")
        banner = page.locator(BANNER)
        expect(banner).to_have_text("", timeout=SECONDS)  # contacted, up: nothing to say

        comfyui.stop()
        expect(banner).to_contain_text("ComfyUI is unreachable", timeout=SECONDS)
        expect(banner).to_contain_text("connection lost")  # signed in: told why
        screenshot(page, "banner-signed-in-down")

        comfyui.start()
        expect(banner).to_have_text("", timeout=SECONDS)


def test_a_logged_out_page_polls_the_banner(page, comfyui, tmp_path):
    with running_site(tmp_path, extra_env=site_env(comfyui, 1)) as site:
        page.goto(f"{site}/accounts/login/")
        banner = page.locator(BANNER)
        expect(banner).to_have_text("", timeout=SECONDS)

        comfyui.stop()
        expect(banner).to_contain_text("ComfyUI is unreachable just now", timeout=SECONDS)
        expect(banner).not_to_contain_text(str(comfyui.port))  # visitors are not told where it is
        screenshot(page, "banner-logged-out-down")

        comfyui.start()
        expect(banner).to_have_text("", timeout=SECONDS)


def test_the_demo_banner_is_on_the_logged_out_pages(page, tmp_path):
    with running_site(tmp_path / "site") as site:
        for path in ("/accounts/login/", "/accounts/signup/", "/accounts/password_reset/"):
            page.goto(f"{site}{path}")
            banner = page.locator("[data-testid=backend-status]")
            banner.wait_for()
            assert "Demo backend" in banner.inner_text()
        screenshot(page, "banner-demo-logged-out")
