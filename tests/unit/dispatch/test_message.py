"""The hand-written MIME must parse back, with the stdlib email package, to exactly what went in."""

from __future__ import annotations

import datetime as dt
import re
from email import policy
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

import pytest

from edm import clock
from edm.content.render import RenderedContent
from edm.dispatch.message import build_message
from edm.providers.base import OutboundMessage

KEY = "0d8c0a3e-1f7a-4a5b-9c1e-2b3c4d5e6f70"
UNSUB = "https://edm.example.com/u/AAAAbbbbCCCCddddEEEEffffGGGGhhhhIIIIjjjj"
MAILTO = "mailto:unsubscribe@edm.example.com?subject=unsubscribe-AAAAbbbbCCCCddddEEEEffffGGGGhhhhIIIIjjjj"
DATE = dt.datetime(2024, 5, 1, 12, 30, 5, tzinfo=dt.UTC)
HTML = (
    "<html><body><h1>Hello</h1>"
    "<p>Body with a link <a href='https://shop.example.com/x?a=1&amp;b=2'>x</a></p></body></html>"
)
TEXT = "Hello\n\nBody with a link x (https://shop.example.com/x?a=1&b=2)\n"


def _content(**kw: str) -> RenderedContent:
    values = {"subject": "Spring sale", "preheader": "", "html": HTML, "text": TEXT, **kw}
    return RenderedContent(**values)


def _build(**kw: Any) -> OutboundMessage:
    args: dict[str, Any] = {
        "key": KEY,
        "task_id": 12,
        "user_id": 7,
        "domain": "mail.example.com",
        "from_local": "news",
        "from_name": "Example Shop",
        "to_address": "ann@example.org",
        "to_name": "Ann Lee",
        "reply_to": "help@example.com",
        "content": _content(),
        "unsubscribe_url": UNSUB,
        "unsubscribe_mailto": MAILTO,
        "with_mime": True,
        "date": DATE,
    }
    args.update(kw)
    return build_message(**args)


def _parse(mime: bytes | None) -> EmailMessage:
    assert mime is not None
    msg = BytesParser(policy=policy.default).parsebytes(mime)
    assert isinstance(msg, EmailMessage)
    return msg


def _bodies(msg: EmailMessage) -> tuple[str, str]:
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]  # text first, then HTML
    plain, html = (str(p.get_content()).replace("\r\n", "\n") for p in parts)
    return plain, html


def _assert_wire_format(mime: bytes) -> None:
    assert b"\r\n\r\n" in mime
    assert not re.search(rb"(?<!\r)\n|\r(?!\n)", mime), "every line ends with CRLF"
    head = mime.split(b"\r\n\r\n", 1)[0]
    assert all(len(line) <= 998 for line in mime.split(b"\r\n"))
    for line in head.split(b"\r\n"):
        assert len(line) <= 78 or re.search(rb"<(https?://|mailto:)", line), line  # only an unbreakable URL
    assert mime.endswith(b"--\r\n")


# ---------------------------------------------------------------- every header, both bodies


def test_every_header_parses_back() -> None:
    out = _build()
    msg = _parse(out.mime)
    _assert_wire_format(out.mime or b"")
    assert msg.defects == []
    assert msg["From"].addresses[0].display_name == "Example Shop"
    assert msg["From"].addresses[0].addr_spec == "news@mail.example.com"
    assert msg["To"].addresses[0].display_name == "Ann Lee"
    assert msg["To"].addresses[0].addr_spec == "ann@example.org"
    assert msg["Reply-To"].addresses[0].addr_spec == "help@example.com"
    assert msg["Subject"] == "Spring sale"
    assert msg["Date"].datetime == DATE
    assert msg["Message-ID"] == f"<{KEY}@mail.example.com>"
    assert msg["MIME-Version"] == "1.0"
    assert msg["List-Unsubscribe"] == f"<{UNSUB}>, <{MAILTO}>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg["X-EDM-SubTask-Id"] == KEY
    assert msg["Feedback-ID"] == "12:7:edm"
    assert msg.get_content_type() == "multipart/alternative"
    assert _bodies(msg) == (TEXT, HTML)
    for part in msg.iter_parts():
        assert part.get_content_charset() == "utf-8"
        assert part.defects == []


