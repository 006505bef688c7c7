"""The heart of the product in a real browser: sign up, generate, watch it run, reload mid-job."""

import pytest

from .browser import running_site, screenshot

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def demo_site(tmp_path_factory):
    with running_site(tmp_path_factory.mktemp("demo-site")) as url:
        yield url


def sign_up(page, site: str, username: str, password: str) -> None:
    page.goto(f"{site}/accounts/signup/")
    page.fill("#id_username", username)
    page.fill("#id_email", f"{username}@example.com")
    page.fill("#id_password1", password)
    page.fill("#id_password2", password)
    page.click("button:has-text('Sign up')")
    page.wait_for_url(f"{site}/")


def step_value(page) -> float:
    return float(page.eval_on_selector("#jobs .job-card .step-bar", "bar => bar.value"))


def test_generate_watch_progress_reload_mid_job_and_see_the_image(page, demo_site):
    sign_up(page, demo_site, "lin", "painting with light 77")
    assert "Demo backend" in page.text_content("[data-testid=backend-status]")

    page.fill("#id_prompt", "a lighthouse on a cliff at dusk")
    page.fill("#id_steps", "25")
    page.click("button:has-text('Generate')")

    # The card arrives without a reload, then the bar moves as ComfyUI samples.
    page.wait_for_selector("#jobs .job-card[data-status=running] .step-bar", timeout=15000)
    url_before = page.url
    first = step_value(page)
    page.wait_for_function(
        f"document.querySelector('#jobs .job-card .step-bar') && "
        f"document.querySelector('#jobs .job-card .step-bar').value > {first}",
        timeout=10000,
    )
    assert page.url == url_before
    page.wait_for_selector("#jobs .job-card .job-preview img", timeout=10000)
    screenshot(page, "generate-running")

    # A reload mid-job still shows the job, and it still finishes.
    page.reload()
    page.wait_for_selector("#jobs .job-card[data-status=running], #jobs .job-card[data-status=succeeded]")
    page.wait_for_selector("#jobs .job-card[data-status=succeeded] [data-image-id] img", timeout=20000)
    width = page.eval_on_selector("#jobs [data-image-id] img", "img => img.complete && img.naturalWidth")
    assert width > 0
    assert "Made by the demo backend" in page.text_content("#jobs .job-card")
    screenshot(page, "generate-done")


def test_bad_input_shows_field_errors_and_queues_nothing(page, demo_site):
    sign_up(page, demo_site, "mo", "a careful tester 12")

    page.fill("#id_prompt", "x")
    page.fill("#id_steps", "0")
    page.eval_on_selector("#generate-form", "form => form.noValidate = true")
    page.click("button:has-text('Generate')")
    page.wait_for_selector("#id_steps_errors")

    assert "greater than or equal to 1" in page.text_content("#id_steps_errors")
    assert page.locator("#jobs .job-card").count() == 0
    screenshot(page, "generate-field-errors")
