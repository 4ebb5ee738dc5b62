"""The conversations API (docs/conversations.md#api): the owner reads, filters, marks read and unread and changes the
status; another user gets 404 everywhere; inbound HTML is sanitized and framed by a CSP; attachments download from the
stored message; admins assign or discard unrouted mail (audited), others are refused."""

from __future__ import annotations

import base64
from typing import Any

from sqlalchemy import select

from edm.db.session import unit_of_work
from edm.models.conversations import MailBlob, UnroutedInbound
from edm.models.system import AuditLog
from edm.models.users import Role
from edm.users.service import create_token
from tests.helpers import Account, expect_error, make_account
from tests.integration.conversations.conftest import ConversationKit


async def owner(ckit: ConversationKit, scope: str = "write") -> Account:
    async with unit_of_work(ckit.sessionmaker) as session:
        token, _ = await create_token(session, user_id=ckit.user_id, name="tests", scope=scope)
    return Account(ckit.user_id, "alice", token)


async def get(ckit: ConversationKit, who: Account, path: str, **params: Any) -> Any:
    return await ckit.ekit.client.get(path, headers=who.headers, params=params)


async def post(ckit: ConversationKit, who: Account, path: str, body: Any = None) -> Any:
    return await ckit.ekit.client.post(path, headers=who.headers, json=body)


async def test_the_owner_lists_filters_reads_and_closes_a_conversation(ckit: ConversationKit) -> None:
    alice = await owner(ckit)
    stored = await ckit.receive(ckit.mime("thunderbird_reply.eml"))
    cid = stored.conversation_id

    listed = await get(ckit, alice, "/api/v1/conversations")
    assert listed.status_code == 200, listed.text
    body = listed.json()
    assert [c["id"] for c in body["items"]] == [cid]
    assert (body["unread_conversations"], body["unread_messages"]) == (1, 1)
    item = body["items"][0]
    assert (item["their_address"], item["subject"], item["status"]) == (
        ckit.their_address(),
        "Spring campaign",
        "active",
    )
    for params, expected in [
        ({"status": "closed"}, []),
        ({"status": "active"}, [cid]),
        ({"unread": "true"}, [cid]),
        ({"q": "rita"}, [cid]),
        ({"q": "spring"}, [cid]),
        ({"q": "nothing-like-it"}, []),
        ({"contact_id": ckit.subtasks[0].contact_id}, [cid]),
        ({"contact_id": ckit.subtasks[1].contact_id}, []),
    ]:
        answer = await get(ckit, alice, "/api/v1/conversations", **params)
        assert [c["id"] for c in answer.json()["items"]] == expected, params
    expect_error(await get(ckit, alice, "/api/v1/conversations", status="open"), 422, "validation_error")

    thread = (await get(ckit, alice, f"/api/v1/conversations/{cid}")).json()
    [message] = thread["messages"]
    assert message["direction"] == "inbound" and message["has_html"] and "café" in message["text_body"]
    assert message["subtask_id"] == ckit.subtasks[0].id and message["read_at"] is None

    read = await post(ckit, alice, f"/api/v1/conversations/{cid}/read")
    assert read.status_code == 200 and read.json()["unread_count"] == 0
    assert (await get(ckit, alice, "/api/v1/conversations")).json()["unread_messages"] == 0
    assert (await get(ckit, alice, "/api/v1/conversations", unread="true")).json()["items"] == []
    unread = await post(ckit, alice, f"/api/v1/conversations/{cid}/unread")
    assert unread.json()["unread_count"] == 1

    closed = await ckit.ekit.client.patch(
        f"/api/v1/conversations/{cid}", headers=alice.headers, json={"status": "closed"}
    )
    assert closed.status_code == 200 and closed.json()["status"] == "closed"
    bad = await ckit.ekit.client.patch(f"/api/v1/conversations/{cid}", headers=alice.headers, json={"status": "gone"})
    expect_error(bad, 422, "validation_error")


