"""History in a real browser: scrolling loads more, search filters, favourites toggle, staff review."""

import pytest

from .browser import running_site, screenshot
from .factories import PASSWORD

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def history_site(tmp_path_factory):
    seed = "from generator.tests.bulk import seed_browser_history; seed_browser_history(90)"
    with running_site(tmp_path_factory.mktemp("history-site"), seed=seed) as url:
        yield url


def log_in(page, site, username):
    page.goto(f"{site}/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("button:has-text('Log in')")
    page.wait_for_url(f"{site}/")


def test_scrolling_loads_more_search_filters_and_favourites_toggle(page, history_site):
    log_in(page, history_site, "ada")
    page.goto(f"{history_site}/history/")
    tiles = page.locator("#history-items .tile")
    assert tiles.count() == 40
    assert "90 images" in page.text_content("[data-testid=history-totals]")
    screenshot(page, "history-first-page")

    page.mouse.wheel(0, 20000)
    page.wait_for_function("document.querySelectorAll('#history-items .tile').length >= 80")
    page.mouse.wheel(0, 20000)
    page.wait_for_function("document.querySelectorAll('#history-items .tile').length == 90")

    page.fill("#id_q", "lighthouse")
    page.click("button:has-text('Filter')")
    page.wait_for_load_state()
    texts = page.locator("#history-items .tile-text").all_text_contents()
    assert len(texts) == 30
    assert all("lighthouse" in text for text in texts)

    page.locator("#history-items .tile a").first.click()
    page.wait_for_url("**/history/images/**")
    page.click(".favourite-button")
    page.wait_for_selector(".favourite-button.is-favourite")
    screenshot(page, "history-image-detail")
    page.goto(f"{history_site}/history/?favourites=on")
    assert page.locator("#history-items .tile").count() == 1


def test_staff_bulk_approve_in_the_admin(page, history_site):
    log_in(page, history_site, "root")
    page.goto(f"{history_site}/admin/generator/generatedimage/?review_status__exact=pending")
    assert page.locator("#result_list tbody tr").count() == 50
    page.check("#action-toggle")
    page.select_option("select[name=action]", "approve")
    page.click("button[name=index]")
    page.wait_for_load_state()
    assert "marked approved" in page.text_content(".messagelist")
    screenshot(page, "admin-bulk-approved")
    page.goto(f"{history_site}/admin/generator/generatedimage/?review_status__exact=approved")
    assert page.locator("#result_list tbody tr").count() == 50


@pytest.fixture(scope="module")
def narrow_scan_site(tmp_path_factory):
    """A site whose searches read 10 rows a page, so 90 images take nine stretches."""
    seed = "from generator.tests.bulk import seed_browser_history; seed_browser_history(90)"
    with running_site(
        tmp_path_factory.mktemp("scan-site"), extra_env={"HISTORY_SCAN_ROWS": "10"}, seed=seed
    ) as url:
        yield url


def test_a_search_goes_on_through_stretches_without_matches_by_itself(page, narrow_scan_site):
    log_in(page, narrow_scan_site, "ada")
    page.goto(f"{narrow_scan_site}/history/?q=number+2")

    # The 60 newest images hold no match: their empty stretches load one after another, with
    # nobody scrolling, until the matches 29–20 push the next one below the fold; scrolling
    # then shows number 2.
    page.wait_for_function("document.querySelectorAll('#history-items .tile').length == 10")
    page.mouse.wheel(0, 20000)
    page.wait_for_function("document.querySelectorAll('#history-items .tile').length == 11")
    page.wait_for_selector("#history-items .load-more", state="detached")
    texts = page.locator("#history-items .tile-text").all_text_contents()
    assert sorted(int(text.rsplit(" ", 1)[1]) for text in texts) == [2, *range(20, 30)]
    assert "Nothing here yet" not in page.text_content("#history-items")
