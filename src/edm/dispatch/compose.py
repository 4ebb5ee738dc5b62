"""From a claim to ready-to-send messages: load what rendering needs in one short read, then render with
the task's frozen template snapshot and the contact's current data (docs/sending.md#the-message, docs/templates.md).
A conversation answer (a task of kind `reply`) is not rendered: its text and HTML are sent as written, with the
threading headers, no tracking and no List-Unsubscribe (docs/conversations-answers.md#the-message).

Caches: compiled snapshots forever (immutable after generation), tasks, senders and service configs for
at most 30 s (as docs/sending.md#principles allows).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import html as html_escape
import re
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edm import clock
from edm.content.render import (
    SAMPLE_CONTACT,
    CompiledTemplate,
    RenderedContent,
    RenderError,
    RenderLimitExceeded,
    build_context,
    compile_template,
    off_loop,
)
from edm.db.session import unit_of_work
from edm.dispatch.message import build_message
from edm.errors import TemplateSyntaxError
from edm.models.contacts import Contact, ContactTag, Tag
from edm.models.content import Sender
from edm.models.conversations import Conversation, ConversationMessage
from edm.models.email_services import EmailService
from edm.models.tasks import Task, TaskTemplate
from edm.models.tracking import TrackedLink
from edm.providers.base import OutboundMessage, Outcome, SendResult, ServiceConfig
from edm.providers.registry import capabilities_for
from edm.security.crypto import Vault
from edm.security.tokens import sign_token
from edm.settings import Settings
from edm.system import runtime_settings
from edm.tracking.links import LinkRewriter
from edm.vocabulary.tasks import TaskKind

CONFIG_TTL = 30.0
TEST_SUBJECT_PREFIX = "[TEST] "  # docs/templates.md#what-differs-from-a-campaign-mail
CONTACT_FIELDS = (
    "email",
    "name",
    "first_name",
    "last_name",
    "username",
    "phone",
    "company",
    "position",
    "tiktok_unique_id",
    "instagram_id",
    "youtube_id",
    "source",
    "status",
    "created_at",
)


@dataclass(frozen=True, slots=True)
class RenderFailure:
    code: str
    message: str
    limit: str | None = None  # the render limit the template hit ("time", "size", "work"): its task stops

    def result(self, key: str) -> SendResult:
        return SendResult(key, Outcome.PERMANENT, provider_code=self.code, message=self.message[:500])


@dataclass(frozen=True, slots=True)
class TaskInfo:
    id: int
    user_id: int
    name: str
    timezone: str
    schedule_at: dt.datetime | None
    sender_local: str
    sender_name: str
    reply_to: str | None
    track_opens: bool = False
    track_clicks: bool = False
    # A template test send (docs/templates.md#what-differs-from-a-campaign-mail): `[TEST] ` subject, no tracking, data
    # from `data_contact_id` or sample data.
    is_test: bool = False
    data_contact_id: int | None = None
    # A conversation answer (docs/conversations-answers.md#the-message): sent as written, no tracking, threading
    # headers, no List-Unsubscribe.
    is_reply: bool = False


@dataclass(frozen=True, slots=True)
class Answer:
    """What a conversation answer sends, read from its ConversationMessage."""

    subject: str
    text: str
    html: str | None
    in_reply_to: str | None
    references: str | None  # space-separated ids without angle brackets
    to_name: str


class _Ttl:
    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self.items: dict[Any, tuple[float, Any]] = {}

    def get(self, key: Any) -> Any:
        hit = self.items.get(key)
        return hit[1] if hit and time.monotonic() - hit[0] < self.ttl else None

    def put(self, key: Any, value: Any) -> Any:
        self.items[key] = (time.monotonic(), value)
        return value


class Composer:
    def __init__(self, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], vault: Vault) -> None:
        self.settings = settings
        self.vault = vault
        self.sessionmaker = sessionmaker
        self._services = _Ttl(CONFIG_TTL)
        self._tasks = _Ttl(CONFIG_TTL)
        self._org = _Ttl(CONFIG_TTL)
        self._templates: dict[int, CompiledTemplate | RenderFailure] = {}
        self._known_links: dict[int, tuple[int, str]] = {}

    # ---- services ----------------------------------------------------------------------------------

    async def service_config(self, service_id: int, vault: Vault) -> tuple[ServiceConfig, EmailService]:
        cached = self._services.get(service_id)
        if cached is None:
            async with self.sessionmaker() as session:
                service = await session.get(EmailService, service_id)
            assert service is not None, f"service {service_id} vanished"
            cached = self._services.put(service_id, (config_of(service, vault), service))
        return cached  # type: ignore[no-any-return]

    async def idempotency_lookup(self, vault: Vault) -> Any:
        async with self.sessionmaker() as session:
            services = list(await session.scalars(select(EmailService)))
        caps = {s.id: capabilities_for(config_of(s, vault)) for s in services}

        def lookup(service_id: int) -> tuple[bool, int]:
            cap = caps.get(service_id)
            return (cap.honours_idempotency, cap.idempotency_window_seconds) if cap else (False, 0)

        return lookup

    # ---- messages ----------------------------------------------------------------------------------

    async def compose(self, claim: Any, *, with_mime: bool | None = None) -> dict[int, OutboundMessage | RenderFailure]:
        """The claim's messages by SubTask id, or why one cannot be sent. Compiling and rendering run on the
        render threads (`off_loop`), so a template that takes its whole time limit stalls neither this
        worker's other dispatch loops nor its maintenance jobs."""
        config, service = await self.service_config(claim.service_id, self.vault)
        if with_mime is None:
            with_mime = capabilities_for(config).needs_mime
        async with self.sessionmaker() as session:
            tasks = {tid: await self._task(session, tid) for tid in {i.task_id for i in claim.items}}
            data_ids = [t.data_contact_id for t in tasks.values() if t is not None and t.data_contact_id]
            contacts = await _contacts(session, [i.contact_id for i in claim.items if i.contact_id] + data_ids)
            snapshots = {
                tt: await session.get(TaskTemplate, tt)
                for tt in {i.task_template_id for i in claim.items}
                if tt is not None and tt not in self._templates
            }
            org = await self._org_settings(session)
            reply_tasks = {tid for tid, t in tasks.items() if t is not None and t.is_reply}
            answers = await _answers(session, [i.subtask_id for i in claim.items if i.task_id in reply_tasks])
        links: dict[int, tuple[int, str]] = {}
        job = _Job(service, tasks, contacts, org, clock.utc_now(), with_mime, links, answers)
        composed = await off_loop(self._compose_all, claim.items, snapshots, job)
        await self._store_links(links)
        return composed

    def _compose_all(
        self, items: list[Any], snapshots: dict[int, TaskTemplate | None], job: _Job
    ) -> dict[int, OutboundMessage | RenderFailure]:
        for task_template_id, snapshot in snapshots.items():
            self._templates.setdefault(task_template_id, _compile(snapshot))
        return {item.subtask_id: self._one(item, job) for item in items}

    async def _store_links(self, links: dict[int, tuple[int, str]]) -> None:
        """The tracked links the rendered mails point at, written before any of them is sent (one upsert)."""
        fresh = {i: v for i, v in links.items() if i not in self._known_links}
        if not fresh:
            return
        async with unit_of_work(self.sessionmaker) as session:
            postgres = session.bind is not None and session.bind.dialect.name == "postgresql"
            insert = pg_insert if postgres else sqlite_insert
            await session.execute(
                insert(TrackedLink).on_conflict_do_nothing(index_elements=["id"]),
                [{"id": i, "task_id": t, "url": u, "created_at": clock.utc_now()} for i, (t, u) in fresh.items()],
            )
        self._known_links.update(fresh)
        if len(self._known_links) > KNOWN_LINKS_LIMIT:
            self._known_links.clear()

    def _one(self, item: Any, job: _Job) -> OutboundMessage | RenderFailure:
        service, org, now, with_mime, links = job.service, job.org, job.now, job.with_mime, job.links
        task = job.tasks[item.task_id]
        if task is None:
            return RenderFailure("render_error", "task or sender missing")
        if task.is_reply:
            return _answer_message(item, task, job)
        if item.task_template_id is None:
            return RenderFailure("render_error", "no template assigned")
        template = self._templates[item.task_template_id]
        if isinstance(template, RenderFailure):
            return template
        contact = _data_of(item, task, job.contacts) or {"email": item.recipient_email}
        key = str(item.public_id)
        unsubscribe_url = self.unsubscribe_url(item.public_id)
        from_email = f"{task.sender_local}@{service.domain}"
        context = build_context(
            contact=contact,
            sender={"display_name": task.sender_name, "email": from_email},
            task={"name": task.name, "scheduled_at": task.schedule_at},
            org=org,
            unsubscribe_url=unsubscribe_url,
            now=now.astimezone(ZoneInfo(task.timezone)),
        )
        rewriter = None
        if task.track_clicks:
            base = self.settings.effective_tracking_url
            rewriter = LinkRewriter(
                task_id=task.id,
                subtask_id=item.public_id,
                key=self.settings.signing_key,
                base_url=base,
                keep=lambda url: url.startswith((f"{base}/u/", f"{base}/v/")),
            )
        try:
            content = template.render(context, postprocess=rewriter, footer_html=org.get("footer_html", ""))
            if rewriter is not None:
                links.update((i, (task.id, url)) for i, url in rewriter.links.items())
            if task.track_opens:
                pixel = self.pixel_url(item.public_id)
                content = dataclasses.replace(content, html=with_open_pixel(content.html, pixel))
            if task.is_test:
                content = dataclasses.replace(content, subject=TEST_SUBJECT_PREFIX + content.subject)
            # A test goes to the marketer's own address: the data contact's name is not theirs.
            to_name = "" if task.is_test else str(contact.get("name") or "")
            return build_message(
                key=key,
                task_id=task.id,
                user_id=task.user_id,
                domain=service.domain,
                from_local=task.sender_local,
                from_name=task.sender_name,
                to_address=item.recipient_email,
                to_name=to_name,
                reply_to=task.reply_to,
                content=content,
                unsubscribe_url=unsubscribe_url,
                with_mime=with_mime,
            )
        except RenderLimitExceeded as exc:
            # A limit is the template's, not this contact's: its other recipients fail at once, without
            # rendering, and the worker pauses the task.
            failure = RenderFailure("render_error", str(exc), limit=exc.limit)
            self._templates[item.task_template_id] = failure
            return failure
        except RenderError as exc:
            return RenderFailure("render_error", str(exc))
        except ValueError as exc:  # an address or header value that cannot be put in a mail
            return RenderFailure("invalid_message", str(exc))

    def pixel_url(self, public_id: Any) -> str:
        token = sign_token("open", public_id, key=self.settings.signing_key)
        return f"{self.settings.effective_tracking_url}/t/o/{token}.gif"

    def unsubscribe_url(self, public_id: Any) -> str:
        token = sign_token("unsubscribe", public_id, key=self.settings.signing_key)
        return f"{self.settings.effective_tracking_url}/u/{token}"

    async def _task(self, session: AsyncSession, task_id: int) -> TaskInfo | None:
        cached = self._tasks.get(task_id)
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        row = (
            await session.execute(
                select(Task, Sender).join(Sender, Sender.id == Task.sender_id).where(Task.id == task_id)
            )
        ).first()
        if row is None:
            return None
        task, sender = row
        is_test = task.kind == TaskKind.TEST  # tracking stays off for test sends, whatever the task row says
        is_reply = task.kind == TaskKind.REPLY  # and for conversation answers
        data_contact = (task.recipient_rule or {}).get("contact_id") if is_test else None
        info = TaskInfo(
            task.id,
            task.user_id,
            task.name,
            task.timezone or "UTC",
            task.schedule_at,
            sender.local_part,
            sender.display_name or "",
            sender.reply_to,
            bool(task.track_opens) and not (is_test or is_reply),
            bool(task.track_clicks) and not (is_test or is_reply),
            is_test=is_test,
            data_contact_id=data_contact if isinstance(data_contact, int) else None,
            is_reply=is_reply,
        )
        return self._tasks.put(task_id, info)  # type: ignore[no-any-return]

    async def _org_settings(self, session: AsyncSession) -> dict[str, str]:
        cached = self._org.get("org")
        if cached is None:
            runtime = await runtime_settings.load(session)
            org = {
                "name": runtime.org_name,
                "postal_address": runtime.compliance_postal_address,
                "footer_html": runtime.compliance_footer_html,
            }
            cached = self._org.put("org", org)
        return cached  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class _Job:
    """What rendering a claim needs, read before it leaves the event loop."""

    service: EmailService
    tasks: dict[int, TaskInfo | None]
    contacts: dict[int, dict[str, Any]]
    org: dict[str, str]
    now: dt.datetime
    with_mime: bool
    links: dict[int, tuple[int, str]]  # filled by the renders: tracked links to store before sending
    answers: dict[int, Answer] = dataclasses.field(default_factory=dict)  # conversation answers by SubTask id


