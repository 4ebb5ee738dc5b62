"""Logging in and out in a real browser: messages, the throttle, `next`, the forced password change, the language."""

from __future__ import annotations

import re

from tests.browser.conftest import Console
from tests.helpers import PASSWORD

NEW_PASSWORD = "a new long passphrase"


def _has_session(console: Console) -> bool:
    return any(c["name"] == "edm_session" for c in console.context.cookies())


def _fill_login(console: Console, username: str, password: str) -> None:
    console.page.fill("#f-username", username)
    console.page.fill("#f-password", password)


def test_a_wrong_password_says_so_and_sets_no_session(console: Console) -> None:
    alice = console.server.account("alice")
    console.visit("/login", "login")
    _fill_login(console, alice.username, "not the password")
    console.submit("button[type=submit]", "wrong-password", status=401)
    assert console.page.get_by_role("alert").inner_text() == "Wrong username or password."
    assert console.page.input_value("#f-username") == alice.username, "what was typed is kept"
    assert console.page.input_value("#f-password") == ""
    assert not _has_session(console)


def test_the_eleventh_failed_try_shows_the_throttle_message(console: Console) -> None:
    bob = console.server.account("bob")
    for _ in range(10):  # through the form's own requests, without showing each answer
        answer = console.context.request.post("/login", form=console.login_form(bob.username, "wrong password"))
        assert answer.status == 401
    console.visit("/login", "login")
    _fill_login(console, bob.username, PASSWORD)  # even the right password, while throttled
    console.submit("button[type=submit]", "throttled", status=429)
    message = console.page.get_by_role("alert").inner_text()
    assert re.fullmatch(r"Too many failed attempts\. Try again in \d+ minutes?\.", message), message
    assert not _has_session(console)


def test_login_shows_the_dashboard_with_name_and_credit_and_logout_ends_it(console: Console) -> None:
    carol = console.server.account("carol", credit=12345)
    console.login(carol)
    page = console.page
    assert page.url == console.url("/")
    assert page.locator(".topbar .who").inner_text() == carol.username
    assert page.locator(".topbar .credit").inner_text() == "Credit: 12,345"
    assert page.locator("h1").inner_text() == "Dashboard"
    assert "No campaigns yet" in page.inner_text("main")  # a new user's empty state
    cookie = next(c for c in console.context.cookies() if c["name"] == "edm_session")
    assert cookie.get("httpOnly") is True and cookie.get("sameSite") == "Lax"

    console.submit("text=Log out", "logged-out")
    assert page.url == console.url("/login")
    assert not _has_session(console)
    again = console.context.request.get("/", max_redirects=0)
    assert again.status == 303 and again.headers["location"] == "/login"


def test_next_leads_back_to_the_page_asked_for_but_never_to_another_host(console: Console) -> None:
    dave = console.server.account("dave")
    page = console.page
    console.visit("/account", "login-for-account")
    assert page.url == console.url("/login?next=/account")
    _fill_login(console, dave.username, PASSWORD)
    console.submit("button[type=submit]", "account")
    assert page.url == console.url("/account")

    console.context.clear_cookies()
    console.visit("/login?next=//evil.example/x", "login-evil-next")  # other spellings: tests/unit, tests/integration
    _fill_login(console, dave.username, PASSWORD)
    console.submit("button[type=submit]", "dashboard")
    assert page.url == console.url("/")


def test_a_password_set_by_an_admin_must_be_changed_first(console: Console) -> None:
    erin = console.server.account("erin", must_change_password=True)
    page = console.page
    console.login(erin, name="forced-password")
    assert page.url == console.url("/password")
    assert "Choose your own before you go on" in page.inner_text("main")
    elsewhere = console.context.request.get("/account", max_redirects=0)  # every other page leads back here
    assert elsewhere.status == 303 and elsewhere.headers["location"] == "/password"

    page.fill("#f-current_password", PASSWORD)
    page.fill("#f-new_password", "short")
    page.fill("#f-new_password_again", "short")
    console.submit("button.primary", "password-too-short", status=422)
    assert page.inner_text("#f-new_password-error") == "Use at least 10 characters."
    assert page.get_attribute("#f-new_password", "aria-describedby") == "f-new_password-error"

    page.fill("#f-current_password", PASSWORD)
    page.fill("#f-new_password", NEW_PASSWORD)
    page.fill("#f-new_password_again", NEW_PASSWORD)
    console.submit("button.primary", "dashboard")
    assert page.url == console.url("/")
    assert console.context.request.get("/account", max_redirects=0).status == 200


def test_chinese_for_a_user_who_chose_it_and_the_switch_in_the_top_bar(console: Console) -> None:
    li = console.server.account("li", locale="zh_Hans", timezone="Asia/Shanghai")
    page = console.page
    console.sign_in(li)
    console.visit("/", "dashboard-zh")
    assert page.locator("h1").inner_text() == "仪表盘"
    assert page.locator("html").get_attribute("lang") == "zh-Hans"
    menu = page.locator("#menu").inner_text()
    places = [menu.index(word) for word in ("仪表盘", "联系人", "标签", "模板", "群发任务", "会话", "屏蔽名单")]
    assert places == sorted(places), menu  # in the order of the work
    console.visit("/account", "account-zh")
    assert page.locator("h1").inner_text() == "账户"
    started = page.locator("#sessions tbody td").first.inner_text()
    assert re.fullmatch(r"\d{4}/\d{1,2}/\d{1,2} \d{2}:\d{2}", started), started  # Babel's short date and time in zh

    console.submit(".lang-switch button", "account-en")
    assert page.url == console.url("/account")
    assert page.locator("h1").inner_text() == "Account"
    assert page.locator(".lang-switch button").inner_text() == "简体中文"
