"""What an inbound message is (docs/conversations.md#classification): a bounce report, a complaint report, an
automatic reply, or a person's mail. Pure: no database.

Reports go to the bounce path (`edm.events.bounce_reports`), never into a conversation:

    multipart/report; report-type=delivery-status     -> bounce (RFC 3464)
    multipart/report; report-type=feedback-report     -> complaint (ARF, RFC 5965; a non-abuse feedback type is
                                                         stored as the report it is, and is no complaint)
    a free-text bounce with a status code             -> bounce (Exim, qmail, Exchange…: providers.dsn reads it)
    a bounce-like mail from a mail system             -> bounce (MAILER-DAEMON / postmaster sender, or an empty
                                                         Return-Path); a bounce-like *subject* alone is not enough:
                                                         a person may write "Re: Delivery failed for order 12"

An automatic reply is stored (flagged `is_auto_reply`) but never counts as a reply: `Auto-Submitted` other than
`no` (RFC 3834), `X-Autoreply`, `X-Autorespond`, `Precedence: auto_reply | bulk | junk`, `X-Auto-Response-Suppress`
set by Exchange's own auto-replies (OOF/AutoReply), read receipts (other multipart/report types), or an
out-of-office subject (English, Chinese and a few other languages).
"""

from __future__ import annotations

import enum
import re

from edm.conversations.mime import ParsedMail, header
from edm.providers.dsn import parse_report
from edm.providers.webhook import ParsedPayload
from edm.vocabulary.events import NormalizedEvent


class Kind(enum.StrEnum):
    BOUNCE = "bounce_report"
    COMPLAINT = "complaint_report"
    AUTO_REPLY = "auto_reply"
    PERSON = "person"


_DAEMON_RE = re.compile(r"^(mailer-daemon|postmaster|mail-daemon|mdaemon)@", re.IGNORECASE)
_AUTO_SUBJECT_RE = re.compile(
    r"^\s*(?:\[?auto(?:matic)?[ -]?(?:reply|response|answer)\]?|auto:|out of (?:the )?office|ooo\b"
    r"|(?:i am|i'm) (?:out of|away from) (?:the )?office|away from (?:the )?office|on vacation|vacation reply"
    r"|abwesenheitsnotiz|automatische antwort|réponse automatique|absence du bureau|respuesta automática"
    r"|fuera de la oficina|risposta automatica|自动回复|自動回覆|自动答复|外出|休假|不在办公室|不在辦公室)",
    re.IGNORECASE,
)
_AUTO_PRECEDENCE = frozenset({"auto_reply", "bulk", "junk"})


def report_kind(raw: bytes, parsed: ParsedMail) -> tuple[Kind | None, ParsedPayload | None]:
    """(BOUNCE or COMPLAINT, the report's parsed events) when the message is a report, else (None, None)."""
    message = parsed.message
    content_type = message.get_content_type()
    report_type = str(message.get_param("report-type", "") or "").lower() if content_type == "multipart/report" else ""
    from_daemon = _from_mail_system(parsed)
    if not report_type and not from_daemon and not _may_be_free_text_bounce(parsed):
        return None, None
    report = parse_report(raw, envelope_to=parsed.to_address)
    events = [item for item in report.items if isinstance(item, NormalizedEvent)]
    kinds = {(item.provider_event or "").split(":", 1)[0] for item in events}
    if report_type == "feedback-report" or "arf" in kinds:
        return Kind.COMPLAINT, report
    if report_type == "delivery-status" or "dsn" in kinds:
        return Kind.BOUNCE, report
    if any(item.provider_event == "bounce:free-text" for item in events):
        return Kind.BOUNCE, report
    if from_daemon and any(item.provider_event == "bounce:unparsed" for item in events):
        return Kind.BOUNCE, report
    return None, None


def is_auto_reply(parsed: ParsedMail) -> bool:
    message = parsed.message
    auto_submitted = (header(message, "Auto-Submitted") or "").split(";", 1)[0].strip().lower()
    if auto_submitted and auto_submitted != "no":
        return True
    if header(message, "X-Autoreply") or header(message, "X-Autorespond") or header(message, "X-Autorespond-To"):
        return True
    if (header(message, "Precedence") or "").strip().lower() in _AUTO_PRECEDENCE:
        return True
    suppress = (header(message, "X-Auto-Response-Suppress") or "").lower()
    if "oof" in suppress or "autoreply" in suppress:  # Exchange marks its own automatic replies so
        return True
    if message.get_content_type() == "multipart/report":  # read receipts and other machine reports
        return True
    return bool(_AUTO_SUBJECT_RE.search(parsed.subject or ""))


def _from_mail_system(parsed: ParsedMail) -> bool:
    if _DAEMON_RE.match(parsed.from_address or ""):
        return True
    return_path = header(parsed.message, "Return-Path")
    return return_path is not None and return_path.strip() in ("<>", "")


_BOUNCE_SUBJECT_RE = re.compile(
    r"^\s*(?:undeliver|returned mail|failure notice|delivery (?:status|failure|failed|has failed|notification|problem)"
    r"|mail delivery (?:failed|system)|non-?delivery|could not be delivered|delayed mail|delivery delayed)",
    re.IGNORECASE,
)


def _may_be_free_text_bounce(parsed: ParsedMail) -> bool:
    """A bounce subject at the start (not after Re:): worth asking the report parser for a status code."""
    return bool(_BOUNCE_SUBJECT_RE.search(parsed.subject or ""))
