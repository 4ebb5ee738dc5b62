"""The public tracking endpoints under attack (docs/tracking.md, docs/security.md#links): every byte of a token flipped,
a token of one purpose used for another, a click token of task A with a link of task B, script and data URLs
in templates. No redirect anywhere but to a stored link of the SubTask's own task; nothing recorded."""

from __future__ import annotations

import base64
import uuid

from sqlalchemy import select

from edm.db.session import unit_of_work
from edm.models.tracking import TrackedLink
from edm.security.tokens import sign_token
from edm.tracking.links import link_id
from tests import factories
from tests.helpers import api_client
from tests.integration.events.conftest import EventKit

HTML = (
    '<html><body><p>Hi</p><a href="https://shop.example.com/a">A</a>'
    '<a href="javascript:alert(document.cookie)">js</a> <a href="JaVaScRiPt:alert(1)">js2</a>'
    '<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">data</a>'
    '<a href=" vbscript:msgbox(1)">vb</a><a href="//evil.example.com/">scheme-relative</a>'
    '<a href="{{ unsubscribe_url }}">Unsubscribe</a></body></html>'
)


def flipped_variants(token: str) -> list[str]:
    """The token with each of its bytes in turn XOR-ed with 0x01 (and re-encoded canonically)."""
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    out = []
    for i in range(len(raw)):
        changed = raw[:i] + bytes([raw[i] ^ 0x01]) + raw[i + 1 :]
        out.append(base64.urlsafe_b64encode(changed).rstrip(b"=").decode("ascii"))
    return out