async def test_pages_follow_the_newest_activity(ckit: ConversationKit) -> None:
    alice = await owner(ckit)
    ids = []
    for n in range(3):
        raw = ckit.mime(
            "unknown_address.eml",
            **{"nobody-here@unrelated.example.org": "news@fake-esp.example.com", "stranger@": f"p{n}@", "778": f"9{n}"},
        )
        ids.append((await ckit.receive(raw)).conversation_id)
    first = (await get(ckit, alice, "/api/v1/conversations", limit=2)).json()
    assert [c["id"] for c in first["items"]] == [ids[2], ids[1]] and first["next_cursor"]
    second = (await get(ckit, alice, "/api/v1/conversations", limit=2, cursor=first["next_cursor"])).json()
    assert [c["id"] for c in second["items"]] == [ids[0]] and second["next_cursor"] is None


async def test_another_user_never_sees_the_conversation(ckit: ConversationKit) -> None:
    stored = await ckit.receive(ckit.mime("with_attachment.eml"))
    cid, mid = stored.conversation_id, stored.message_id
    bob = await make_account(ckit.sessionmaker, "bob")
    base = f"/api/v1/conversations/{cid}"
    for path in (base, f"{base}/messages/{mid}/html", f"{base}/messages/{mid}/attachments/0"):
        expect_error(await get(ckit, bob, path), 404, "not_found")
    for path in (f"{base}/read", f"{base}/unread"):
        expect_error(await post(ckit, bob, path), 404, "not_found")
    patch = await ckit.ekit.client.patch(base, headers=bob.headers, json={"status": "archived"})
    expect_error(patch, 404, "not_found")
    listed = (await get(ckit, bob, "/api/v1/conversations")).json()
    assert listed["items"] == [] and listed["unread_messages"] == 0
    # Nor unrouted mail: admin routes refuse non-admins.
    expect_error(await get(ckit, bob, "/api/v1/admin/inbound"), 403, "forbidden")


async def test_a_read_only_caller_may_read_and_mark_read_but_not_change_status(ckit: ConversationKit) -> None:
    stored = await ckit.receive(ckit.mime("thunderbird_reply.eml"))
    reader = await owner(ckit, scope="read")
    cid = stored.conversation_id
    assert (await get(ckit, reader, f"/api/v1/conversations/{cid}")).status_code == 200
    assert (await post(ckit, reader, f"/api/v1/conversations/{cid}/read")).status_code == 200
    patch = await ckit.ekit.client.patch(
        f"/api/v1/conversations/{cid}", headers=reader.headers, json={"status": "closed"}
    )
    expect_error(patch, 403, "forbidden")


async def test_inbound_html_is_sanitized_and_framed_by_a_csp(ckit: ConversationKit) -> None:
    alice = await owner(ckit)
    stored = await ckit.receive(ckit.mime("script_remote_image.eml"))
    path = f"/api/v1/conversations/{stored.conversation_id}/messages/{stored.message_id}/html"

    shown = await get(ckit, alice, path)
    assert shown.status_code == 200 and shown.headers["content-type"].startswith("text/html")
    page = shown.text.lower()
    for forbidden in ("<script", "onerror", "onload", "<form", "<input", "<iframe", "javascript:", "<style", "url("):
        assert forbidden not in page, forbidden
    assert "hello there" in page and 'href="https://example.org/page"' in page
    assert 'src="data:image/gif' in page and 'data-edm-src="https://tracker.example.org/pixel.gif?u=42"' in page
    assert ' src="https://tracker' not in page
    csp = shown.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "sandbox" in csp and "https:" not in csp
    assert "img-src data: http://edm.test" in csp and "style-src 'unsafe-inline'" in csp
    assert shown.headers["x-content-type-options"] == "nosniff"

    loaded = await get(ckit, alice, path, images="load")
    assert 'src="https://tracker.example.org/pixel.gif?u=42"' in loaded.text
    assert "<script" not in loaded.text.lower()
    assert "https:" in loaded.headers["content-security-policy"]
    expect_error(await get(ckit, alice, path, images="yes"), 422, "validation_error")


