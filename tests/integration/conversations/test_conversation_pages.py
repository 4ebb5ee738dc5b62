"""The console's conversation pages over the ASGI app (docs/console.md#conversations): the inbox with its unread badge,
a thread that opening marks read, inbound HTML only in a sandboxed frame served with its own CSP, attachments, the
answer box (an answer queued, shown with its send state), status changes and "mark as unread"; the contact page's
conversations and "start a conversation" with inline errors; another user's 404s; the admins' unrouted mail."""

from __future__ import annotations

import re

import httpx
from sqlalchemy import select

from edm.db.session import unit_of_work
from edm.models.conversations import ConversationMessage
from edm.models.system import AuditLog
from edm.models.users import Role
from tests import factories
from tests.helpers import field_error, make_account, page_field
from tests.integration.conversations.conftest import ConversationKit

FACTORY_PASSWORD = "long enough pw"  # tests/factories.user's


async def log_in(client: httpx.AsyncClient, username: str, password: str = FACTORY_PASSWORD) -> str:
    """A console session for `username`; the CSRF token of its pages."""
    client.cookies.clear()
    form = (await client.get("/login")).text
    data = {"csrf_token": page_field(form, "csrf_token"), "username": username, "password": password, "next": "/"}
    assert (await client.post("/login", data=data)).status_code == 303
    return page_field((await client.get("/account")).text, "csrf_token")


def menu_badge(page: str) -> str | None:
    found = re.search(r'href="/conversations"[^>]*>Conversations <span class="badge">(\d+)', page)
    return found.group(1) if found else None


async def test_the_owner_reads_a_thread_answers_and_changes_its_status(ckit: ConversationKit) -> None:
    client = ckit.ekit.client
    reply = await ckit.receive(ckit.mime("thunderbird_reply.eml"))
    framed = await ckit.receive(ckit.mime("script_remote_image.eml", index=1))
    csrf = await log_in(client, "alice")

    inbox = await client.get("/conversations")
    assert inbox.status_code == 200 and menu_badge(inbox.text) == "2"
    assert f'href="/conversations/{reply.conversation_id}"' in inbox.text and "1 unread" in inbox.text

    thread = await client.get(f"/conversations/{reply.conversation_id}")
    assert thread.status_code == 200
    assert menu_badge(thread.text) == "1", "opening the thread read it"
    assert f'action="/conversations/{reply.conversation_id}/reply"' in thread.text
    assert re.search(r'<p class="hint" id="answer-from">From news@', thread.text), "the answer's From address is shown"

    html = await client.get(f"/conversations/{framed.conversation_id}")
    src = f"/conversations/{framed.conversation_id}/messages/{framed.message_id}/html"
    assert f'<iframe src="{src}" sandbox="allow-popups allow-popups-to-escape-sandbox"' in html.text
    assert "<script" not in html.text.split('<main id="main"', 1)[1].split("</main>", 1)[0]
    assert f"?images={framed.message_id}#m-{framed.message_id}" in html.text
    asked = {"images": str(framed.message_id)}
    loaded_page = await client.get(f"/conversations/{framed.conversation_id}", params=asked)
    assert f'<iframe src="{src}?images=load"' in loaded_page.text
    frame = await client.get(src)
    assert frame.status_code == 200 and "<script" not in frame.text.lower()
    assert "default-src 'none'" in frame.headers["content-security-policy"]
    assert "https:" not in frame.headers["content-security-policy"]
    assert frame.headers["x-frame-options"] == "SAMEORIGIN"
    assert "https:" in (await client.get(src, params={"images": "load"})).headers["content-security-policy"]

    empty = await client.post(f"/conversations/{reply.conversation_id}/reply", data={"csrf_token": csrf, "text": "  "})
    assert empty.status_code == 422 and field_error(empty.text, "text") == "Write the answer."
    sent = await client.post(
        f"/conversations/{reply.conversation_id}/reply", data={"csrf_token": csrf, "text": "Thanks, we will look."}
    )
    assert sent.status_code == 303 and "notice=queued" in sent.headers["location"]
    async with ckit.sessionmaker() as session:
        outbound = await session.scalar(
            select(ConversationMessage).where(
                ConversationMessage.conversation_id == reply.conversation_id,
                ConversationMessage.direction == "outbound",
            )
        )
    assert outbound is not None and outbound.text_body == "Thanks, we will look."
    after = await client.get(sent.headers["location"])
    assert f'id="m-{outbound.id}"' in after.text and "Your answer is queued" in after.text

    closed = await client.post(
        f"/conversations/{reply.conversation_id}/status", data={"csrf_token": csrf, "status": "closed"}
    )
    assert closed.status_code == 303
    shown = await client.get(f"/conversations/{reply.conversation_id}")
    assert '<dd id="conversation-status">Closed</dd>' in shown.text
    assert (await client.get("/conversations", params={"status": "closed"})).text.count('<tr id="c-') == 1
    bad = await client.post(f"/conversations/{reply.conversation_id}/status", data={"csrf_token": csrf, "status": "x"})
    assert bad.status_code == 422

    unread = await client.post(f"/conversations/{reply.conversation_id}/unread", data={"csrf_token": csrf})
    assert unread.status_code == 303 and unread.headers["location"] == "/conversations"
    # The framed conversation was read by opening it above: only this one is unread again.
    assert menu_badge((await client.get("/conversations")).text) == "1"


