"""The console's admin user pages over the ASGI app (no browser): the user list with its filters and paging, the
"New user" form (errors beside the fields, what was typed kept, must-change), one user's edit, password reset and
credit (adjust with a reason, the ledger paged), deletion behind a confirmation page that counts what goes, each
write audited as the API audits it; a plain user gets 404 for every page and every form post.
tests/browser/test_admin_users.py drives the pages in Chromium."""

from __future__ import annotations

import html
import re

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm.db.session import unit_of_work
from edm.models.system import AuditLog
from edm.models.users import User
from edm.system.service import CLI
from edm.users import credit
from edm.users.service import create_user
from tests import factories
from tests.helpers import PASSWORD, console_log_in, field_error, make_account, page_field


async def _audited(sessionmaker: async_sessionmaker[AsyncSession], action: str, target_id: int) -> list[AuditLog]:
    async with sessionmaker() as session:
        rows = await session.scalars(
            select(AuditLog).where(AuditLog.action == action, AuditLog.target_id == str(target_id))
        )
        return list(rows)


async def _user(sessionmaker: async_sessionmaker[AsyncSession], user_id: int) -> User | None:
    async with sessionmaker() as session:
        return await session.get(User, user_id)


def _next_link(page: str) -> str:
    found = re.search(r'href="([^"]+)" rel="next"', page)
    assert found is not None, "no next page"
    return html.unescape(found.group(1))


