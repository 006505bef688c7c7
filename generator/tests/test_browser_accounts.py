"""A newcomer in a real browser: signs up, lands on the home page, logs out and in again."""

import pytest

from .browser import screenshot

pytestmark = pytest.mark.browser


def test_sign_up_log_out_and_log_in_again(page, site_url):
    page.goto(site_url + "/")
    assert page.url.startswith(site_url + "/accounts/login/")
    screenshot(page, "accounts-login")

    page.click("text=Create an account")
    page.fill("#id_username", "grace")
    page.fill("#id_email", "grace@example.com")
    page.fill("#id_password1", "compiler pioneer 1952")
    page.fill("#id_password2", "compiler pioneer 1952 typo")
    page.click("button:has-text('Sign up')")
    assert "The two password fields didn" in page.text_content(".errorlist")
    screenshot(page, "accounts-signup-errors")

    page.fill("#id_password1", "compiler pioneer 1952")
    page.fill("#id_password2", "compiler pioneer 1952")
    page.click("button:has-text('Sign up')")
    page.wait_for_url(site_url + "/")
    assert "grace" in page.text_content("[data-testid=current-user]")
    screenshot(page, "home")

    page.click("button:has-text('Log out')")
    page.wait_for_url(f"{site_url}/accounts/login/**")
    page.fill("#id_username", "grace")
    page.fill("#id_password", "compiler pioneer 1952")
    page.click("button:has-text('Log in')")
    page.wait_for_url(site_url + "/")
    assert "grace" in page.text_content("[data-testid=current-user]")


def test_the_sign_up_page_reads_well_on_a_phone_in_dark_mode(browser, site_url):
    context = browser.new_context(viewport={"width": 390, "height": 844}, color_scheme="dark")
    page = context.new_page()
    page.goto(site_url + "/accounts/signup/")
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    screenshot(page, "accounts-signup-phone-dark")
    context.close()

    assert background == "rgb(17, 18, 24)"