async def test_a_contact_page_lists_its_conversations_and_starts_one(ckit: ConversationKit) -> None:
    client = ckit.ekit.client
    reply = await ckit.receive(ckit.mime("thunderbird_reply.eml"))
    csrf = await log_in(client, "alice")
    contact_id = (await ckit.conversations())[0].contact_id
    assert contact_id is not None and reply.conversation_id is not None
    contact = await client.get(f"/contacts/{contact_id}")
    assert f'href="/conversations/{reply.conversation_id}"' in contact.text
    assert f'href="/conversations/new?contact_id={contact_id}"' in contact.text

    form = await client.get("/conversations/new", params={"contact_id": contact_id})
    assert form.status_code == 200 and f'name="contact_id" value="{contact_id}"' in form.text
    sender_id = re.findall(r'<option value="(\d+)"', form.text)[0]
    missing = await client.post(
        "/conversations/new",
        data={"csrf_token": csrf, "contact_id": str(contact_id), "sender_id": sender_id, "subject": "", "text": "Hi"},
    )
    assert missing.status_code == 422 and field_error(missing.text, "subject")
    started = await client.post(
        "/conversations/new",
        data={
            "csrf_token": csrf,
            "contact_id": str(contact_id),
            "sender_id": sender_id,
            "subject": "A question for you",
            "text": "Would you tell us more?",
        },
    )
    assert started.status_code == 303 and "notice=started" in started.headers["location"]
    page = await client.get(started.headers["location"])
    assert "Would you tell us more?" in page.text and "The conversation was started" in page.text


async def test_another_user_gets_404_and_admins_handle_unrouted_mail(ckit: ConversationKit) -> None:
    client = ckit.ekit.client
    reply = await ckit.receive(ckit.mime("thunderbird_reply.eml"))
    unrouted = await ckit.receive(ckit.mime("unknown_address.eml"))
    async with unit_of_work(ckit.sessionmaker) as session:
        await factories.user(session, "mallory")
    await make_account(ckit.sessionmaker, "root", role=Role.ADMIN)

    csrf = await log_in(client, "mallory")
    base = f"/conversations/{reply.conversation_id}"
    for path in (base, f"{base}/messages/{reply.message_id}/html", f"{base}/messages/{reply.message_id}/attachments/0"):
        assert (await client.get(path)).status_code == 404, path
    assert (await client.post(f"{base}/reply", data={"csrf_token": csrf, "text": "hi"})).status_code == 404
    assert f'href="{base}"' not in (await client.get("/conversations")).text
    assert (await client.get("/admin/inbound")).status_code == 404
    assert (await client.get(f"/admin/inbound/{unrouted.unrouted_id}")).status_code == 404

    csrf = await log_in(client, "root", password="correct horse battery")
    listed = await client.get("/admin/inbound")
    assert listed.status_code == 200 and f'href="/admin/inbound/{unrouted.unrouted_id}"' in listed.text
    assert "No sender has this address" in listed.text
    detail = await client.get(f"/admin/inbound/{unrouted.unrouted_id}")
    assert detail.status_code == 200 and "stranger@example.org" in detail.text
    nobody = await client.post(
        f"/admin/inbound/{unrouted.unrouted_id}/assign", data={"csrf_token": csrf, "user_id": ""}
    )
    assert nobody.status_code == 422 and field_error(nobody.text, "user_id") == "Choose a user."
    given = await client.post(
        f"/admin/inbound/{unrouted.unrouted_id}/assign", data={"csrf_token": csrf, "user_id": str(ckit.user_id)}
    )
    assert given.status_code == 303 and "notice=assigned" in given.headers["location"]
    assert f'href="/admin/inbound/{unrouted.unrouted_id}"' not in (await client.get("/admin/inbound")).text
    async with ckit.sessionmaker() as session:
        actions = list(await session.scalars(select(AuditLog.action).where(AuditLog.action.like("inbound.%"))))
    assert actions == ["inbound.assign"]