def test_outbound_fields_for_http_adapters() -> None:
    out = _build()
    assert out.key == KEY
    assert out.from_address == "news@mail.example.com" and out.from_name == "Example Shop"
    assert out.envelope_from == "news@mail.example.com"
    assert out.to_address == "ann@example.org" and out.to_name == "Ann Lee"
    assert out.reply_to == "help@example.com"
    assert out.subject == "Spring sale" and out.html == HTML and out.text == TEXT
    assert out.custom_args == {"subtask_id": KEY, "task_id": "12"}
    assert out.headers == {
        "Message-ID": f"<{KEY}@mail.example.com>",
        "List-Unsubscribe": f"<{UNSUB}>, <{MAILTO}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        "X-EDM-SubTask-Id": KEY,
        "Feedback-ID": "12:7:edm",
    }


def test_without_mime_no_bytes_are_built() -> None:
    out = _build(with_mime=False)
    assert out.mime is None
    assert out.headers["Message-ID"] == f"<{KEY}@mail.example.com>"


def test_optional_parts() -> None:
    out = _build(reply_to=None, unsubscribe_mailto=None, to_name="", envelope_from="bounce+x@b.example.com")
    msg = _parse(out.mime)
    assert "Reply-To" not in msg and out.reply_to is None
    assert msg["List-Unsubscribe"] == f"<{UNSUB}>"
    assert msg["To"].addresses[0].display_name == ""
    assert msg["To"].addresses[0].addr_spec == "ann@example.org"
    assert out.envelope_from == "bounce+x@b.example.com"


def test_mailto_prefix_added_when_missing() -> None:
    out = _build(unsubscribe_mailto="u@edm.example.com?subject=unsubscribe-T")
    assert out.headers["List-Unsubscribe"] == f"<{UNSUB}>, <mailto:u@edm.example.com?subject=unsubscribe-T>"


def test_conversation_message_without_list_unsubscribe() -> None:
    out = _build(unsubscribe_url="", unsubscribe_mailto=None, extra_headers={"In-Reply-To": "<a@b>"})
    msg = _parse(out.mime)
    assert "List-Unsubscribe" not in msg and "List-Unsubscribe-Post" not in msg
    assert msg["In-Reply-To"] == "<a@b>"


def test_date_defaults_to_the_clock() -> None:
    clock.freeze(dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC))
    msg = _parse(_build(date=None).mime)
    assert msg["Date"].datetime == dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def test_extra_headers() -> None:
    out = _build(extra_headers={"X-Campaign": "Spring 春季 🎉", "References": "<a@b> <c@d>"})
    msg = _parse(out.mime)
    assert msg["X-Campaign"] == "Spring 春季 🎉"
    assert msg["References"] == "<a@b> <c@d>"
    assert out.headers["X-Campaign"] == "Spring 春季 🎉"


# ---------------------------------------------------------------- non-ASCII, long values


@pytest.mark.parametrize(
    "subject",
    [
        "春季大促销：全场五折起",
        "Hello 👋🏽 emoji family 👨‍👩‍👧‍👦 and flags 🇫🇷",
        "Ünïcödé façade — “quotes”",
        "A long ASCII subject " * 12 + "end",
        "长" * 300,
        "x" * 950 + " tail",  # one unbreakable run: must be encoded, not sent as a 960-char line
        "Looks like =?utf-8?q?an_encoded_word?= but is text",
        "  two  spaces  kept  inside ",
    ],
)
def test_subjects_round_trip(subject: str) -> None:
    out = _build(content=_content(subject=subject))
    msg = _parse(out.mime)
    _assert_wire_format(out.mime or b"")
    assert msg["Subject"] == subject.strip()
    assert out.subject == subject.strip()


