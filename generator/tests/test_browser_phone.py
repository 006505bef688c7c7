"""The Generate page on a phone: after Generate, the new job's card is in view, not under the form."""

import pytest

from .browser import screenshot

pytestmark = pytest.mark.browser


def test_on_a_phone_the_new_card_is_visible_after_generate(browser, site_url):
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    console = []
    page.on("console", lambda message: console.append(message.text))
    page.goto(site_url + "/accounts/signup/")
    page.fill("#id_username", "mobile")
    page.fill("#id_email", "mobile@example.com")
    page.fill("#id_password1", "small screens 2026")
    page.fill("#id_password2", "small screens 2026")
    page.click("button:has-text('Sign up')")
    page.wait_for_url(site_url + "/")

    page.fill("#id_prompt", "a lighthouse, seen on a phone")
    page.click("button:has-text('Generate')")
    card = page.locator(".job-card").first
    card.wait_for()
    page.wait_for_timeout(500)  # htmx scrolls after the swap
    box = card.bounding_box()
    on_top = page.evaluate(
        "([x, y]) => document.elementFromPoint(x, y)?.closest('.job-card') !== null",
        [box["x"] + box["width"] / 2, min(box["y"] + 20, 843)],
    )
    screenshot(page, "generate-phone-after-generate")
    context.close()

    assert 0 <= box["y"] < 844, "the card is outside the screen"
    assert on_top, "something (the form) covers the card"
    assert not [m for m in console if "404" in m], console  # no missing favicon or the like
