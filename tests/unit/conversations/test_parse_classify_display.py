"""Parsing, classifying and sanitizing inbound mail (docs/conversations.md): pure functions over the MIME fixtures of
tests/fixtures/mime and hand-written variants."""

from __future__ import annotations

from pathlib import Path

import pytest

from edm.conversations import classify, display, mime
from edm.conversations.threading import key_of
from edm.errors import TooLarge

MIME = Path(__file__).parents[2] / "fixtures" / "mime"
OURS = "2f1d7c4e-8a8b-4f3e-9c1d-0a1b2c3d4e5f@news.example.com"


def fixture(name: str) -> bytes:
    text = (
        (MIME / name)
        .read_text(encoding="utf-8")
        .replace("%%MESSAGE_ID%%", OURS)
        .replace("%%OUR_ADDRESS%%", "news@news.example.com")
        .replace("%%THEIR_ADDRESS%%", "reader@example.net")
    )
    return text.replace("\n", "\r\n").encode()


def test_a_thunderbird_reply_parses_to_its_fields() -> None:
    parsed = mime.parse(fixture("thunderbird_reply.eml"))
    assert parsed.message_id == "8f3c2a1e-5d6b-4c2f-9a11-7e0f2b3c4d5e@example.net"
    assert (parsed.from_name, parsed.from_address) == ("Rita Reader", "reader@example.net")
    assert parsed.to_address == "news@news.example.com"  # Delivered-To
    assert parsed.in_reply_to == OURS and parsed.references == (OURS,)
    assert parsed.subject == "Re: Spring campaign" and parsed.date is not None
    assert parsed.text_body is not None and "> Our spring collection" in parsed.text_body
    assert parsed.html_body is not None and "<blockquote" in parsed.html_body
    assert parsed.attachments == ()


def test_the_envelope_recipient_wins_then_delivered_to_then_to() -> None:
    raw = fixture("thunderbird_reply.eml")
    assert mime.parse(raw, recipient="Alias <alias@news.example.com>").to_address == "alias@news.example.com"
    without = raw.replace(b"Delivered-To: news@news.example.com\r\n", b"")
    assert mime.parse(without).to_address == "news@news.example.com"


def test_thread_ids_are_in_reply_to_then_references_newest_first() -> None:
    parsed = mime.parse(fixture("outlook_references_only.eml"))
    assert parsed.in_reply_to is None
    assert parsed.thread_ids() == ["CAF=xyz+0123abc@mail.gmail.com", OURS]


def test_a_missing_message_id_is_synthesized_from_the_raw_bytes() -> None:
    raw = fixture("unknown_address.eml").replace(b"Message-ID: <proposal-778@example.org>\r\n", b"")
    first, second = mime.parse(raw), mime.parse(raw)
    assert first.message_id_synthesized and first.message_id == second.message_id
    assert first.message_id.startswith("sha256.") and first.message_id.endswith("@inbound.edm.invalid")
    assert mime.parse(raw + b"x").message_id != first.message_id


def test_size_and_body_limits() -> None:
    with pytest.raises(TooLarge) as refused:
        mime.parse(b"Subject: x\r\n\r\n" + b"a" * 2000, max_bytes=1000)
    assert refused.value.status == 413 and "1000-byte limit" in refused.value.message
    huge = b"Subject: x\r\nContent-Type: text/plain\r\n\r\n" + b"word " * (mime.TEXT_LIMIT // 2)
    assert len(mime.parse(huge).text_body or "") == mime.TEXT_LIMIT


def test_attachments_are_metadata_with_their_part_index() -> None:
    raw = fixture("with_attachment.eml")
    parsed = mime.parse(raw)
    logo, pdf = parsed.attachments
    assert (logo.name, logo.content_type, logo.content_id, logo.inline) == (
        "logo.png",
        "image/png",
        "logo-123@example.net",
        True,
    )
    assert (pdf.name, pdf.content_type, pdf.inline) == ("order form.pdf", "application/pdf", False)
    data, content_type, name = mime.attachment_part(raw, pdf.part)
    assert data.startswith(b"%PDF-1.4") and len(data) == pdf.size
    assert (content_type, name) == ("application/pdf", "order form.pdf")


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Re: Spring campaign", "Spring campaign"),
        ("RE: Fwd: re[2]: Spring campaign", "Spring campaign"),
        ("AW: WG: Angebot", "Angebot"),
        ("回复：春季活动", "春季活动"),
        ("Spring campaign", "Spring campaign"),
    ],
)
def test_reply_prefixes_leave_the_conversation_subject(subject: str, expected: str) -> None:
    assert mime.normalize_subject(subject) == expected


def test_reports_are_classified_for_the_bounce_path() -> None:
    dsn = fixture("dsn.eml")
    kind, report = classify.report_kind(dsn, mime.parse(dsn))
    assert kind is classify.Kind.BOUNCE and report is not None
    arf = fixture("arf_complaint.eml")
    assert classify.report_kind(arf, mime.parse(arf))[0] is classify.Kind.COMPLAINT
    reply = fixture("thunderbird_reply.eml")
    assert classify.report_kind(reply, mime.parse(reply)) == (None, None)


def test_a_person_writing_about_a_failed_delivery_is_no_bounce() -> None:
    raw = fixture("thunderbird_reply.eml").replace(b"Subject: Re: Spring campaign", b"Subject: Re: Delivery failed?")
    assert classify.report_kind(raw, mime.parse(raw)) == (None, None)