def _answer_message(item: Any, task: TaskInfo, job: _Job) -> OutboundMessage | RenderFailure:
    """A conversation answer as written: no template, no tracking, no footer, no List-Unsubscribe, no Reply-To
    (answers to it must come back to the address it is from); In-Reply-To and References thread it."""
    answer = job.answers.get(item.subtask_id)
    if answer is None:
        return RenderFailure("render_error", "the conversation message of this answer is missing")
    headers: dict[str, str] = {}
    if answer.in_reply_to:
        headers["In-Reply-To"] = f"<{answer.in_reply_to}>"
    if answer.references:
        headers["References"] = " ".join(f"<{r}>" for r in answer.references.split())
    content = RenderedContent(
        subject=answer.subject, preheader="", html=answer.html or text_as_html(answer.text), text=answer.text
    )
    try:
        return build_message(
            key=str(item.public_id),
            task_id=task.id,
            user_id=task.user_id,
            domain=job.service.domain,
            from_local=task.sender_local,
            from_name=task.sender_name,
            to_address=item.recipient_email,
            to_name=answer.to_name,
            reply_to=None,
            content=content,
            unsubscribe_url="",
            extra_headers=headers,
            with_mime=job.with_mime,
        )
    except ValueError as exc:  # an address or header value that cannot be put in a mail
        return RenderFailure("invalid_message", str(exc))