async def test_attachments_download_from_the_stored_message(ckit: ConversationKit) -> None:
    alice = await owner(ckit)
    stored = await ckit.receive(ckit.mime("with_attachment.eml"))
    base = f"/api/v1/conversations/{stored.conversation_id}/messages/{stored.message_id}"
    thread = (await get(ckit, alice, f"/api/v1/conversations/{stored.conversation_id}")).json()
    assert [(a["index"], a["name"]) for a in thread["messages"][0]["attachments"]] == [
        (0, "logo.png"),
        (1, "order form.pdf"),
    ]
    html = (await get(ckit, alice, f"{base}/html")).text
    # The cid: image, embedded from the stored message (a sandboxed frame carries no session to fetch it with).
    logo_bytes = (await get(ckit, alice, f"{base}/attachments/0")).content
    assert f'src="data:image/png;base64,{base64.b64encode(logo_bytes).decode()}"' in html

    pdf = await get(ckit, alice, f"{base}/attachments/1")
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF-1.4")
    assert pdf.headers["content-type"] == "application/pdf"
    assert pdf.headers["content-disposition"].startswith("attachment;")
    assert "filename*=UTF-8''order%20form.pdf" in pdf.headers["content-disposition"]
    assert pdf.headers["x-content-type-options"] == "nosniff"
    logo = await get(ckit, alice, f"{base}/attachments/0")
    assert logo.content.startswith(b"\x89PNG")
    expect_error(await get(ckit, alice, f"{base}/attachments/2"), 404, "not_found")


async def test_admins_assign_and_discard_unrouted_mail(ckit: ConversationKit) -> None:
    admin = await make_account(ckit.sessionmaker, "root", role=Role.ADMIN)
    alice = await owner(ckit)
    first = await ckit.receive(ckit.mime("unknown_address.eml"))
    second = await ckit.receive(ckit.mime("unknown_address.eml", **{"proposal-778": "proposal-779"}))

    listed = (await get(ckit, admin, "/api/v1/admin/inbound")).json()
    assert [r["id"] for r in listed["items"]] == [second.unrouted_id, first.unrouted_id]
    assert listed["items"][0]["reason"] == "unknown_sender"
    expect_error(await post(ckit, alice, f"/api/v1/admin/inbound/{first.unrouted_id}/discard"), 403, "forbidden")

    assigned = await post(ckit, admin, f"/api/v1/admin/inbound/{first.unrouted_id}/assign", {"user_id": alice.id})
    assert assigned.status_code == 200, assigned.text
    answer = assigned.json()
    assert answer["status"] == "stored" and answer["unrouted"]["resolution"] == "assigned"
    thread = (await get(ckit, alice, f"/api/v1/conversations/{answer['conversation_id']}")).json()
    assert (
        thread["their_address"] == "stranger@example.org"
        and thread["our_address"] == "nobody-here@unrelated.example.org"
    )
    assert thread["messages"][0]["subject"] == "Business proposal"
    again = await post(ckit, admin, f"/api/v1/admin/inbound/{first.unrouted_id}/assign", {"user_id": alice.id})
    expect_error(again, 409, "conflict")
    missing_user = await post(ckit, admin, f"/api/v1/admin/inbound/{second.unrouted_id}/assign", {"user_id": 999999})
    expect_error(missing_user, 404, "not_found")

    discarded = await post(ckit, admin, f"/api/v1/admin/inbound/{second.unrouted_id}/discard")
    assert discarded.status_code == 200 and discarded.json()["resolution"] == "discarded"
    assert (await get(ckit, admin, "/api/v1/admin/inbound")).json()["items"] == []
    everything = (await get(ckit, admin, "/api/v1/admin/inbound", include_resolved="true")).json()
    assert len(everything["items"]) == 2
    async with ckit.sessionmaker() as session:
        row = await session.get(UnroutedInbound, second.unrouted_id)
        assert row is not None and row.blob_id is None
        assert await session.scalar(select(MailBlob.id).where(MailBlob.id == second.unrouted_id + 10**6)) is None
        actions = list(await session.scalars(select(AuditLog.action).order_by(AuditLog.id)))
    assert "inbound.assign" in actions and "inbound.discard" in actions
    expect_error(await post(ckit, admin, "/api/v1/admin/inbound/999999/discard"), 404, "not_found")
