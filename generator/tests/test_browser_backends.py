"""Several ComfyUI backends in a real browser: a user's jobs run on both, staff see their health."""

import subprocess
import sys
import time

import httpx
import pytest

from .browser import BASE_DIR, free_port, running_site, screenshot
from .factories import PASSWORD
from .test_browser_history import log_in

pytestmark = pytest.mark.browser

SEED = (
    "from django.contrib.auth import get_user_model; U = get_user_model(); "
    f"U.objects.create_user('mei', 'mei@example.com', '{PASSWORD}'); "
    f"U.objects.create_superuser('root', 'root@example.com', '{PASSWORD}')"
)


@pytest.fixture(scope="module")
def two_backend_site(tmp_path_factory):
    emulators, urls = [], []
    for _ in range(2):
        port = free_port()
        emulators.append(
            subprocess.Popen(
                [sys.executable, str(BASE_DIR / "manage.py"), "comfy_emulator", "--port", str(port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        urls.append(f"http://127.0.0.1:{port}")
    try:
        for url in urls:
            deadline = time.monotonic() + 20
            while not _up(url):
                assert time.monotonic() < deadline, f"emulator at {url} never answered"
                time.sleep(0.1)
        backends = f"{urls[0]}?label=GPU%20A,{urls[1]}?label=GPU%20B&weight=2"
        env = {"COMFYUI_URLS": backends}
        with running_site(tmp_path_factory.mktemp("two-backends"), extra_env=env, seed=SEED) as site:
            yield site
    finally:
        for emulator in emulators:
            emulator.terminate()
            emulator.wait(timeout=10)


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/system_stats", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def test_jobs_run_on_both_backends_and_staff_see_each_ones_health(page, two_backend_site):
    log_in(page, two_backend_site, "mei")
    for n in range(4):
        page.fill("#id_prompt", f"a paper boat on a pond, take {n}")
        page.fill("#id_steps", "12")
        page.click("button:has-text('Generate')")
        page.wait_for_selector(f"#jobs .job-card >> nth={n}")
    page.wait_for_function(
        "document.querySelectorAll('#jobs .job-card[data-status=succeeded] [data-image-id]').length >= 4",
        timeout=60000,
    )
    screenshot(page, "backends-user-jobs-done")

    page.context.clear_cookies()
    log_in(page, two_backend_site, "root")
    page.goto(f"{two_backend_site}/staff/overview/")
    rows = page.locator(".backends-card tbody tr")
    assert rows.count() == 2
    for label in ("GPU A", "GPU B"):
        row = rows.filter(has_text=label)
        assert "healthy" in row.locator(".badge").text_content()
        assert int(row.locator("td").nth(5).text_content()) >= 1  # jobs went to both backends
    assert "weight 2" in rows.filter(has_text="GPU B").text_content()
    screenshot(page, "backends-staff-overview")
