"""A user sets a script up: finds the API page in the navigation, makes a key, sees it once,
uses it, watches the job on the page, and revokes the key."""

import time

import httpx
import pytest

from .browser import screenshot

pytestmark = pytest.mark.browser


def sign_up(page, site_url, name):
    page.goto(site_url + "/accounts/signup/")
    page.fill("#id_username", name)
    page.fill("#id_email", f"{name}@example.com")
    page.fill("#id_password1", "scripting all day 2026")
    page.fill("#id_password2", "scripting all day 2026")
    page.click("button:has-text('Sign up')")
    page.wait_for_url(site_url + "/")


def test_make_a_key_use_it_and_revoke_it(page, site_url):
    sign_up(page, site_url, "ada")
    page.click("nav >> text=API")
    page.fill("#id_name", "notebook")
    page.click("button:has-text('Create key')")
    key = page.input_value("[data-testid=new-key] input")
    assert key.startswith("csk_")
    screenshot(page, "api-keys-new")

    api = httpx.Client(base_url=site_url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    job = api.post("/api/jobs", json={"parameters": {"prompt": "made by a script", "steps": 3}}).json()
    deadline = time.monotonic() + 30
    while api.get(f"/api/jobs/{job['id']}").json()["status"] != "succeeded":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    page.goto(site_url + "/")  # the job is on the page as if made there
    assert "made by a script" in page.text_content(f"#prompt-{job['id']}")

    page.goto(site_url + "/accounts/api-keys/")
    assert key not in page.content()  # shown once
    assert "notebook" in page.text_content("[data-testid=api-key-list]")
    page.click("button:has-text('Revoke')")
    assert "Revoked the key" in page.text_content(".messages")
    screenshot(page, "api-keys-revoked")
    assert api.get("/api/jobs").status_code == 401