async def test_every_flipped_byte_is_refused_by_every_endpoint(ekit: EventKit) -> None:
    task_id, [st] = await ekit.send_task(1, html=HTML)
    key = ekit.dkit.settings.signing_key
    [link] = (await _links(ekit, task_id)).keys()
    click = sign_token("click", st.public_id, key=key, link_id=link)
    opened = sign_token("open", st.public_id, key=key)
    unsubscribe = sign_token("unsubscribe", st.public_id, key=key)
    assert (await ekit.client.get(f"/t/c/{click}")).status_code == 302, "the untouched token works"

    for bad in flipped_variants(click):
        answer = await ekit.client.get(f"/t/c/{bad}")
        assert answer.status_code == 404 and "location" not in answer.headers, bad
    for bad in flipped_variants(opened):
        answer = await ekit.client.get(f"/t/o/{bad}.gif")
        assert answer.status_code == 200 and answer.headers["content-type"] == "image/gif" and len(answer.content) == 43
    for bad in flipped_variants(unsubscribe):
        assert (await ekit.client.get(f"/u/{bad}")).status_code == 404
        posted = await ekit.client.post(
            f"/u/{bad}",
            content=b"List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert posted.status_code == 404

    # Each purpose's token at each other endpoint.
    for token in (opened, unsubscribe):
        assert (await ekit.client.get(f"/t/c/{token}")).status_code == 404
    for token in (click, opened):
        assert (await ekit.client.post(f"/u/{token}")).status_code == 404
    events = await ekit.events()
    assert [(e.event_type, e.details.get("link_id")) for e in events] == [("clicked", link)], (
        "only the one good click was recorded"
    )


async def test_script_data_and_scheme_relative_urls_are_never_tracked_nor_redirected_to(ekit: EventKit) -> None:
    task_id, [st] = await ekit.send_task(1, html=HTML)
    links = await _links(ekit, task_id)
    assert list(links.values()) == ["https://shop.example.com/a"], "only the http(s) link is a TrackedLink"
    key = ekit.dkit.settings.signing_key
    for url in (
        "javascript:alert(document.cookie)",
        "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
        "//evil.example.com/",
    ):
        forged = sign_token("click", st.public_id, key=key, link_id=link_id(task_id, url))
        answer = await ekit.client.get(f"/t/c/{forged}")
        assert answer.status_code == 404 and "location" not in answer.headers, url


async def test_a_click_token_of_task_a_with_a_link_of_task_b_is_refused(ekit: EventKit) -> None:
    task_a, [st_a] = await ekit.send_task(1, html=HTML)
    async with unit_of_work(ekit.sessionmaker) as session:
        template = await factories.template(
            session,
            ekit.user_id,
            name="b",
            html='<html><body><a href="https://b.example.com/only-b">B</a></body></html>',
        )
        sender = await factories.sender(session, ekit.user_id, local="b")
        await factories.contacts(session, ekit.user_id, 1, prefix="other")
        task_b = await factories.task(
            session, ekit.user_id, sender_id=sender, template_ids=[template], rule={"type": "all_contacts"}, name="b"
        )
    async with ekit.dkit.worker():
        await ekit.dkit.wait_for(lambda: _completed(ekit, task_b), timeout=30, what="task b sent")
    [link_b] = (await _links(ekit, task_b)).keys()
    forged = sign_token("click", st_a.public_id, key=ekit.dkit.settings.signing_key, link_id=link_b)
    answer = await ekit.client.get(f"/t/c/{forged}")
    assert answer.status_code == 404 and "location" not in answer.headers
    assert task_a != task_b


async def test_an_unsubscribe_before_the_claim_stops_that_mail(ekit: EventKit) -> None:
    async with unit_of_work(ekit.sessionmaker) as session:
        ekit.user_id = await factories.user(session, "zed", credit=100)
        sender = await factories.sender(session, ekit.user_id)
        template = await factories.template(session, ekit.user_id)
        await factories.contacts(session, ekit.user_id, 2, prefix="early")
        await factories.service(session, ekit.dkit.settings, "fake-x", map_to=[ekit.user_id])
        task_id = await factories.task(
            session, ekit.user_id, sender_id=sender, template_ids=[template], rule={"type": "all_contacts"}
        )
    await ekit.dkit.generate(task_id)
    leaving, staying = await ekit.dkit.subtasks(task_id)
    token = sign_token("unsubscribe", leaving.public_id, key=ekit.dkit.settings.signing_key)
    answer = await ekit.client.post(
        f"/u/{token}",
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert answer.status_code == 200
    async with ekit.dkit.worker():
        await ekit.dkit.wait_for(lambda: _completed(ekit, task_id), timeout=30, what="task done")
    states = {s.id: (s.send_state, s.suppressed_reason) for s in await ekit.dkit.subtasks(task_id)}
    assert states[staying.id] == ("sent", None)
    assert states[leaving.id][0] == "suppressed" and states[leaving.id][1] is not None
    await ekit.dkit.stats(task_id)


async def _links(ekit: EventKit, task_id: int) -> dict[int, str]:
    async with ekit.sessionmaker() as session:
        rows = await session.execute(select(TrackedLink.id, TrackedLink.url).where(TrackedLink.task_id == task_id))
        return {row.id: row.url for row in rows}


async def _completed(ekit: EventKit, task_id: int) -> bool:
    return await ekit.task_status(task_id) == "completed"


def test_flipped_variants_change_exactly_one_byte() -> None:
    token = sign_token("open", uuid.uuid4(), key=b"k" * 32)
    variants = flipped_variants(token)
    assert len(variants) == 30 and len(set(variants)) == 30 and token not in variants


async def test_tokens_signed_under_the_previous_key_keep_working_during_rotation(ekit: EventKit) -> None:
    task_id, [st] = await ekit.send_task(1, html=HTML)
    [link] = (await _links(ekit, task_id)).keys()
    old_key = ekit.dkit.settings.signing_key
    old_click = sign_token("click", st.public_id, key=old_key, link_id=link)
    stranger = sign_token("click", st.public_id, key=b"s" * 40, link_id=link)
    async with api_client(
        ekit.dkit.db_url, ekit.engine, secret_key="n" * 40, secret_key_previous=old_key.decode()
    ) as rotated:
        assert (await rotated.get(f"/t/c/{old_click}")).status_code == 302
        assert (await rotated.get(f"/u/{sign_token('unsubscribe', st.public_id, key=old_key)}")).status_code == 200
        assert (await rotated.get(f"/t/c/{stranger}")).status_code == 404
    async with api_client(ekit.dkit.db_url, ekit.engine, secret_key="n" * 40) as after_rotation:
        assert (await after_rotation.get(f"/t/c/{old_click}")).status_code == 404
