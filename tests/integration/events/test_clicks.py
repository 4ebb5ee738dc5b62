"""Click tracking (docs/tracking.md): links rewritten at send, stored per task, a click redirects only to a
link of that SubTask's task; anything else is a 404 page, never a redirect."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import select

from edm import clock
from edm.models.tracking import TrackedLink
from edm.security.tokens import sign_token
from edm.tracking.links import LinkRewriter, link_id
from tests.integration.events.conftest import EventKit

HTML = (
    "<html><body><p>Hi {{ contact.first_name }}</p>"
    '<a href="https://shop.example.com/sale?a=1&amp;b={{ contact.email }}">Sale</a> '
    '<a href="mailto:help@example.com">Mail us</a> <a href="#top">Top</a> '
    '<a href="javascript:alert(1)">x</a> <a data-edm-notrack href="https://keep.example.com/">keep</a> '
    '<a href="{{ unsubscribe_url }}">Unsubscribe</a></body></html>'
)
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/120.0"


def click_path(ekit: EventKit, public_id: uuid.UUID, link: int) -> str:
    return f"/t/c/{sign_token('click', public_id, key=ekit.dkit.settings.signing_key, link_id=link)}"


async def links_of(ekit: EventKit, task_id: int) -> dict[int, str]:
    async with ekit.sessionmaker() as session:
        rows = await session.execute(select(TrackedLink.id, TrackedLink.url).where(TrackedLink.task_id == task_id))
        return {row.id: row.url for row in rows}


async def test_a_click_redirects_to_the_stored_link_and_is_counted(ekit: EventKit) -> None:
    task_id, subtasks = await ekit.send_task(2, html=HTML)
    links = await links_of(ekit, task_id)
    # One personalised sale link per recipient (entities decoded); mailto, #, javascript:, notrack and our
    # unsubscribe link are never tracked.
    assert sorted(links.values()) == sorted(
        f"https://shop.example.com/sale?a=1&b={s.recipient_email}" for s in subtasks
    )
    st = subtasks[0]
    mine = link_id(task_id, f"https://shop.example.com/sale?a=1&b={st.recipient_email}")
    head = await ekit.client.head(click_path(ekit, st.public_id, mine))
    assert head.status_code == 302 and await ekit.events() == [], "HEAD answers the redirect, records nothing"
    clock.shift(dt.timedelta(minutes=5))
    response = await ekit.client.get(click_path(ekit, st.public_id, mine), headers={"User-Agent": BROWSER})
    assert response.status_code == 302 and response.headers["location"] == links[mine]
    await ekit.apply()
    row = next(s for s in await ekit.dkit.subtasks(task_id) if s.id == st.id)
    assert (row.click_count, row.machine_click_count, row.delivery_state) == (1, 0, "delivered")
    assert [e.details.get("url") for e in await ekit.events()] == [links[mine]]


async def test_no_redirect_for_anything_but_a_link_of_the_subtasks_task(ekit: EventKit) -> None:
    task_id, subtasks = await ekit.send_task(2, html=HTML)
    st, other = subtasks
    links = await links_of(ekit, task_id)
    other_link = link_id(task_id, f"https://shop.example.com/sale?a=1&b={other.recipient_email}")
    own_link = link_id(task_id, f"https://shop.example.com/sale?a=1&b={st.recipient_email}")
    foreign_task_link = link_id(task_id + 1000, "https://evil.example.com/")
    token = click_path(ekit, st.public_id, own_link).removeprefix("/t/c/")
    paths = [
        click_path(ekit, st.public_id, foreign_task_link),  # a link id of no link of this task
        click_path(ekit, uuid.uuid4(), own_link),  # a SubTask that does not exist
        "/t/c/" + token[:-2] + ("AA" if token[-2:] != "AA" else "BB"),  # tampered
        f"/t/c/{sign_token('open', st.public_id, key=ekit.dkit.settings.signing_key)}",  # wrong purpose
        f"/t/c/{token}?url=https://evil.example.com/",  # a URL in the query string changes nothing…
    ]
    for path in paths[:4]:
        response = await ekit.client.get(path)
        assert response.status_code == 404 and "location" not in response.headers, path
    followed = await ekit.client.get(paths[4])
    assert followed.status_code == 302 and followed.headers["location"] == links[own_link]  # …it is ignored
    assert other_link in links  # the other recipient's link belongs to the same task: still its own token's


def test_rewriting_keeps_what_must_not_be_tracked_and_rewrites_the_text_part_too() -> None:
    rewriter = LinkRewriter(
        task_id=7,
        subtask_id=uuid.uuid4(),
        key=b"k" * 32,
        base_url="https://t.example.com",
        keep=lambda url: url.startswith("https://t.example.com/u/"),
    )
    html = rewriter(
        "html",
        "<a class=\"x\" href='https://a.example.com/?q=1&amp;r=2'>A</a>"
        '<a href="https://t.example.com/u/tok">unsub</a><a href="tel:+123">call</a>',
    )
    assert html.count("https://t.example.com/t/c/") == 1 and "https://t.example.com/u/tok" in html
    assert 'href="tel:+123"' in html
    text = rewriter("text", "See https://a.example.com/?q=1&r=2 now")
    assert "https://t.example.com/t/c/" in text and "a.example.com" not in text
    assert set(rewriter.links.values()) == {"https://a.example.com/?q=1&r=2"}


def test_the_text_part_leaves_notrack_links_and_trailing_punctuation_alone() -> None:
    rewriter = LinkRewriter(
        task_id=7, subtask_id=uuid.uuid4(), key=b"k" * 32, base_url="https://t.example.com", keep=lambda url: False
    )
    rewriter(
        "html",
        '<a data-edm-notrack href="https://keep.example.com/terms">Terms</a>'
        '<a href="https://shop.example.com/a">Shop</a>',
    )
    text = rewriter("text", "Terms (https://keep.example.com/terms). Shop: https://shop.example.com/a.")
    assert "(https://keep.example.com/terms)." in text, "a notrack link of the HTML stays as written"
    assert text.endswith(".") and not text.endswith("/a.")
    assert set(rewriter.links.values()) == {"https://shop.example.com/a"}, "the sentence's full stop is no part"
