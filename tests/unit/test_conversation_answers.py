"""The pure parts of answering (docs/conversations-answers.md): the subject, the threading headers, the HTML part of a
text answer, and the service choice with its From warning."""

from __future__ import annotations

import email
import email.policy

import pytest

from edm.content.render import RenderedContent
from edm.conversations.answers import Route, _choose, _Usable, references_for, reply_subject
from edm.dispatch.compose import text_as_html
from edm.dispatch.message import build_message
from edm.models.conversations import ConversationMessage
from edm.models.email_services import EmailService


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Question", "Re: Question"),
        ("Re: Question", "Re: Question"),
        ("RE: re:Re : Question", "Re: Question"),
        ("Fwd: Re: AW: SV: Antw: Question", "Re: Question"),
        ("Re[2]: Question", "Re: Question"),
        ("Re:\r\n Question\nsplit", "Re: Question split"),
        ("Regarding: the order", "Re: Regarding: the order"),
        ("", "Re:"),
    ],
)
def test_the_subject_is_re_and_the_cleaned_subject(subject: str, expected: str) -> None:
    assert reply_subject(subject) == expected


def _message(message_id: str, references: str | None = None) -> ConversationMessage:
    return ConversationMessage(message_id=message_id, references=references)


def test_in_reply_to_is_the_parents_id_and_references_keep_the_first_and_the_last_ten() -> None:
    assert references_for(None) == (None, None)
    assert references_for(_message("a@x")) == ("a@x", "a@x")
    assert references_for(_message("<c@x>", "<a@x> <b@x>")) == ("c@x", "a@x b@x c@x")
    chain = [f"m{i}@x" for i in range(15)]
    in_reply_to, references = references_for(_message("last@x", " ".join(f"<{m}>" for m in chain)))
    assert in_reply_to == "last@x"
    assert references is not None and references.split() == ["m0@x", *chain[-9:], "last@x"]


def test_ids_that_cannot_go_into_a_header_are_dropped() -> None:
    _, references = references_for(_message("ok@x", "<bad id@x> <no-at-sign> <é@x> <fine@x>"))
    assert references == "fine@x ok@x"
    assert references_for(_message("broken id without at")) == (None, None)


def test_a_text_answer_gets_an_escaped_html_part_with_its_line_breaks() -> None:
    html = text_as_html("Hello <Zoë>,\r\nline two\n\nNew & last")
    assert "<p>Hello &lt;Zoë&gt;,<br>\nline two</p>" in html and "<p>New &amp; last</p>" in html


def test_an_answer_message_has_threading_headers_and_no_list_unsubscribe() -> None:
    message = build_message(
        key="5f0c",
        task_id=1,
        user_id=2,
        domain="mail.example.com",
        from_local="support",
        from_name="Ann's Shop",
        to_address="zoe@example.net",
        to_name="Zoë",
        reply_to=None,
        content=RenderedContent(subject="Re: Question", preheader="", html="<p>Hi</p>", text="Hi"),
        unsubscribe_url="",
        extra_headers={"In-Reply-To": "<a@x>", "References": " ".join(f"<m{i}@example.org>" for i in range(11))},
        with_mime=True,
    )
    assert message.mime is not None
    parsed = email.message_from_bytes(message.mime, policy=email.policy.default)
    assert parsed["Message-ID"] == "<5f0c@mail.example.com>" and parsed["In-Reply-To"] == "<a@x>"
    assert parsed["References"].split() == [f"<m{i}@example.org>" for i in range(11)]
    assert parsed["List-Unsubscribe"] is None and parsed["List-Unsubscribe-Post"] is None


def _service(id_: int, domain: str, priority: int = 50) -> EmailService:
    return EmailService(id=id_, domain=domain, label=f"Channel {id_}", priority=priority)


def _route(services: list[EmailService], last: int | None, exclude: frozenset[int] = frozenset()) -> Route:
    return _choose(_Usable(services, False), our_address="support@home.example", last_service_id=last, exclude=exclude)


def test_the_last_service_then_its_domain_then_any_service_with_a_warning() -> None:
    home1, home2, away = _service(1, "home.example"), _service(2, "HOME.example"), _service(3, "away.example")
    route = _route([home1, home2, away], last=2)
    assert (route.tier, route.service_id, route.allowed_service_ids, route.same_domain) == (
        "last_service",
        2,
        [2],
        True,
    )
    assert route.warning is None
    route = _route([home1, home2, away], last=9)  # the last service is not usable any more
    assert (route.tier, route.service_id, route.allowed_service_ids) == ("same_domain", 1, [1, 2])
    route = _route([away], last=1)
    assert (route.tier, route.service_id, route.allowed_service_ids, route.same_domain) == (
        "other_domain",
        3,
        None,
        False,
    )
    assert route.warning is not None and "away.example" in route.warning and "changes domain" in route.warning
    assert route.view("support")["from_address"] == "support@away.example"
    route = _route([], last=1)
    assert (route.tier, route.service_id, route.allowed_service_ids) == ("none", None, None)
    assert route.warning is not None and "waits" in route.warning


def test_a_retry_passes_over_the_services_it_failed_on_while_another_is_usable() -> None:
    home1, home2, away = _service(1, "home.example"), _service(2, "home.example"), _service(3, "away.example")
    assert _route([home1, home2, away], last=1, exclude=frozenset({1})).allowed_service_ids == [2]
    other = _route([home1, away], last=1, exclude=frozenset({1}))
    assert (other.tier, other.allowed_service_ids) == ("other_domain", [3])
    alone = _route([home1], last=1, exclude=frozenset({1}))
    assert (alone.tier, alone.allowed_service_ids) == ("last_service", [1]), "nothing else: the same service again"