def _text(page: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


async def test_the_list_filters_and_pages_and_the_new_user_form_refuses_beside_the_field_then_creates(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    root = await make_account(sessionmaker, "root", role="admin")
    await make_account(sessionmaker, "alice", credit=250)
    await make_account(sessionmaker, "reader", role="read_only")
    csrf = await console_log_in(client, root)

    listed = await client.get("/admin/users")
    assert listed.status_code == 200
    text = _text(listed.text)
    assert "alice alice@example.com User Active 250" in text and "reader reader@example.com Read only" in text
    only_readers = (await client.get("/admin/users", params={"role": "read_only"})).text
    assert "reader@example.com" in only_readers and "alice@example.com" not in only_readers
    searched = (await client.get("/admin/users", params={"q": "ALI"})).text
    assert "alice@example.com" in searched and "reader@example.com" not in searched
    inactive = (await client.get("/admin/users", params={"active": "no"})).text
    assert "No user matches these filters." in inactive

    bad = await client.post(
        "/admin/users",
        data={
            "csrf_token": csrf,
            "username": "Kim Lee",
            "email": "not-an-address",
            "password": "short",
            "role": "user",
            "timezone": "UTC",
            "credit": "0",
        },
    )
    assert bad.status_code == 422
    assert field_error(bad.text, "password") == "Use at least 10 characters."
    assert page_field(bad.text, "username") == "Kim Lee" and page_field(bad.text, "email") == "not-an-address"
    named = await client.post(
        "/admin/users",
        data={
            "csrf_token": csrf,
            "username": "Kim Lee",
            "email": "kim@example.com",
            "password": "a-long-password",
            "role": "user",
            "timezone": "UTC",
            "credit": "0",
        },
    )
    assert named.status_code == 422
    assert field_error(named.text, "username") == (
        "Use 3 to 64 characters: lower-case letters, digits, dots, hyphens or underscores."
    )
    taken = await client.post(
        "/admin/users",
        data={
            "csrf_token": csrf,
            "username": "alice",
            "email": "kim@example.com",
            "password": "a-long-password",
            "role": "user",
            "timezone": "UTC",
            "credit": "0",
        },
    )
    assert taken.status_code == 409 and field_error(taken.text, "username") == "This is already in use."

    created = await client.post(
        "/admin/users",
        data={
            "csrf_token": csrf,
            "username": "kim",
            "email": "Kim@Example.com",
            "password": "a-long-password",
            "role": "read_only",
            "timezone": "Europe/Berlin",
            "credit": "40",
            "must_change": "1",
        },
    )
    assert created.status_code == 303
    kim_id = int(created.headers["location"].split("/")[-1].split("?")[0])
    kim = await _user(sessionmaker, kim_id)
    assert kim is not None and kim.must_change_password and kim.role == "read_only"
    assert kim.timezone == "Europe/Berlin" and kim.credit_balance == 40 and kim.email == "kim@example.com"
    [entry] = await _audited(sessionmaker, "user.create", kim_id)
    assert entry.details == {"username": "kim", "role": "read_only", "credit": 40}
    page = await client.get(created.headers["location"])
    assert page.status_code == 200 and "The user was created." in page.text

    async with unit_of_work(sessionmaker) as session:
        for n in range(50):
            await create_user(session, username=f"extra{n:02d}", email=f"extra{n:02d}@example.com", password=PASSWORD)
    first = (await client.get("/admin/users")).text
    assert "extra49" not in first and 'rel="next"' in first
    second = (await client.get(_next_link(first))).text
    assert "extra49@example.com" in second and "alice@example.com" not in second and "First page" in second


async def test_a_user_is_edited_its_password_reset_and_its_credit_adjusted_with_errors_beside_the_fields(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    root = await make_account(sessionmaker, "root", role="admin")
    bob = await make_account(sessionmaker, "bob", credit=30)
    csrf = await console_log_in(client, root)
    page = await client.get(f"/admin/users/{bob.id}")
    assert page.status_code == 200 and page_field(page.text, "email") == "bob@example.com"

    bad = await client.post(
        f"/admin/users/{bob.id}",
        data={"csrf_token": csrf, "email": "bob at home", "role": "user", "is_active": "1", "timezone": "UTC"},
    )
    assert bad.status_code == 422 and field_error(bad.text, "email") == "Enter a valid email address."
    assert page_field(bad.text, "email") == "bob at home"
    edited = await client.post(
        f"/admin/users/{bob.id}",
        data={"csrf_token": csrf, "email": "robert@example.com", "role": "read_only", "timezone": "Asia/Shanghai"},
    )
    assert edited.status_code == 303
    robert = await _user(sessionmaker, bob.id)
    assert robert is not None and robert.email == "robert@example.com" and robert.role == "read_only"
    assert not robert.is_active and robert.timezone == "Asia/Shanghai"
    [update] = await _audited(sessionmaker, "user.update", bob.id)
    assert update.details is not None and update.details["changed"] == ["email", "is_active", "role", "timezone"]
    last_admin = await client.post(
        f"/admin/users/{root.id}",
        data={"csrf_token": csrf, "email": "root@example.com", "role": "user", "is_active": "1", "timezone": "UTC"},
    )
    assert last_admin.status_code == 409
    assert "The last active admin cannot be demoted, deactivated or deleted." in last_admin.text

    short = await client.post(f"/admin/users/{bob.id}/password", data={"csrf_token": csrf, "password": "short"})
    assert short.status_code == 422 and field_error(short.text, "password") == "Use at least 10 characters."
    reset = await client.post(
        f"/admin/users/{bob.id}/password", data={"csrf_token": csrf, "password": "temporary-pass", "must_change": "1"}
    )
    assert reset.status_code == 303
    after = await _user(sessionmaker, bob.id)
    assert after is not None and after.must_change_password
    assert len(await _audited(sessionmaker, "user.password_reset", bob.id)) == 1

    no_reason = await client.post(
        f"/admin/users/{bob.id}/credit", data={"csrf_token": csrf, "operation": "add", "amount": "5", "reason": ""}
    )
    assert no_reason.status_code == 422 and field_error(no_reason.text, "reason") == "This field is required."
    assert page_field(no_reason.text, "amount") == "5"
    zero = await client.post(
        f"/admin/users/{bob.id}/credit", data={"csrf_token": csrf, "operation": "add", "amount": "0", "reason": "x"}
    )
    assert zero.status_code == 422 and field_error(zero.text, "amount") == "Enter a whole number greater than 0."
    too_much = await client.post(
        f"/admin/users/{bob.id}/credit",
        data={"csrf_token": csrf, "operation": "subtract", "amount": "31", "reason": "refund"},
    )
    assert too_much.status_code == 409 and field_error(too_much.text, "amount") == "The balance is only 30."
    added = await client.post(
        f"/admin/users/{bob.id}/credit",
        data={"csrf_token": csrf, "operation": "set", "amount": "100", "reason": "yearly plan"},
    )
    assert added.status_code == 303
    [adjust] = await _audited(sessionmaker, "credit.adjust", bob.id)
    assert adjust.details is not None and adjust.details["delta"] == 70 and adjust.details["reason"] == "yearly plan"
    shown = _text((await client.get(f"/admin/users/{bob.id}")).text)
    assert "Balance: 100" in shown and "Balance set +70 100 yearly plan" in shown

    async with unit_of_work(sessionmaker) as session:
        for n in range(25):
            await credit.adjust(session, user_id=bob.id, operation="add", amount=1, reason=f"bonus {n}", actor=CLI)
    first = (await client.get(f"/admin/users/{bob.id}")).text
    assert "bonus 24" in first and "yearly plan" not in first
    assert "?ledger=" in _next_link(first)
    second = (await client.get(_next_link(first))).text
    assert "yearly plan" in second and "bonus 24" not in second


async def test_deletion_asks_first_counting_what_goes_and_a_plain_user_gets_404_everywhere(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    root = await make_account(sessionmaker, "root", role="admin")
    carol = await make_account(sessionmaker, "carol", credit=5)
    async with unit_of_work(sessionmaker) as session:
        await factories.contacts(session, carol.id, 3, prefix="carol-")
        await factories.template(session, carol.id, "Carol's letter")
    csrf = await console_log_in(client, carol)
    for path in ("/admin/users", f"/admin/users/{carol.id}", f"/admin/users/{carol.id}/delete"):
        assert (await client.get(path)).status_code == 404, path
    for path in (
        "/admin/users",
        f"/admin/users/{carol.id}",
        f"/admin/users/{carol.id}/password",
        f"/admin/users/{carol.id}/credit",
        f"/admin/users/{carol.id}/delete",
    ):
        refused = await client.post(
            path, data={"csrf_token": csrf, "operation": "add", "amount": "9", "reason": "me", "role": "admin"}
        )
        assert refused.status_code == 404, path
    still = await _user(sessionmaker, carol.id)
    assert still is not None and still.credit_balance == 5 and still.role == "user"

    csrf = await console_log_in(client, root)
    confirm = await client.get(f"/admin/users/{carol.id}/delete")
    assert confirm.status_code == 200
    text = _text(confirm.text)
    assert "Delete “carol” and all its data?" in text
    assert "Contacts 3" in text and "Templates 1" in text and "Campaigns 0" in text and "API tokens 1" in text
    assert "Credit balance 5" in text
    deleted = await client.post(f"/admin/users/{carol.id}/delete", data={"csrf_token": csrf})
    assert deleted.status_code == 303 and deleted.headers["location"] == "/admin/users?notice=deleted"
    assert await _user(sessionmaker, carol.id) is None
    [entry] = await _audited(sessionmaker, "user.deleted", carol.id)
    assert entry.details == {"username": "carol", "id": carol.id}

    refused = await client.post(f"/admin/users/{root.id}/delete", data={"csrf_token": csrf})
    assert refused.status_code == 409
    assert "The last active admin cannot be demoted, deactivated or deleted." in refused.text
    assert await _user(sessionmaker, root.id) is not None
