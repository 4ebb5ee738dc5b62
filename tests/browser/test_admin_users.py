"""The admin user and credit pages in a real browser: the user list, one user's page (its credit adjust form
refuses a missing reason beside the field), the deletion confirmation, and the credit page with its chart."""

from __future__ import annotations

from tests.browser.conftest import Console


def test_the_admin_user_and_credit_pages_open_and_the_credit_form_refuses_beside_the_field(console: Console) -> None:
    admin = console.server.account("boss", role="admin")
    user = console.server.account("ann", credit=50)
    page = console.page
    console.sign_in(admin)
    console.visit("/admin/users", "admin-users")
    assert user.username in page.inner_text("table.admin-users")
    console.visit(f"/admin/users/{user.id}", "admin-user")
    page.fill("#f-amount", "20")
    console.submit("#adjust-credit button.primary", "admin-user-credit-refused", status=422)
    assert page.inner_text("#f-reason-error") == "This field is required."
    assert page.input_value("#f-amount") == "20"
    console.visit(f"/admin/users/{user.id}/delete", "admin-user-delete")
    assert "Delete the user and all its data" in page.inner_text("main")
    console.visit("/admin/credit", "admin-credit")
    assert page.locator("#chart-credit-title").count() == 1