def test_long_ascii_subject_is_folded_not_encoded() -> None:
    subject = "A long ASCII subject " * 12 + "end"
    mime = _build(content=_content(subject=subject)).mime or b""
    head = mime.split(b"\r\n\r\n", 1)[0].decode()
    subject_lines = head.split("Subject: ", 1)[1].split("\r\nDate:", 1)[0].split("\r\n")
    assert len(subject_lines) > 1 and "=?" not in head.split("Subject: ", 1)[1].split("Date:")[0]
    assert all(line.startswith(" ") for line in subject_lines[1:])


@pytest.mark.parametrize(
    ("from_name", "to_name"),
    [
        ("春季商店", "张三"),
        ("Ünïcode Shop", "Zoë 🎉"),
        ('Shop "The Best"', "O'Brien, Pat"),
        ("Back\\slash (x) <y>", "semi;colon@at"),
        ("=?utf-8?q?evil?=", "plain"),
    ],
)
def test_display_names_round_trip(from_name: str, to_name: str) -> None:
    msg = _parse(_build(from_name=from_name, to_name=to_name).mime)
    assert msg["From"].addresses[0].display_name == from_name
    assert msg["To"].addresses[0].display_name == to_name
    assert msg["To"].addresses[0].addr_spec == "ann@example.org"


def test_long_display_name_is_valid_rfc2047() -> None:
    name = "非常长的显示名称" * 6
    mime = _build(from_name=name).mime or b""
    _assert_wire_format(mime)
    raw = mime.split(b"\r\n\r\n", 1)[0].decode().split("From: ", 1)[1].split("\r\nTo:", 1)[0]
    words = re.findall(r"=\?utf-8\?b\?[^?]*\?=", raw)
    assert len(words) > 1 and all(len(w) <= 75 for w in words)
    # RFC 2047 §6.2: whitespace between adjacent encoded words is ignored. (CPython's address parser puts a
    # space there, for its own output too, so decode with the RFC 2047 decoder.)
    assert str(make_header(decode_header(" ".join(words)))) == name
    assert _parse(mime)["From"].addresses[0].addr_spec == "news@mail.example.com"


def test_idn_domain_becomes_punycode() -> None:
    out = _build(domain="bücher.example", to_address="kunde@bücher.example")
    msg = _parse(out.mime)
    assert msg["From"].addresses[0].addr_spec == "news@xn--bcher-kva.example"
    assert msg["To"].addresses[0].addr_spec == "kunde@xn--bcher-kva.example"
    assert msg["Message-ID"] == f"<{KEY}@xn--bcher-kva.example>"


def test_internationalized_local_part_is_raw_utf8() -> None:
    mime = _build(to_address="用户@example.com").mime or b""
    assert "<用户@example.com>".encode() in mime.split(b"\r\n\r\n", 1)[0]  # RFC 6532, needs SMTPUTF8


# ---------------------------------------------------------------- bodies


@pytest.mark.parametrize(
    ("text", "html"),
    [
        ("纯中文的文本内容。" * 50, "<p>" + "中文内容" * 200 + "</p>"),
        ("emoji 🎉🎉 " * 30, "<p>mixed ascii and 中文</p>"),
        ("a=b =3D =\n trailing spaces   \n\ttab\t\n", "<p style='x'>" + "y" * 500 + "</p>"),
        (".\n.leading dot\nFrom the start\n--not a boundary\n", "<pre>\n.\n</pre>"),
        ("windows\r\nline\rends\r\n", "<p>a</p>\r\n<p>b</p>"),
        ("", ""),
        ("no newline at end", "x"),
        ("\n\n\n", "<br>\n\n"),
    ],
)
def test_bodies_round_trip(text: str, html: str) -> None:
    out = _build(content=_content(text=text, html=html))
    _assert_wire_format(out.mime or b"")
    assert out.mime_crlf  # what the SMTP adapter then trusts instead of checking (smtp_payload)
    plain, got_html = _bodies(_parse(out.mime))

    def norm(value: str) -> str:
        return value.replace("\r\n", "\n").replace("\r", "\n")

    assert plain == norm(text)
    assert got_html == norm(html)


