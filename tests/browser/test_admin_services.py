"""The sending-service pages in Chromium: the list, the new-service form for SMTP refusing an empty host beside the
field, the service's page after it is created against a local SMTP sink, and the list again with it."""

from __future__ import annotations

from edm.devtools.smtp_sink import SmtpSink
from edm.models.users import Role
from tests.browser.conftest import Console


def test_an_admin_creates_an_smtp_service_after_an_inline_error(console: Console, smtp_sink: SmtpSink) -> None:
    admin = console.server.account("svcadmin", role=Role.ADMIN)
    console.sign_in(admin)
    console.visit("/admin/services", "admin-services")
    console.visit("/admin/services/new?provider=smtp", "admin-service-new")
    console.page.fill("#f-name", f"relay-{admin.username}")
    console.page.fill("#f-domain", "mail.example.com")
    console.page.fill("#f-daily_quota", "500")
    console.page.fill("#f-opt_port", str(smtp_sink.port))
    console.page.select_option("#f-opt_security", "none")
    console.submit("form.service-form button.primary", "admin-service-new-error", status=422)
    assert console.page.inner_text("#f-opt_host-error") == "This field is required."
    assert console.page.input_value("#f-name") == f"relay-{admin.username}"
    console.page.fill("#f-opt_host", smtp_sink.host)
    console.submit("form.service-form button.primary", "admin-service")
    assert "The sending service was created." in console.page.inner_text("main")
    console.visit("/admin/services", "admin-services-one")
    assert f"relay-{admin.username}" in console.page.inner_text("main")