def test_a_free_text_bounce_from_a_mail_system_is_a_bounce() -> None:
    raw = (
        b"From: Mail Delivery Subsystem <mailer-daemon@mx.example.org>\r\nTo: news@news.example.com\r\n"
        b"Subject: Mail delivery failed: returning message to sender\r\nMessage-ID: <b1@mx.example.org>\r\n\r\n"
        b"This message was created automatically by mail delivery software.\r\n\r\n"
        b"  reader@example.net\r\n    host mx.example.net said: 550 5.1.1 No such user\r\n"
    )
    assert classify.report_kind(raw, mime.parse(raw))[0] is classify.Kind.BOUNCE


@pytest.mark.parametrize(
    "header",
    [
        b"Auto-Submitted: auto-replied",
        b"Auto-Submitted: auto-generated; owner-email=x@example.net",
        b"X-Autoreply: yes",
        b"X-Autorespond: vacation",
        b"Precedence: auto_reply",
        b"Precedence: bulk",
        b"Precedence: junk",
    ],
)
def test_automatic_reply_headers(header: bytes) -> None:
    raw = fixture("thunderbird_reply.eml").replace(b"User-Agent: Mozilla Thunderbird", header)
    assert classify.is_auto_reply(mime.parse(raw))


@pytest.mark.parametrize(
    "subject",
    [
        "Out of Office: Spring campaign",
        "Automatic reply: Spring campaign",
        "Auto: Spring campaign",
        "自动回复: Spring campaign",
        "外出: 春季活动",
        "=?UTF-8?B?6Ieq5Yqo5Zue5aSNOiBTcHJpbmcgY2FtcGFpZ24=?=",
    ],
)
def test_out_of_office_subjects(subject: str) -> None:
    raw = fixture("thunderbird_reply.eml").replace(b"Subject: Re: Spring campaign", f"Subject: {subject}".encode())
    assert classify.is_auto_reply(mime.parse(raw))


def test_a_person_is_not_an_auto_reply() -> None:
    assert not classify.is_auto_reply(mime.parse(fixture("thunderbird_reply.eml")))
    raw = fixture("thunderbird_reply.eml").replace(b"User-Agent: Mozilla Thunderbird", b"Auto-Submitted: no")
    assert not classify.is_auto_reply(mime.parse(raw))
    assert classify.is_auto_reply(mime.parse(fixture("out_of_office.eml")))


def test_only_our_message_id_form_names_a_subtask() -> None:
    key = key_of(OURS)
    assert key is not None and key[1] == "news.example.com"
    assert key_of("<2F1D7C4E-8A8B-4F3E-9C1D-0A1B2C3D4E5F@NEWS.example.com>") == key
    assert key_of("CAF=xyz@mail.gmail.com") is None and key_of("no-at-sign") is None


def test_the_sanitizer_strips_script_handlers_forms_frames_and_remote_images() -> None:
    html = fixture("script_remote_image.eml").decode().split("\r\n\r\n", 1)[1]
    clean = display.sanitize(html)
    lowered = clean.lower()
    for forbidden in ("<script", "onerror", "onload", "<form", "<input", "<iframe", "javascript:", "<style", "url("):
        assert forbidden not in lowered, forbidden
    assert f'src="{display.PLACEHOLDER}" data-edm-src="https://tracker.example.org/pixel.gif?u=42"' in clean
    assert '<p style="color:red">' in clean
    assert 'rel="noopener noreferrer nofollow"' in clean and 'target="_blank"' in clean
    loaded = display.sanitize(html, load_remote_images=True)
    assert 'src="https://tracker.example.org/pixel.gif?u=42"' in loaded and "onerror" not in loaded


@pytest.mark.parametrize(
    "attack",
    [
        '<img src="x" onerror="alert(1)">',
        '<a href="javascript:alert(1)">x</a>',
        '<a href="data:text/html,<script>alert(1)</script>">x</a>',
        '<img src="data:image/svg+xml;base64,PHN2Zz48c2NyaXB0PmFsZXJ0KDEpPC9zY3JpcHQ+PC9zdmc+">',
        "<svg onload=alert(1)>",
        '<object data="x.swf"></object><embed src="x.swf">',
        '<meta http-equiv="refresh" content="0;url=https://evil.example.org">',
        '<base href="https://evil.example.org/">',
        '<link rel="stylesheet" href="https://evil.example.org/x.css">',
        '<div style="background-image:url(https://evil.example.org/x.png)">x</div>',
        '<div style="background:url(https://evil.example.org/x.png)">x</div>',
        '<table background="https://evil.example.org/x.png"><tr><td>x</td></tr></table>',
        "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
    ],
)
def test_the_sanitizer_leaves_nothing_that_runs_or_loads(attack: str) -> None:
    clean = display.sanitize(attack).lower()
    for marker in ("alert(", "javascript:", "evil.example.org", "<script", "onerror", "onload", "svg+xml", ".swf"):
        assert marker not in clean, (attack, clean)


def test_cid_images_point_at_the_served_part_and_unknown_ones_at_the_placeholder() -> None:
    html = '<img src="cid:logo-123@example.net"><img src="cid:missing@x">'
    clean = display.sanitize(html, cid_url={"LOGO-123@example.net": "https://edm.example.com/a/0"})
    assert '<img src="https://edm.example.com/a/0">' in clean
    assert f'<img src="{display.PLACEHOLDER}">' in clean


def test_the_csp_sandboxes_and_allows_remote_images_only_when_loaded() -> None:
    csp = display.content_security_policy(own_origin="https://edm.example.com")
    assert csp.startswith("default-src 'none'; img-src data: https://edm.example.com;")
    assert "style-src 'unsafe-inline'" in csp and "sandbox" in csp and "script-src" not in csp
    loaded = display.content_security_policy(own_origin="https://edm.example.com", remote_images=True)
    assert "img-src data: https://edm.example.com https: http:" in loaded