def text_as_html(text: str) -> str:
    """The HTML part of an answer written as plain text: escaped, paragraphs at blank lines, line breaks kept."""
    paragraphs = re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n").replace("\r", "\n").strip("\n"))
    body = "".join(
        "<p>" + "<br>\n".join(html_escape.escape(line) for line in p.split("\n")) + "</p>\n" for p in paragraphs
    )
    return f"<html><body>\n{body}</body></html>"


async def _answers(session: AsyncSession, subtask_ids: list[int]) -> dict[int, Answer]:
    if not subtask_ids:
        return {}
    rows = await session.execute(
        select(ConversationMessage, Conversation.their_name)
        .join(Conversation, Conversation.id == ConversationMessage.conversation_id)
        .where(ConversationMessage.subtask_id.in_(subtask_ids), ConversationMessage.direction == "outbound")
    )
    out: dict[int, Answer] = {}
    for message, their_name in rows.all():
        assert message.subtask_id is not None
        out[message.subtask_id] = Answer(
            subject=message.subject,
            text=message.text_body or "",
            html=message.html_body or None,
            in_reply_to=message.in_reply_to,
            references=message.references,
            to_name=their_name or "",
        )
    return out


def _data_of(item: Any, task: TaskInfo | None, contacts: dict[int, dict[str, Any]]) -> dict[str, Any] | None:
    """The data that fills the variables: the SubTask's contact; for a test send, the chosen contact (or the
    preview's sample data when none was chosen or it was deleted since)."""
    if task is not None and task.is_test:
        return contacts.get(task.data_contact_id or 0) or dict(SAMPLE_CONTACT)
    return contacts.get(item.contact_id)


