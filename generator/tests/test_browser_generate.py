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


def generate(page, prompt: str, steps: int) -> None:
    page.fill("#id_prompt", prompt)
    page.fill("#id_steps", str(steps))
    page.click("button:has-text('Generate')")
    page.wait_for_selector(f"#jobs .job-card:has-text('{prompt}')")


def test_watching_jobs_run_logs_no_error_and_the_cards_say_how_long_is_left(page, demo_site):
    """Every update finds its card (no htmx:oobErrorNoTarget when progress beats the form's
    answer); once the backend's speed is measured, waiting and running cards say the time left."""
    console_errors: list[str] = []
    page.on("console", lambda message: message.type == "error" and console_errors.append(message.text))
    page.on("pageerror", lambda error: console_errors.append(str(error)))
    sign_up(page, demo_site, "ada", "counting the steps 42")
    other_tab = page.context.new_page()  # the same user's second tab: it never posts a form
    other_tab.on("console", lambda message: message.type == "error" and console_errors.append(message.text))
    other_tab.goto(demo_site)

    generate(page, "a first lighthouse, to measure the demo backend", 6)
    page.wait_for_selector("#jobs .job-card[data-status=succeeded]", timeout=20000)
    for n in range(3):  # one runs, one waits in ComfyUI, one in the site's queue
        generate(page, f"a harbour at night, take {n}", 20)

    page.wait_for_selector("#jobs .job-card[data-status=running] .eta", timeout=15000)
    page.wait_for_selector("#jobs .job-card[data-status=queued] .eta", timeout=15000)
    running = page.text_content("#jobs .job-card[data-status=running] .job-progress")
    queued = page.text_content("#jobs .job-card[data-status=queued] .job-progress")
    assert "to go" in running
    assert "#2 in the queue" in queued  # behind the job waiting in ComfyUI
    assert "about" in queued
    badges = page.eval_on_selector_all(
        "#jobs .job-card", "cards => cards.map(c => [c.dataset.status, c.querySelector('.badge').className])"
    )
    assert all(badge == f"badge status-{status}" for status, badge in badges), badges
    screenshot(page, "generate-estimates")

    page.wait_for_function(
        "document.querySelectorAll('#jobs .job-card[data-status=succeeded]').length == 4", timeout=60000
    )
    assert page.locator("#jobs .job-card").count() == 4  # each card once
    other_tab.wait_for_function(
        "document.querySelectorAll('#jobs .job-card[data-status=succeeded]').length == 4", timeout=10000
    )
    assert console_errors == []


@pytest.fixture(scope="module")
def few_cards_site(tmp_path_factory):
    with running_site(tmp_path_factory.mktemp("few-cards-site"), extra_env={"JOB_CARDS": "3"}) as url:
        yield url


def test_a_long_queue_shows_the_newest_cards_and_counts_the_rest(page, few_cards_site):
    console_errors: list[str] = []
    page.on("console", lambda message: message.type == "error" and console_errors.append(message.text))
    sign_up(page, few_cards_site, "kit", "a long queue of ideas 9")
    for n in range(8):  # one runs, one waits in ComfyUI, six in the site's queue
        generate(page, f"study number {n}", 20)

    page.reload()

    # The three newest and the two on the GPU; the three other queued ones are counted.
    page.wait_for_selector("#jobs-more:has-text('and 3 more queued')")
    assert page.locator("#jobs .job-card").count() == 5
    assert page.locator("#jobs .job-card:has-text('study number 2')").count() == 0
    screenshot(page, "generate-long-queue")
    # The oldest counted job reaches the GPU: it gets its card, and the count goes down.
    page.wait_for_selector("#jobs-more:has-text('and 2 more queued')", timeout=20000)
    page.wait_for_selector("#jobs .job-card:has-text('study number 2')")
    assert console_errors == []
