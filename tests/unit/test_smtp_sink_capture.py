"""The SMTP sink's capture reads our X-EDM-SubTask-Id header with a scan of the header block instead of the email
package's parser: it must read what the parser reads."""

from __future__ import annotations

from email.parser import BytesHeaderParser
from email.policy import default

import pytest

from edm.devtools.smtp_sink import CapturedMessage, _subtask_id

BODY = b"\r\n\r\nHello\r\nX-EDM-SubTask-Id: in-the-body\r\n"
MESSAGES = [
    b"From: a@example.com\r\nX-EDM-SubTask-Id: 0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b\r\nSubject: Hi" + BODY,
    b"Subject: Hi\r\nx-edm-subtask-id:st_1" + BODY,
    b"Subject: Hi\r\nX-EDM-SubTask-Id: folded-\r\n part" + BODY,
    b"Subject: Hi\r\nX-EDM-SubTask-Idx: not-ours" + BODY,
    b"Subject: only the body has it" + BODY,
    b"X-EDM-SubTask-Id: no-body-at-all\r\n",
]


@pytest.mark.parametrize("raw", MESSAGES)
def test_the_scan_reads_the_header_as_the_email_parser_does(raw: bytes) -> None:
    value = BytesHeaderParser(policy=default).parsebytes(raw).get("X-EDM-SubTask-Id")
    assert _subtask_id(raw) == (str(value) if value is not None else None)


def test_the_subject_is_decoded_when_asked() -> None:
    raw = b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=" + BODY
    message = CapturedMessage("a@example.com", ("b@example.org",), raw, 0.0, _subtask_id(raw))
    assert message.subject == "Grüße" and message.subtask_id is None
