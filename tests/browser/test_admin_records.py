"""The admin's events, global suppressions, settings and audit log pages in a real browser (each audited with axe
at both widths by `console.visit`), and the settings form refusing a bad value beside its field."""

from __future__ import annotations

from tests.browser.conftest import Console


def test_the_admin_records_pages_open_and_a_bad_setting_is_refused_beside_the_field(console: Console) -> None:
    root = console.server.account("rec-admin", role="admin")
    page = console.page
    console.sign_in(root)
    console.visit("/admin/events", "admin-events")
    console.visit("/admin/suppressions", "admin-suppressions")
    assert "The global list is empty." in page.inner_text("main")
    console.visit("/admin/audit", "admin-audit")
    console.visit("/admin/settings", "admin-settings")
    page.fill("[name='bounce.soft_limit']", "-1")
    console.submit("form.admin-settings button.primary", "admin-settings-refused", status=422)
    assert page.inner_text("[id='f-bounce.soft_limit-error']") == "Enter a number of 0 or more."
    assert page.input_value("[name='bounce.soft_limit']") == "-1"