def test_mostly_non_ascii_body_uses_base64_and_ascii_uses_qp() -> None:
    msg = _parse(_build(content=_content(text="中文" * 100, html="<p>hello</p>")).mime)
    text_part, html_part = msg.iter_parts()
    assert text_part["Content-Transfer-Encoding"] == "base64"
    assert html_part["Content-Transfer-Encoding"] == "quoted-printable"


def test_boundary_text_in_body_cannot_split_the_message() -> None:
    hostile = f"\n--=_edm_{KEY}\nContent-Type: text/html\n\nowned\n--=_edm_{KEY}--\n"
    msg = _parse(_build(content=_content(text=hostile, html=hostile)).mime)
    assert len(list(msg.iter_parts())) == 2
    assert _bodies(msg) == (hostile, hostile)


def test_same_result_as_the_email_package() -> None:
    content = _content(subject="春季 sale 🎉", text="文本 text\n", html="<p>文本 html</p>\n")
    ours = _parse(_build(content=content, from_name="商店", to_name="Zoë").mime)

    ref = EmailMessage()
    ref["From"] = '"商店" <news@mail.example.com>'
    ref["To"] = '"Zoë" <ann@example.org>'
    ref["Subject"] = content.subject
    ref.set_content(content.text)
    ref.add_alternative(content.html, subtype="html")
    theirs = _parse(ref.as_bytes(policy=policy.SMTP))

    for name in ("From", "To", "Subject"):
        assert str(ours[name]) == str(theirs[name])
    assert _bodies(ours) == _bodies(theirs)


# ---------------------------------------------------------------- injection and validation


@pytest.mark.parametrize(
    "override",
    [
        {"to_address": "ann@example.org\r\nBcc: victim@example.com"},
        {"to_address": "ann@example.org\nBcc: victim@example.com"},
        {"to_address": "ann@exa mple.org"},
        {"to_address": "<ann@example.org>"},
        {"to_address": "not-an-address"},
        {"to_name": "Ann\r\nBcc: victim@example.com"},
        {"to_name": "Ann\nX: y"},
        {"from_name": "Shop\rX: y"},
        {"from_local": "news\r\nBcc: v@x.com"},
        {"from_local": "news@evil.com"},
        {"domain": "mail.example.com\r\nX: y"},
        {"domain": "mail.example.com>"},
        {"reply_to": "help@example.com\r\nBcc: v@x.com"},
        {"envelope_from": "b@x.com\nX: y"},
        {"unsubscribe_url": "https://u/x\r\nBcc: v@x.com"},
        {"unsubscribe_url": "https://u/x>, <https://evil"},
        {"unsubscribe_mailto": "mailto:u@x.com\nX: y"},
        {"extra_headers": {"X-Ok": "value\r\nBcc: v@x.com"}},
        {"extra_headers": {"X-Bad\r\nBcc": "v"}},
        {"extra_headers": {"Bad Name": "v"}},
        {"extra_headers": {"bcc": "v@x.com"}},
        {"extra_headers": {"subject": "override"}},
        {"key": "abc\r\nX: y"},
        {"key": "abc@def"},
        {"key": ""},
        {"task_id": "1\r\nX: y"},
    ],
)
def test_header_injection_refused(override: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        _build(**override)


def test_subject_line_breaks_are_removed_not_refused() -> None:
    out = _build(content=_content(subject="Hello\r\nBcc: victim@example.com\n"))
    msg = _parse(out.mime)
    assert out.subject == "Hello Bcc: victim@example.com"
    assert msg["Subject"] == "Hello Bcc: victim@example.com"
    assert "Bcc" not in msg.keys()