def _compile(snapshot: TaskTemplate | None) -> CompiledTemplate | RenderFailure:
    if snapshot is None or snapshot.subject is None or snapshot.html is None:
        return RenderFailure("render_error", "template snapshot missing")
    try:
        return compile_template(
            subject=snapshot.subject,
            html=snapshot.html,
            text=snapshot.text,
            preheader=snapshot.preheader,
            inline_css=bool(snapshot.inline_css),
        )
    except TemplateSyntaxError as exc:
        return RenderFailure("render_error", exc.message)


async def _contacts(session: AsyncSession, ids: list[int]) -> dict[int, dict[str, Any]]:
    if not ids:
        return {}
    # Columns, not ORM objects: building (and identity-mapping) a Contact per recipient cost more than its render.
    columns = [getattr(Contact, f) for f in CONTACT_FIELDS]
    rows = await session.execute(select(Contact.id, Contact.custom_attributes, *columns).where(Contact.id.in_(ids)))
    out: dict[int, dict[str, Any]] = {}
    for contact_id, attributes, *values in rows.all():
        data = dict(zip(CONTACT_FIELDS, values, strict=True))
        data["attributes"] = attributes or {}
        data["tags"] = []
        out[contact_id] = data
    for contact_id, names in (await _tag_names(session, ids)).items():
        out[contact_id]["tags"] = names
    return out


