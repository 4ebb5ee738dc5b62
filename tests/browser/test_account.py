"""The account page in a real browser: API tokens (shown once, revoked), sessions ended in place, and what a
read-only account sees and may do."""

from __future__ import annotations

import httpx
from playwright.sync_api import expect

from tests.browser.conftest import Console
from tests.helpers import PASSWORD


def test_a_token_is_shown_once_works_and_is_revoked(console: Console) -> None:
    frank = console.server.account("frank")
    page = console.page
    console.sign_in(frank)
    console.visit("/account", "account")

    console.submit("#tokens button.primary", "token-name-missing", status=422)  # no name: the error beside it
    assert page.inner_text("#f-name-error") == "This field is required."
    assert page.get_attribute("#f-name", "aria-invalid") == "true"

    page.fill("#f-name", "reporting script")
    page.select_option("#f-scope", "read")
    console.submit("#tokens button.primary", "token-created")
    token = page.inner_text("#new-token")
    assert token.startswith("edm_") and len(token) == 44
    me = console.context.request.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status == 200 and me.json()["token_scope"] == "read"

    row = page.locator("#tokens tbody tr", has_text="reporting script")
    console.submit("#tokens tbody tr:has-text('reporting script') button", "token-revoked")
    assert console.dialogs == ["Revoke the token “reporting script”? Scripts using it stop working."]
    assert "The token was revoked" in page.inner_text("main")
    assert token not in page.content(), "the token is shown once, on the page that created it"
    assert row.count() == 0
    gone = console.context.request.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert gone.status == 401


def test_ending_another_session_replaces_the_list_in_place(console: Console) -> None:
    gina = console.server.account("gina")
    console.sign_in(gina)
    other = httpx.Client(base_url=console.server.url)  # the same person in another browser
    assert other.post("/api/v1/auth/login", json={"username": gina.username, "password": PASSWORD}).status_code == 200
    console.visit("/account", "two-sessions")
    rows = console.page.locator("#sessions tbody tr")
    assert rows.count() == 2
    with console.page.expect_response(lambda r: r.url.endswith("/end") and r.request.method == "POST") as posted:
        console.page.click("#sessions button:has-text('End')")
    assert posted.value.request.header_value("x-csrf-token") == console.csrf_token(), "htmx sent the CSRF header"
    expect(rows).to_have_count(1)  # htmx swapped the list for the one the server answered with
    assert rows.first.inner_text().endswith("This session")
    console.check("one-session")
    assert other.get("/api/v1/me").status_code == 401
    other.close()


def test_a_read_only_account_sees_no_control_that_writes_and_its_posts_are_refused(console: Console) -> None:
    reader = console.server.account("reader", role="read_only")
    page = console.page
    console.sign_in(reader)
    for path, name in (("/", "dashboard"), ("/account", "account")):
        console.visit(path, name)
        assert page.locator("main form, main button, main input, main select").count() == 0, path
    assert page.locator("#f-name").count() == 0, "no token creation form"
    assert page.locator(".lang-switch button").count() == 1  # the own language and logout stay
    token = console.csrf_token()

    forged = console.context.request.post("/account/tokens", form={"csrf_token": token, "name": "x", "scope": "read"})
    assert forged.status == 403 and "can look but not change anything" in forged.text()
    page.evaluate(  # the same through the browser, as a page that built the form itself would
        """token => { const f = document.createElement('form'); f.method = 'post'; f.action = '/account/tokens';
        for (const [k, v] of [['csrf_token', token], ['name', 'x']]) {
          const i = document.createElement('input'); i.type = 'hidden'; i.name = k; i.value = v; f.append(i); }
        document.body.append(f); f.submit(); }""",
        token,
    )
    page.wait_for_url("**/account/tokens")
    console.check("forbidden", status=403)
    assert page.locator("h1").inner_text() == "Not allowed"
    tokens = console.context.request.get("/api/v1/me/tokens").json()["items"]
    assert [t["name"] for t in tokens] == ["tests"], "nothing was created"

    console.visit("/no-such-page", "not-found", status=404)
    assert page.locator("h1").inner_text() == "Page not found"


def test_writes_without_the_right_csrf_token_are_refused(console: Console) -> None:
    hank = console.server.account("hank")
    console.sign_in(hank)
    request = console.context.request
    token = request.get("/account").text().split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    for sent in ({}, {"csrf_token": "wrong"}):
        answer = request.post("/account/tokens", form={"name": "sneaky", **sent})
        assert answer.status == 403 and "This form has expired" in answer.text()
    assert request.post("/account/tokens", form={"name": "real", "csrf_token": token}).status == 200
    tokens = request.get("/api/v1/me/tokens").json()["items"]
    assert [t["name"] for t in tokens] == ["tests", "real"]