async def _tag_names(session: AsyncSession, contact_ids: list[int]) -> dict[int, list[str]]:
    """Explicit tags plus their implied parents (docs/templates.md#variables)."""
    parent = Tag.__table__.alias("parent")
    rows = await session.execute(
        select(ContactTag.contact_id, Tag.name, parent.c.name)
        .join(Tag, Tag.id == ContactTag.tag_id)
        .outerjoin(parent, parent.c.id == Tag.parent_id)
        .where(ContactTag.contact_id.in_(contact_ids))
    )
    names: dict[int, list[str]] = defaultdict(list)
    for contact_id, name, parent_name in rows.all():
        for value in (parent_name, name):
            if value and value not in names[contact_id]:
                names[contact_id].append(value)
    return names


KNOWN_LINKS_LIMIT = 100_000  # link ids already stored, remembered to skip the upsert on the next claims
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)


def with_open_pixel(html: str, url: str) -> str:
    """The open pixel (docs/tracking.md#rewriting): a 1×1 image before `</body>`, or at the end when there is none."""
    pixel = f'<img src="{url}" width="1" height="1" alt="" style="display:block;border:0;width:1px;height:1px">'
    matches = list(_BODY_END.finditer(html))
    if not matches:
        return html + pixel
    at = matches[-1].start()
    return html[:at] + pixel + html[at:]


def config_of(service: EmailService, vault: Vault) -> ServiceConfig:
    return ServiceConfig(
        service_id=service.id,
        provider=service.provider,
        domain=service.domain,
        credentials=vault.decrypt_json(service.credentials_encrypted),
        options=dict(service.options or {}),
        max_concurrency=service.max_concurrency,
        batch_size=service.batch_size,
        request_timeout_seconds=float(service.request_timeout_seconds),
    )
