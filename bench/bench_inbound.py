"""Inbound mail benchmark (issue 15, docs/conversations.md): replies posted as raw MIME to one `edm serve`, beside a
trivial endpoint of the same server in the same run; then threading against millions of stored Message-IDs.

    .venv/bin/python -m bench.bench_inbound [--quick] [--messages 8000] [--subtasks 10000000] [--connections 8]

(also `python -m bench.run_all --only inbound`, which writes the figures into bench/RESULTS.md).

1. Ingest. In the bench database: a user with N contacts, a sender `inbound-news`, an SMTP service at
   `in.bench.example` whose inbound token authenticates `POST /webhooks/smtp/{id}/dsn` (docs/events.md), and a task
   whose N SubTasks are already `sent` from `inbound-news@in.bench.example` with their Message-IDs recorded
   (inserted set-based, like bench/seed.py). Messages of about 20 KB are built before timing, each with its own
   Message-ID: multipart/alternative (text and quoted-printable HTML, both quoting the campaign), a real mail
   server's headers (Received, DKIM, ARC, Authentication-Results), in this mix:
   - 78 % a person's reply, In-Reply-To / References naming one of the task's SubTasks (some SubTasks get two);
   - 5 % an automatic reply (Outlook's out-of-office: `Auto-Submitted`, `X-Auto-Response-Suppress`) to a SubTask;
   - 5 % a new message to the sender's address from a stranger (routed by address, creates a contact);
   - 12 % mail to an address of no sender (`info@unknown-shop.example`): kept unrouted.
   One `edm serve` (bench_webhooks.Server) and the same raw HTTP/1.1 load client in its own process, C keep-alive
   connections, closed loop: first `GET /healthz` (the reference: the framework's fixed cost per request), then
   every message posted once, then a replayed 10 % (a pipe's retry): those must add nothing.
2. Checks: conversation_messages (inbound) + unrouted_inbound == messages acknowledged, by kind (threaded,
   automatic, by address, unrouted); one mail_blobs row each; one `replied` event per person's threaded reply;
   the task's `replied` statistic == distinct SubTasks replied to; the replays change none of these counts.
3. Threading. A database of its own (`<bench db>_threading`, dropped at the end): S SubTasks (`--subtasks`, 10M in
   the full run) inserted set-based in chunks of 1M, with random public ids and their recorded Message-IDs, and an
   outbound conversation message for 1 % of them; VACUUM ANALYZE. Then, interleaved, `match_thread` on
   (a) References naming two existing SubTasks, (b) two unknown ids of ours, and the reference (c) the same
   columns by primary key, through the same session: p50/p99 ms, client side (asyncpg + SQLAlchemy included) and
   server side (the Execution Time of EXPLAIN ANALYZE of the very statement match_thread sent), and its plan.

Targets (issue 15): ingest ≥ 500 messages/s of 20 KB with p99 ≤ 200 ms through one `edm serve`; threading against
10,000,000 stored Message-IDs ≤ 5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import json
import os
import quopri
import random
import statistics
import time
import urllib.parse
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

if __name__ == "__main__" and "EDM_BENCH_DB" not in os.environ:
    os.environ["EDM_BENCH_DB"] = "edm_bench_inbound"  # never the shared edm_bench / edm_test databases

from bench import infra  # noqa: E402
from bench.bench_message import HTML as CAMPAIGN_HTML  # noqa: E402
from bench.bench_webhooks import Client, LoadRun, Server, get_request  # noqa: E402
from bench.infra import log  # noqa: E402

RUN_DIR = infra.ROOT / "var" / "bench"
FULL: dict[str, Any] = {
    "sent": 20_000,
    "messages": 5_000,
    "ref_requests": 5_000,
    "threading_subtasks": 10_000_000,
    "lookups": 1_000,
}
QUICK: dict[str, Any] = {
    "sent": 2_000,
    "messages": 1_000,
    "ref_requests": 2_000,
    "threading_subtasks": 200_000,
    "lookups": 300,
}
CONNECTIONS = 8
MESSAGE_BYTES = 20 * 1024
REPLAY_SHARE = 0.10
CHUNK = 1_000_000  # SubTasks per INSERT … SELECT (one transaction each) when seeding the threading table
OUTBOUND_EVERY = 100  # an outbound conversation message for 1 SubTask in 100
TARGETS = {"messages_per_s": 500.0, "p99_ms": 200.0, "threading_ms": 5.0}
TOKEN = "bench-inbound-token-0123456789abcdef"
LOCAL_PART = "inbound-news"
DOMAIN = "in.bench.example"
OUR_ADDRESS = f"{LOCAL_PART}@{DOMAIN}"
UNKNOWN_TO = "info@unknown-shop.example"
# (kind, weight): see the module docstring.
MIX = [("reply", 78), ("auto", 5), ("by_address", 5), ("unrouted", 12)]


@dataclass
class IngestResult:
    connections: int
    sent_subtasks: int
    messages: int
    mix: dict[str, int]  # kind -> messages posted
    body_kb: float
    acked: int
    errors: int
    statuses: dict[str, int]
    error_samples: list[str]
    seconds: float
    messages_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    ref_requests: int
    ref_errors: int
    ref_per_s: float
    ref_p50_ms: float
    ref_p95_ms: float
    ref_p99_ms: float
    replays: int
    replay_acked: int
    replay_per_s: float
    replay_p50_ms: float
    replay_p99_ms: float
    cpu: dict[str, float]
    cpu_wall: float
    drain: dict[str, Any]  # the `inbound` job handling what the load queued (Drained)
    ref_cpu: dict[str, float]
    ref_cpu_wall: float
    server_rss_mb: float
    counts: dict[str, int]  # what the database holds after the run
    expected: dict[str, int]
    counts_after_replay: dict[str, int]
    checks: dict[str, bool]
    load_avg: list[float] = field(default_factory=list)  # 1, 5, 15 min, as the load started

    @property
    def ratio(self) -> float:
        return self.messages_per_s / self.ref_per_s if self.ref_per_s else 0.0


@dataclass
class Lookups:
    """Latencies (ms) of one kind of lookup."""

    label: str
    client_p50_ms: float
    client_p99_ms: float
    client_max_ms: float
    server_p50_ms: float
    server_p99_ms: float
    found: int
    count: int


@dataclass
class ThreadingResult:
    subtasks: int
    outbound_messages: int
    seed_seconds: float  # the SubTasks' INSERT … SELECT, secondary indexes dropped
    index_seconds: float  # rebuilding them
    outbound_seconds: float
    vacuum_seconds: float
    table_mb: float
    public_id_index_mb: float
    lookups: list[Lookups]
    statement: str
    plan: list[str]
    load_avg: list[float] = field(default_factory=list)  # as the lookups started
    seed_progress: list[tuple[int, float]] = field(default_factory=list)  # (rows, seconds since start)


# ---- the messages -------------------------------------------------------------------------------------

RECEIVED = (
    "Received: from mail-lf1-f54.example.net (mail-lf1-f54.example.net [209.85.167.54])\r\n"
    "\tby mx1.in.bench.example (Postfix) with ESMTPS id 4VxQ2m1Kp3z9sLd\r\n"
    "\tfor <{to}>; {date}\r\n"
    "Received: by mail-lf1-f54.example.net with SMTP id 2adb3069b0e04-52b8a9f3c7dso1234567e87.1\r\n"
    "        for <{to}>; {date}\r\n"
    "X-Received: by 2002:a05:6512:3a87:b0:52c:8a37:6cc1 with SMTP id\r\n"
    "        q7-20020a0565123a8700b0052c8a376cc1mr812345lfu.5;\r\n"
    "        {date}\r\n"
)


def _blob(rng: random.Random, n: int) -> str:
    """n characters of base64-looking text (signatures, hashes)."""
    return base64.b64encode(rng.randbytes(n))[:n].decode()


def _folded(value: str, width: int = 70) -> str:
    return "\r\n\t".join(value[i : i + width] for i in range(0, len(value), width))


def _signature_headers(rng: random.Random) -> str:
    """DKIM, ARC and Authentication-Results as a large provider adds them (~2.5 KB)."""
    dkim = (
        "v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.net; s=20230601; t=1717171717; x=1717776517; "
        "darn=in.bench.example; h=to:subject:message-id:date:from:in-reply-to:references:mime-version:from:to:cc"
        f":subject:date:message-id:reply-to; bh={_blob(rng, 43)}=; b={_blob(rng, 342)}=="
    )
    arc_seal = f"i=1; a=rsa-sha256; t=1717171717; cv=none; d=example.net; s=arc-20160816; b={_blob(rng, 342)}=="
    arc_sig = (
        "i=1; a=rsa-sha256; c=relaxed/relaxed; d=example.net; s=arc-20160816; h=to:subject:message-id:date:from:"
        f"in-reply-to:references:mime-version:dkim-signature; bh={_blob(rng, 43)}=; b={_blob(rng, 342)}=="
    )
    auth = (
        "mx1.in.bench.example; dkim=pass header.d=example.net header.s=20230601 header.b=Xq2sd9Kp; "
        "spf=pass (mx1.in.bench.example: domain of reader@example.net designates 209.85.167.54 as permitted "
        "sender) smtp.mailfrom=reader@example.net; dmarc=pass (p=NONE sp=QUARANTINE dis=NONE) header.from=example.net"
    )
    return (
        f"DKIM-Signature: {_folded(dkim)}\r\n"
        f"X-Google-DKIM-Signature: {_folded(dkim)}\r\n"
        f"ARC-Seal: {_folded(arc_seal)}\r\n"
        f"ARC-Message-Signature: {_folded(arc_sig)}\r\n"
        f"ARC-Authentication-Results: i=1; {_folded(auth)}\r\n"
        f"Authentication-Results: {_folded(auth)}\r\n"
        f"X-Gm-Message-State: {_folded(_blob(rng, 120))}\r\n"
        f"X-Google-Smtp-Source: {_folded(_blob(rng, 90))}\r\n"
    )


def _qp(text: str) -> bytes:
    return quopri.encodestring(text.replace("\r\n", "\n").encode()).replace(b"\n", b"\r\n")


CAMPAIGN_TEXT = (
    "Spring is here, and so are our new arrivals. See what's new <https://shop.example.com/new?utm_source=edm>\n"
    "and save 20% this week only.\n\n"
) * 12
QUOTED_TEXT = "\n".join("> " + line for line in CAMPAIGN_TEXT.splitlines())
QUOTED_HTML = CAMPAIGN_HTML.replace("<html><body>", "").replace("</body></html>", "")

REPLY_LINES = [
    "Could you send me the price list for the café tables?",
    "Do you ship to Norway? The spring sale looks great.",
    "Please remove my old address and use this one from now on.",
    "Is the 20% discount valid on the garden chairs too?",
    "I ordered last week and the parcel has not arrived yet, order 10{n}.",
    "Thanks! Can I combine the code with my loyalty points?",
]


def build_message(
    kind: str, n: int, rng: random.Random, *, their: str, name: str, thread: str | None, pad: int
) -> bytes:
    """One raw reply of about MESSAGE_BYTES (`pad` quoted lines of an earlier exchange fill it up)."""
    to = UNKNOWN_TO if kind == "unrouted" else OUR_ADDRESS
    date = (dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC) + dt.timedelta(seconds=n)).strftime(
        "%a, %d %b %Y %H:%M:%S +0000"
    )
    message_id = f"<{uuid.UUID(int=rng.getrandbits(128))}@mail.example.net>"
    boundary = f"000000000000{rng.getrandbits(48):012x}"
    auto = kind == "auto"
    subject = "Automatic reply: Spring sale: 20% off new arrivals" if auto else "Re: Spring sale: 20% off new arrivals"
    if kind == "by_address":
        subject = "Question about an order"
    line = rng.choice(REPLY_LINES).format(n=n)
    if auto:
        line = "I am out of the office until 4 January with limited access to email. I will reply on my return."
    top_text = f"Hello,\n\n{line}\n\nBest regards,\n{name}\n"
    top_html = f'<div dir="ltr"><p>Hello,</p><p>{line}</p><p>Best regards,<br>{name}</p></div>'
    history = "\n".join(f"> > {QUOTED_TEXT.splitlines()[i % 36]}" for i in range(pad))
    text_part = (
        f"{top_text}\nOn Tue, 1 Dec 2026 at 08:00, Example Shop <{OUR_ADDRESS}> wrote:\n{QUOTED_TEXT}\n{history}\n"
    )
    html_part = (
        f'{top_html}<br><div class="gmail_quote"><div dir="ltr" class="gmail_attr">On Tue, 1 Dec 2026 at 08:00, '
        f'Example Shop &lt;{OUR_ADDRESS}&gt; wrote:<br></div><blockquote class="gmail_quote" style="margin:0px 0px '
        f'0px 0.8ex;border-left:1px solid rgb(204,204,204);padding-left:1ex">{QUOTED_HTML}</blockquote></div>\n'
    )
    headers = RECEIVED.format(to=to, date=date) + _signature_headers(rng)
    headers += (
        f"MIME-Version: 1.0\r\nFrom: {name} <{their}>\r\nDate: {date}\r\nMessage-ID: {message_id}\r\n"
        f"Subject: {subject}\r\nTo: Example Shop <{to}>\r\n"
    )
    if thread:
        headers += f"In-Reply-To: {thread}\r\nReferences: {thread}\r\n"
    if auto:
        headers += (
            "Auto-Submitted: auto-replied\r\nX-Auto-Response-Suppress: All\r\nX-MS-Exchange-Inbox-Rules-Loop: x\r\n"
        )
    headers += f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n'
    return (
        headers.encode()
        + f'\r\n--{boundary}\r\nContent-Type: text/plain; charset="UTF-8"\r\n'
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n".encode()
        + _qp(text_part)
        + f'\r\n--{boundary}\r\nContent-Type: text/html; charset="UTF-8"\r\n'
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n".encode()
        + _qp(html_part)
        + f"\r\n--{boundary}--\r\n".encode()
    )


@dataclass
class Posted:
    """One message to post and what it should become."""

    kind: str
    raw: bytes
    to: str
    subtask: int | None  # the SubTask's row id it threads to (reply, auto)


def build_messages(subtasks: list[tuple[int, str, str]], count: int, *, seed: int = 15) -> list[Posted]:
    """`count` messages in the MIX; `subtasks` are (row id, public id, recipient email) of the sent task."""
    rng = random.Random(seed)

    def size(pad: int) -> int:
        return len(
            build_message("reply", 0, random.Random(0), their="ada@example.net", name="Ada", thread="<x@y>", pad=pad)
        )

    per_line = (size(100) - size(0)) / 100  # one quoted line of the earlier exchange, after quoted-printable
    pad = max(0, round((MESSAGE_BYTES - size(0)) / per_line))
    out: list[Posted] = []
    kinds = [k for k, _ in MIX]
    weights = [w for _, w in MIX]
    for n in range(count):
        kind = rng.choices(kinds, weights=weights)[0]
        if kind in ("reply", "auto"):
            row_id, public_id, email = subtasks[rng.randrange(len(subtasks))]
            thread: str | None = f"<{public_id}@{DOMAIN}>"
            their, subtask = email, row_id
        else:
            thread, subtask = None, None
            their = f"stranger{n}@elsewhere{n % 7}.example"
        name = their.split("@", 1)[0].capitalize()
        raw = build_message(kind, n, rng, their=their, name=name, thread=thread, pad=pad)
        out.append(Posted(kind, raw, UNKNOWN_TO if kind == "unrouted" else OUR_ADDRESS, subtask))
    return out


def post_request(port: int, service_id: int, posted: Posted) -> bytes:
    """The HTTP request a mail server's pipe makes: raw MIME, the inbound token, the envelope recipient."""
    path = f"/webhooks/smtp/{service_id}/dsn?envelope_to={urllib.parse.quote(posted.to)}"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: edm-pipe\r\n"
        f"Content-Type: message/rfc822\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {len(posted.raw)}\r\n\r\n"
    )
    return head.encode() + posted.raw


# ---- set-up -------------------------------------------------------------------------------------------


async def set_up(sm: Any, settings: Any, *, subtasks: int) -> dict[str, Any]:
    """The user, sender, SMTP service (with the inbound token) and a task of `subtasks` SubTasks already sent."""
    from sqlalchemy import text

    from bench import seed
    from edm.clock import utc_now
    from edm.content import service as content
    from edm.db.session import unit_of_work
    from edm.email_services import service as services
    from edm.security.crypto import Vault
    from edm.tasks import service as tasks
    from edm.users.service import create_user

    vault = Vault.from_settings(settings)
    async with unit_of_work(sm) as session:
        user = await create_user(
            session,
            username="inbound",
            email="inbound@bench.example",
            password="bench password long enough",
            credit=1_000_000_000,
        )
        sender = await content.create_sender(
            session, user_id=user.id, values={"local_part": LOCAL_PART, "display_name": "Example Shop"}
        )
        template = await content.create_template(
            session,
            user_id=user.id,
            values={"name": "inbound", "subject": "Spring sale: 20% off new arrivals", "html": CAMPAIGN_HTML},
        )
        service = await services.create_service(
            session,
            vault,
            values={
                "name": "in-relay",
                "provider": "smtp",
                "domain": DOMAIN,
                "options": {"host": "127.0.0.1", "port": 25, "security": "none"},
                "sending_interval_seconds": 0,
                "max_concurrency": 4,
                "daily_quota": 1_000_000_000,
            },
            credentials={"webhook_secrets": [TOKEN]},
            fake_allowed=False,
        )
        await services.map_user(session, user_id=user.id, service_id=service.id)
        task = await tasks.create_task(
            session,
            user_id=user.id,
            actor="bench",
            values={
                "name": "inbound",
                "sender_id": sender.id,
                "recipient_rule": {"type": "all_contacts"},
                "templates": [{"template_id": template.id, "weight": 1}],
            },
        )
        ids = {"user_id": user.id, "service_id": service.id, "task_id": task.id}
    now = utc_now()
    async with unit_of_work(sm) as session:
        first = await session.scalar(text("SELECT coalesce(max(id), 0) FROM contacts"))
        await seed.insert_contacts(session, user_id=ids["user_id"], count=subtasks)
        await session.execute(
            text(f"""
            INSERT INTO subtasks (public_id, task_id, user_id, contact_id, recipient_email, seq, send_state,
                                  charged, attempts, retryable_failures, service_id, allocated_at, sent_at,
                                  from_address, message_id, delivery_state, open_count, machine_open_count,
                                  click_count, machine_click_count)
            SELECT u, :task, :user, id, email, row_number() OVER (ORDER BY id), 'sent', true, 1, 0, :svc, :now, :now,
                   '{OUR_ADDRESS}', '<' || u || '@{DOMAIN}>', 'none', 0, 0, 0, 0
            FROM (SELECT c.id, c.email, gen_random_uuid() AS u FROM contacts c
                  WHERE c.user_id = :user AND c.id > :first) s
        """),
            {"task": ids["task_id"], "user": ids["user_id"], "svc": ids["service_id"], "now": now, "first": first},
        )
        rows = (
            await session.execute(
                text("SELECT id, public_id, recipient_email FROM subtasks WHERE task_id = :t ORDER BY id"),
                {"t": ids["task_id"]},
            )
        ).all()
    async with sm() as session:
        for table in ("contacts", "subtasks"):
            await session.execute(text(f"ANALYZE {table}"))
        await session.commit()
    ids["subtasks"] = [(int(i), str(p), str(e)) for i, p, e in rows]
    return ids


# ---- checks -------------------------------------------------------------------------------------------


async def stored_counts(sm: Any, task_id: int) -> dict[str, int]:
    from sqlalchemy import text

    from edm.tasks import stats

    async with sm() as session:
        row = (
            await session.execute(
                text("""
            SELECT (SELECT count(*) FROM conversation_messages WHERE direction = 'inbound'),
                   (SELECT count(*) FROM conversation_messages WHERE direction = 'inbound' AND subtask_id IS NOT NULL
                           AND NOT is_auto_reply),
                   (SELECT count(*) FROM conversation_messages WHERE direction = 'inbound' AND is_auto_reply),
                   (SELECT count(*) FROM conversation_messages WHERE direction = 'inbound' AND subtask_id IS NULL),
                   (SELECT count(*) FROM unrouted_inbound),
                   (SELECT count(*) FROM mail_blobs),
                   (SELECT count(*) FROM events WHERE source = 'inbound' AND event_type = 'replied'),
                   (SELECT count(*) FROM conversations)""")
            )
        ).one()
        replied = int((await stats.task_stats(session, task_id))["replied"])
    names = ("inbound", "threaded", "auto", "by_address", "unrouted", "blobs", "replied_events", "conversations")
    return {**{name: int(v) for name, v in zip(names, row, strict=True)}, "task_replied": replied}


def expected_counts(posted: list[Posted], acked: list[int]) -> dict[str, int]:
    kinds = [posted[i] for i in acked]
    n = {k: sum(1 for p in kinds if p.kind == k) for k, _ in MIX}
    return {
        "inbound": n["reply"] + n["auto"] + n["by_address"],
        "threaded": n["reply"],
        "auto": n["auto"],
        "by_address": n["by_address"],
        "unrouted": n["unrouted"],
        "blobs": len(kinds),
        "replied_events": n["reply"],
        "task_replied": len({p.subtask for p in kinds if p.kind == "reply"}),
    }


# ---- the ingest run -----------------------------------------------------------------------------------


async def run_ingest(
    sm: Any,
    settings: Any,
    *,
    sent: int,
    messages: int,
    ref_requests: int,
    connections: int = CONNECTIONS,
    profile: bool = False,
) -> IngestResult:
    t0 = time.perf_counter()
    world = await set_up(sm, settings, subtasks=sent)
    log(
        f"inbound: {sent:,} sent SubTasks, sender {OUR_ADDRESS}, SMTP service {world['service_id']} with its token "
        f"({time.perf_counter() - t0:.1f} s)"
    )
    t0 = time.perf_counter()
    posted = build_messages(world["subtasks"], messages)
    mix = {k: sum(1 for p in posted if p.kind == k) for k, _ in MIX}
    body_kb = statistics.mean(len(p.raw) for p in posted) / 1024
    log(f"  {messages:,} messages built ({body_kb:.1f} KB each on average, {mix}) in {time.perf_counter() - t0:.1f} s")
    server = Server(RUN_DIR / "inbound").start()
    try:
        requests = [post_request(server.port, world["service_id"], p) for p in posted]
        log(f"  edm serve pid {server.pid} on 127.0.0.1:{server.port}; {connections} connections")
        # Warm-up (not counted): the service cache, the pool, the first parses.
        Client(server.port, [get_request(server.port, "/healthz")], connections, 500, "inbound-warmup").wait(60)
        ref_client = Client(
            server.port, [get_request(server.port, "/healthz")], connections, ref_requests, "inbound-ref"
        )
        ref_meter = infra.CpuMeter({"server": [server.pid], "client": [ref_client.pid]}).start()
        ref = ref_client.wait(timeout=300)
        ref_meter.stop()
        _client_cpu(ref_meter, ref)
        ref_rate = ref.ok / ref.seconds
        log(f"  reference GET /healthz: {ref_rate:,.0f} req/s, p50 {ref.p50_ms:.1f} ms, p99 {ref.p99_ms:.1f} ms")

        load_avg = [round(x, 2) for x in os.getloadavg()]
        spy = infra.PySpy(server.pid, RUN_DIR / "pyspy-inbound-ingest.txt").start() if profile else None
        load = Client(server.port, requests, connections, None, "inbound-load")
        meter = infra.CpuMeter({"server": [server.pid], "client": [load.pid]}).start()
        result = load.wait(timeout=1800)
        meter.stop()
        if spy is not None:
            log(f"  py-spy of the server written to {spy.stop()} (python -m bench.pyspy_summary <file>)")
        _client_cpu(meter, result)
        rate = result.ok / result.seconds
        log(
            f"  ingest: {rate:,.0f} messages/s, p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, max "
            f"{result.max_ms:.0f} ms; {result.ok:,} ok, {result.errors:,} errors "
            f"{result.statuses if result.errors else ''}".rstrip()
        )
        for sample in result.error_samples:
            log(f"  error: {sample[:300]}")
        queued_after_load = await queue_size(sm)
        drained = await drain_queue(sm, settings)
        log(
            f"  the inbound job handled {drained.handled:,} in {drained.seconds:.1f} s: {drained.per_s:,.0f} "
            f"messages/s; CPU per message {drained.cpu_ms_per_message:.2f} ms in the job's process + "
            f"{drained.pg_ms_per_message:.2f} ms in PostgreSQL ({drained.by_status})"
        )
        counts = await stored_counts(sm, world["task_id"])
        expected = expected_counts(posted, result.acked)
        log(f"  stored {counts}; expected {expected}")

        share = random.Random(7).sample(result.acked, max(1, int(len(result.acked) * REPLAY_SHARE)))
        replay = Client(server.port, [requests[i] for i in share], connections, None, "inbound-replay").wait(600)
        replay_rate = replay.ok / replay.seconds if replay.seconds else 0.0
        log(
            f"  replayed {len(share):,}: {replay_rate:,.0f} messages/s, p50 {replay.p50_ms:.1f} ms, p99 "
            f"{replay.p99_ms:.1f} ms; {replay.ok:,} ok"
        )
        replay_drained = await drain_queue(sm, settings)
        rss = infra.vm_hwm_mb(server.pid) or 0.0
        server_errors = server.errors()
    finally:
        server.stop()
    after = await stored_counts(sm, world["task_id"])
    checks = {
        "every message acknowledged": result.errors == 0 and result.ok == messages,
        "every acknowledged message queued": queued_after_load == result.ok,
        "the job handled each once, none failed": drained.handled == result.ok and drained.failed == 0,
        "the replays handled as duplicates": replay_drained.by_status.get("duplicate", 0) == replay.ok,
        "stored exactly once, by kind": all(counts[k] == v for k, v in expected.items()),
        "one raw message per stored mail": counts["blobs"] == counts["inbound"] + counts["unrouted"],
        "replays acknowledged": replay.ok == len(share),
        "replays added nothing": after == counts,
        "no server errors": not server_errors,
    }
    for name, passed in checks.items():
        log(f"  check {name}: {'ok' if passed else 'FAILED'}")
    for line in server_errors[:3]:
        log(f"  server: {line[:300]}")
    return IngestResult(
        connections=connections,
        sent_subtasks=sent,
        messages=messages,
        mix=mix,
        body_kb=body_kb,
        acked=result.ok,
        errors=result.errors,
        statuses=result.statuses,
        error_samples=(result.error_samples + server_errors)[:5],
        seconds=result.seconds,
        messages_per_s=rate,
        p50_ms=result.p50_ms,
        p95_ms=result.p95_ms,
        p99_ms=result.p99_ms,
        max_ms=result.max_ms,
        ref_requests=ref.requests,
        ref_errors=ref.errors,
        ref_per_s=ref_rate,
        ref_p50_ms=ref.p50_ms,
        ref_p95_ms=ref.p95_ms,
        ref_p99_ms=ref.p99_ms,
        replays=len(share),
        replay_acked=replay.ok,
        replay_per_s=replay_rate,
        replay_p50_ms=replay.p50_ms,
        replay_p99_ms=replay.p99_ms,
        cpu=dict(meter.used),
        cpu_wall=meter.wall,
        ref_cpu=dict(ref_meter.used),
        ref_cpu_wall=ref_meter.wall,
        server_rss_mb=rss,
        drain=asdict(drained),
        counts=counts,
        expected=expected,
        counts_after_replay=after,
        checks=checks,
        load_avg=load_avg,
    )


@dataclass
class Drained:
    """The worker's `inbound` job (`inbound_queue.drain`, in this process) handling the queued messages."""

    handled: int
    failed: int
    by_status: dict[str, int]
    seconds: float
    per_s: float
    cpu_ms_per_message: float  # this process: parsing, classifying, threading, the ORM and the driver
    pg_ms_per_message: float  # PostgreSQL's backends


async def queue_size(sm: Any) -> int:
    from sqlalchemy import text

    async with sm() as session:
        return int(await session.scalar(text("SELECT count(*) FROM inbound_queue")) or 0)


async def drain_queue(sm: Any, settings: Any) -> Drained:
    from edm.conversations import inbound_queue

    meter = infra.CpuMeter({"job": [os.getpid()]}).start()
    t0 = time.perf_counter()
    counts = await inbound_queue.drain(sm, max_bytes=settings.inbound_message_max_bytes)
    seconds = time.perf_counter() - t0
    meter.stop()
    n = max(1, counts.handled)
    return Drained(
        handled=counts.handled,
        failed=counts.failed,
        by_status=dict(counts.by_status),
        seconds=round(seconds, 2),
        per_s=counts.handled / seconds if seconds else 0.0,
        cpu_ms_per_message=meter.used.get("job", 0.0) * 1000 / n,
        pg_ms_per_message=meter.used.get("postgres", 0.0) * 1000 / n,
    )


def _client_cpu(meter: infra.CpuMeter, run: LoadRun) -> None:
    """The client has exited when the meter stops: its CPU comes from its own report, out of `other`."""
    meter.used["client"] = run.cpu_s
    meter.used["other"] = max(0.0, meter.used.get("other", 0.0) - run.cpu_s)


# ---- threading against millions of stored Message-IDs --------------------------------------------------

FOREIGN_ID = "<CAF=8yq3kzD1uYvB0x-7Qm2rJw@mail.example.net>"  # a mail client's id in References: never ours
SUBTASKS_SQL = f"""
INSERT INTO subtasks (public_id, task_id, user_id, contact_id, recipient_email, seq, send_state, charged, attempts,
                      retryable_failures, service_id, allocated_at, sent_at, from_address, message_id,
                      delivery_state, open_count, machine_open_count, click_count, machine_click_count)
SELECT u, :task, :user, i, 'person' || i || '@rcpt' || (i % 50) || '.bench.example', i - :first + 1, 'sent', true,
       1, 0, 1, :now, :now, '{OUR_ADDRESS}', '<' || u || '@{DOMAIN}>', 'none', 0, 0, 0, 0
FROM (SELECT i, gen_random_uuid() AS u FROM generate_series(CAST(:first AS bigint), CAST(:last AS bigint)) AS i) s
"""
CONVERSATIONS_SQL = f"""
INSERT INTO conversations (user_id, our_address, their_address, subject, status, message_count, unread_count,
                           last_message_at, task_id, subtask_id, contact_id, created_at, updated_at)
SELECT user_id, '{OUR_ADDRESS}', recipient_email, 'Spring sale: 20% off new arrivals', 'active', 1, 0, :now,
       task_id, id, contact_id, :now, :now
FROM subtasks WHERE id % {OUTBOUND_EVERY} = 0
"""
OUTBOUND_SQL = f"""
INSERT INTO conversation_messages (conversation_id, user_id, direction, subtask_id, task_id, message_id,
                                   from_address, to_address, subject, text_body, is_auto_reply, service_id,
                                   sent_at, created_at)
SELECT c.id, c.user_id, 'outbound', s.id, s.task_id, s.public_id || '@{DOMAIN}', '{OUR_ADDRESS}', s.recipient_email,
       'Re: Spring sale: 20% off new arrivals', 'Thank you, the price list is attached.', false, 1, :now, :now
FROM conversations c JOIN subtasks s ON s.id = c.subtask_id
"""


def threading_db() -> tuple[str, str]:
    """(name, URL) of the threading database: beside the bench database, named after it, dropped after the run."""
    name = f"{infra.DB_NAME}_threading"
    return name, f"{infra.PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"


def _admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(infra.PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql)


async def run_threading(*, subtasks: int, lookups: int) -> ThreadingResult:
    from edm.db.engine import make_engine, make_sessionmaker

    name, url = threading_db()
    log(f"threading: fresh database {name}; edm db upgrade")
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    _admin(f'CREATE DATABASE "{name}"')
    try:
        infra.edm("db", "upgrade", env=infra.edm_env(EDM_DATABASE_URL=url))
        engine = make_engine(url, pool_size=2)
        try:
            return await _threading(make_sessionmaker(engine), url, subtasks=subtasks, lookups=lookups)
        finally:
            await engine.dispose()
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        log(f"threading: dropped {name}")


SECONDARY = """
SELECT 'constraint', conname, pg_get_constraintdef(oid) FROM pg_constraint
WHERE conrelid = 'subtasks'::regclass AND contype = 'u'
UNION ALL
SELECT 'index', indexname, indexdef FROM pg_indexes
WHERE schemaname = current_schema() AND tablename = 'subtasks'
  AND indexname NOT IN (SELECT conname FROM pg_constraint WHERE conrelid = 'subtasks'::regclass)
"""


async def _seed_threading(sm: Any, url: str, subtasks: int) -> dict[str, Any]:
    """S sent SubTasks in tasks of ≤ CHUNK, loaded with the secondary indexes and unique constraints of `subtasks`
    dropped and rebuilt after (as pg_restore loads: one sort per index instead of S random B-tree inserts), an
    outbound conversation message for 1 in 100, VACUUM ANALYZE. Returns the seconds of each step and the progress."""
    import psycopg
    from sqlalchemy import text

    from edm.clock import utc_now
    from edm.db.session import unit_of_work
    from edm.models.tasks import Task
    from edm.users.service import create_user

    now = utc_now()
    async with unit_of_work(sm) as session:
        user = await create_user(
            session, username="threading", email="threading@bench.example", password="bench password long enough"
        )
        tasks = [
            Task(user_id=user.id, name=f"campaign {k + 1}", status="completed")
            for k in range((subtasks + CHUNK - 1) // CHUNK)
        ]
        session.add_all(tasks)
        await session.flush()
        user_id, task_ids = user.id, [t.id for t in tasks]
    with psycopg.connect(url, autocommit=True) as conn:
        secondary = [(str(a), str(b), str(c)) for a, b, c in conn.execute(SECONDARY).fetchall()]
        for kind, name, _ in secondary:
            conn.execute(
                f'ALTER TABLE subtasks DROP CONSTRAINT "{name}"' if kind == "constraint" else f'DROP INDEX "{name}"'
            )
    log(
        f"  dropped {len(secondary)} secondary indexes of subtasks for the load: "
        + ", ".join(name for _, name, _ in secondary)
    )
    started = time.perf_counter()
    progress: list[tuple[int, float]] = []
    done = 0
    for task_id in task_ids:
        n = min(CHUNK, subtasks - done)
        t0 = time.perf_counter()
        async with unit_of_work(sm) as session:
            params = {"task": task_id, "user": user_id, "now": now, "first": done + 1, "last": done + n}
            await session.execute(text(SUBTASKS_SQL), params)
        done += n
        elapsed = time.perf_counter() - started
        progress.append((done, round(elapsed, 1)))
        log(f"  {done:,}/{subtasks:,} SubTasks after {elapsed:.0f} s ({n / (time.perf_counter() - t0):,.0f} rows/s)")
    load_s = time.perf_counter() - started
    t0 = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET maintenance_work_mem = '512MB'")
        for kind, name, definition in secondary:
            t1 = time.perf_counter()
            conn.execute(
                f'ALTER TABLE subtasks ADD CONSTRAINT "{name}" {definition}' if kind == "constraint" else definition
            )
            log(f"  rebuilt {name} in {time.perf_counter() - t1:.0f} s")
    index_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    async with unit_of_work(sm) as session:
        await session.execute(text(CONVERSATIONS_SQL), {"now": now})
        outbound = (await session.execute(text(OUTBOUND_SQL), {"now": now})).rowcount or 0
    outbound_s = time.perf_counter() - t0
    log(f"  {outbound:,} outbound conversation messages in {outbound_s:.0f} s; VACUUM ANALYZE")
    t0 = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        for table in ("subtasks", "conversations", "conversation_messages", "tasks"):
            conn.execute(f"VACUUM ANALYZE {table}")
    return {
        "load_seconds": load_s,
        "index_seconds": index_s,
        "outbound_seconds": outbound_s,
        "vacuum_seconds": time.perf_counter() - t0,
        "outbound": int(outbound),
        "progress": progress,
    }


def _pct(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def _threading(sm: Any, url: str, *, subtasks: int, lookups: int) -> ThreadingResult:
    import psycopg
    from sqlalchemy import event, select, text
    from sqlalchemy.dialects import postgresql

    from edm.conversations.threading import match_thread
    from edm.models.tasks import SubTask, Task

    seeded = await _seed_threading(sm, url, subtasks)
    warm = min(100, lookups)
    rng = random.Random(11)
    async with sm() as session:
        lo, hi = (await session.execute(text("SELECT min(id), max(id) FROM subtasks"))).one()
        picked = rng.sample(range(int(lo), int(hi) + 1), 3 * (warm + lookups))
        ours = picked[: 2 * (warm + lookups)]
        rows = (
            await session.execute(text("SELECT id, public_id FROM subtasks WHERE id = ANY(:ids)"), {"ids": ours})
        ).all()
    public = {int(i): str(p) for i, p in rows}
    rounds = warm + lookups
    existing = [
        [f"<{public[ours[2 * k]]}@{DOMAIN}>", FOREIGN_ID, f"<{public[ours[2 * k + 1]]}@{DOMAIN}>"]
        for k in range(rounds)
    ]
    unknown = [[f"<{uuid.uuid4()}@{DOMAIN}>", FOREIGN_ID, f"<{uuid.uuid4()}@{DOMAIN}>"] for _ in range(rounds)]
    by_pk = picked[2 * rounds :]

    def pk_statement(row_id: int) -> Any:  # the same columns and join as match_thread, by primary key
        return (
            select(
                SubTask.id,
                SubTask.public_id,
                SubTask.task_id,
                SubTask.user_id,
                SubTask.contact_id,
                SubTask.from_address,
                SubTask.message_id,
                Task.kind,
            )
            .join(Task, Task.id == SubTask.task_id)
            .where(SubTask.id == row_id)
        )

    load_avg = [round(x, 2) for x in os.getloadavg()]
    sent: list[Any] = []  # every statement the session executed, in order; `kinds` says which lookup sent it
    kinds: list[str] = []
    times: dict[str, list[float]] = {"existing": [], "unknown": [], "pk": []}
    found = {"existing": 0, "unknown": 0, "pk": 0}
    log(f"threading: {warm} warm-up rounds, then {lookups:,} rounds of (existing, unknown, primary key), shuffled")
    async with sm() as session:

        def capture(state: Any) -> None:
            sent.append(state.statement)

        event.listen(session.sync_session, "do_orm_execute", capture)
        for k in range(rounds):
            order = ["existing", "unknown", "pk"]
            rng.shuffle(order)
            for kind in order:
                kinds.append(kind)
                t0 = time.perf_counter()
                if kind == "pk":
                    hit = (await session.execute(pk_statement(by_pk[k]))).first() is not None
                else:
                    hit = await match_thread(session, (existing if kind == "existing" else unknown)[k]) is not None
                elapsed = time.perf_counter() - t0
                if k >= warm:
                    times[kind].append(1000 * elapsed)
                    found[kind] += hit
            if k % 100 == 99:
                await session.commit()
        event.remove(session.sync_session, "do_orm_execute", capture)

    def literal(statement: Any) -> str:
        return str(statement.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))

    if len(sent) != len(kinds):
        raise RuntimeError(f"expected one statement per lookup, got {len(sent)} for {len(kinds)}")
    by_kind: dict[str, list[str]] = {"existing": [], "unknown": [], "pk": []}
    for kind, statement in zip(kinds, sent, strict=True):
        by_kind[kind].append(literal(statement))
    server: dict[str, list[float]] = {}
    plan: list[str] = []
    with psycopg.connect(url, autocommit=True) as conn:
        for kind, statements in by_kind.items():
            server[kind] = []
            for sql in statements[warm:]:
                row = conn.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}").fetchone()
                assert row is not None
                server[kind].append(float(row[0][0]["Execution Time"]))
        sample = by_kind["existing"][-1]
        plan = [r[0] for r in conn.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sample}").fetchall()]
        table_mb = conn.execute("SELECT pg_table_size('subtasks') / 1048576.0").fetchone()[0]  # type: ignore[index]
        index_mb = conn.execute("SELECT pg_relation_size('uq_subtasks_public_id') / 1048576.0").fetchone()[0]  # type: ignore[index]
    labels = {
        "existing": "match_thread: In-Reply-To and References name 2 stored SubTasks (+ 1 foreign id)",
        "unknown": "match_thread: 2 unknown ids of our form (+ 1 foreign id)",
        "pk": "reference: the same columns and join by primary key (subtasks.id)",
    }
    results = [
        Lookups(
            label=labels[kind],
            client_p50_ms=_pct(times[kind], 50),
            client_p99_ms=_pct(times[kind], 99),
            client_max_ms=max(times[kind], default=0.0),
            server_p50_ms=_pct(server[kind], 50),
            server_p99_ms=_pct(server[kind], 99),
            found=found[kind],
            count=len(times[kind]),
        )
        for kind in ("existing", "unknown", "pk")
    ]
    for r in results:
        log(
            f"  {r.label}: client p50 {r.client_p50_ms:.2f} ms, p99 {r.client_p99_ms:.2f} ms; server p50 "
            f"{r.server_p50_ms:.3f} ms, p99 {r.server_p99_ms:.3f} ms; found {r.found}/{r.count}"
        )
    for line in plan:
        log(f"  plan: {line}")
    return ThreadingResult(
        subtasks=subtasks,
        outbound_messages=seeded["outbound"],
        seed_seconds=seeded["load_seconds"],
        index_seconds=seeded["index_seconds"],
        outbound_seconds=seeded["outbound_seconds"],
        vacuum_seconds=seeded["vacuum_seconds"],
        table_mb=float(table_mb),
        public_id_index_mb=float(index_mb),
        lookups=results,
        statement=by_kind["existing"][-1],
        plan=plan,
        load_avg=load_avg,
        seed_progress=seeded["progress"],
    )


# ---- the section --------------------------------------------------------------------------------------


@dataclass
class InboundResult:
    ingest: IngestResult | None
    threading: ThreadingResult | None


async def run(
    sm: Any,
    settings: Any,
    *,
    sent: int,
    messages: int,
    ref_requests: int,
    threading_subtasks: int,
    lookups: int,
    connections: int = CONNECTIONS,
    profile: bool = False,
) -> InboundResult:
    """Ingest in the bench database (skipped when `messages` is 0), then threading in a database of its own
    (skipped when `threading_subtasks` is 0)."""
    ingest = (
        await run_ingest(
            sm,
            settings,
            sent=sent,
            messages=messages,
            ref_requests=ref_requests,
            connections=connections,
            profile=profile,
        )
        if messages
        else None
    )
    threading = await run_threading(subtasks=threading_subtasks, lookups=lookups) if threading_subtasks else None
    return InboundResult(ingest, threading)


def _met(flag: bool) -> str:
    return "✅ met" if flag else "❌ missed"


def report_lines(r: dict[str, Any], nproc: int) -> list[str]:
    """The Markdown of one result (asdict of InboundResult)."""
    lines: list[str] = []
    w = r.get("ingest")
    if w:
        mix = ", ".join(f"{k} {v:,}" for k, v in w["mix"].items())
        lines += [
            f"### (l) Inbound mail: ingest through one `edm serve` (raw MIME posted to `POST /webhooks/smtp/{{id}}/dsn`"
            f" with the service's token, {w['connections']} keep-alive connections, closed loop; the request verifies, "
            "checks the size and queues the message, the worker's `inbound` job handles it)",
            "",
            f"{w['messages']:,} messages of {w['body_kb']:.1f} KB on average (multipart/alternative, quoted-printable "
            f"text and HTML quoting the campaign, DKIM/ARC/Received headers): {mix}; the task had "
            f"{w['sent_subtasks']:,} sent SubTasks.",
            "",
            "| messages ok / errors | **messages/s** | p50 | p95 | **p99** | max | GET /healthz (same run) "
            "| ratio (messages/s ÷ healthz req/s) | replays of 10 % |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| {w['acked']:,} / {w['errors']:,} | **{w['messages_per_s']:,.0f}** | {w['p50_ms']:.1f} ms "
            f"| {w['p95_ms']:.1f} ms | **{w['p99_ms']:.1f} ms** | {w['max_ms']:.0f} ms | {w['ref_per_s']:,.0f} req/s "
            f"(p50 {w['ref_p50_ms']:.1f} ms, p95 {w['ref_p95_ms']:.1f} ms, p99 {w['ref_p99_ms']:.1f} ms) "
            f"| **{w['messages_per_s'] / w['ref_per_s'] if w['ref_per_s'] else 0:.3f}** "
            f"| {w['replay_acked']:,} of {w['replays']:,} ok, {w['replay_per_s']:,.0f}/s, p50 "
            f"{w['replay_p50_ms']:.1f} ms, p99 {w['replay_p99_ms']:.1f} ms |",
            "",
        ]
        c, wall = w["cpu"], w["cpu_wall"]
        if c and wall:
            k = 1000 / max(1, w["acked"])
            busy = sum(c.values())
            per = {g: c.get(g, 0) * k for g in ("server", "postgres", "client", "other")}
            rc, rwall = w["ref_cpu"], w["ref_cpu_wall"]
            ref_us = 1e6 * rc.get("server", 0) / max(1, w["ref_requests"]) if rc else 0.0
            lines += [
                f"CPU seconds per 1,000 messages while posting: **server {per['server']:.2f}**, **PostgreSQL "
                f"{per['postgres']:.2f}** (the bench database's backends and the shared WAL writer/checkpointer), load "
                f"client {per['client']:.2f}, other (not ours) {per['other']:.2f}; machine busy {busy:.0f} of "
                f"{wall * nproc:.0f} CPU-s ({100 * busy / (wall * nproc):.0f} %; load average {w['load_avg']} "
                "as it started), server process "
                f"{100 * c.get('server', 0) / wall:.0f} % of a core, PostgreSQL "
                f"{100 * c.get('postgres', 0) / wall:.0f} %. A /healthz request cost the server {ref_us:,.0f} µs CPU "
                f"({100 * rc.get('server', 0) / rwall if rwall else 0:.0f} % of a core). Server peak RSS "
                f"{w['server_rss_mb']:.0f} MB.",
                "",
                f"What the server's own CPU allows (less sensitive to the machine's load than the rates above): "
                f"**{1000 / per['server'] if per['server'] else 0:,.0f} messages/s per fully used core** (1 / CPU per "
                f"message) against {1e6 / ref_us if ref_us else 0:,.0f} /healthz requests/s; a message costs the "
                f"server **{1000 * per['server'] / ref_us if ref_us else 0:,.0f}×** the CPU of a /healthz request.",
                "",
            ]
        d = w.get("drain")
        if d:
            statuses = ", ".join(f"{k} {v:,}" for k, v in sorted(d["by_status"].items()))
            lines += [
                f"Then the worker's `inbound` job (`inbound_queue.drain`, one process, batches of 50 in a transaction "
                f"each) handled the {d['handled']:,} queued messages in {d['seconds']:.1f} s: **{d['per_s']:,.0f} "
                f"messages/s**, CPU per message **{d['cpu_ms_per_message']:.2f} ms** in the job's process "
                f"(parsing, classifying, threading, ORM and driver) and {d['pg_ms_per_message']:.2f} ms in PostgreSQL; "
                f"{d['failed']:,} failed; {statuses}. A burst above that rate waits in the queue (durably stored) "
                "instead of at the provider's door; more `edm worker` processes drain it in parallel "
                "(FOR UPDATE SKIP LOCKED).",
                "",
            ]
        s, e = w["counts"], w["expected"]
        checks = "; ".join(f"{name} {'✅' if ok_ else '❌'}" for name, ok_ in w["checks"].items())
        lines += [
            f"Stored after the run: {s['inbound']:,} conversation messages (threaded person replies {s['threaded']:,}"
            f" of {e['threaded']:,} expected, automatic {s['auto']:,} of {e['auto']:,}, by address "
            f"{s['by_address']:,} of {e['by_address']:,}) in {s['conversations']:,} conversations, unrouted "
            f"{s['unrouted']:,} of {e['unrouted']:,}, raw messages {s['blobs']:,}, `replied` events "
            f"{s['replied_events']:,} of {e['replied_events']:,}, task statistic replied {s['task_replied']:,} of "
            f"{e['task_replied']:,} (distinct SubTasks). Checks: {checks}.",
            "",
            f"Target (issue 15): ≥ {TARGETS['messages_per_s']:,.0f} messages/s → {w['messages_per_s']:,.0f}: "
            f"{_met(w['messages_per_s'] >= TARGETS['messages_per_s'])}; p99 ≤ {TARGETS['p99_ms']:.0f} ms → "
            f"{w['p99_ms']:.0f} ms: {_met(w['p99_ms'] <= TARGETS['p99_ms'])}.",
            "",
        ]
        if w["error_samples"]:
            lines += ["Errors: " + " | ".join(x[:200] for x in w["error_samples"][:3]), ""]
    t = r.get("threading")
    if t:
        rate = t["subtasks"] / t["seed_seconds"] if t["seed_seconds"] else 0.0
        lines += [
            f"### (l) Inbound mail: threading against {t['subtasks']:,} stored Message-IDs (SubTask public ids)",
            "",
            f"Seeded {t['subtasks']:,} sent SubTasks (random public ids, recorded Message-IDs) in "
            f"{t['seed_seconds']:.0f} s ({rate:,.0f} rows/s, INSERT … SELECT in chunks of {CHUNK:,}, the secondary "
            f"indexes and unique constraints dropped), rebuilt them in {t['index_seconds']:.0f} s (so "
            "`uq_subtasks_public_id` is a freshly built B-tree, denser than one grown by random inserts), "
            f"{t['outbound_messages']:,} outbound conversation messages in {t['outbound_seconds']:.0f} s, VACUUM "
            f"ANALYZE {t['vacuum_seconds']:.0f} s; table "
            f"{t['table_mb']:,.0f} MB, `uq_subtasks_public_id` {t['public_id_index_mb']:,.0f} MB. Lookups interleaved "
            "in one session (shuffled per round, after warm-up); client = `match_thread` (or the reference statement)"
            " through SQLAlchemy and asyncpg; server = the Execution Time of EXPLAIN ANALYZE of the very statement it"
            f" sent. Load average as the lookups started: {t['load_avg']}.",
            "",
            "| lookup | n | client p50 | **client p99** | client max | server p50 | server p99 | found |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for x in t["lookups"]:
            lines.append(
                f"| {x['label']} | {x['count']:,} | {x['client_p50_ms']:.2f} ms | **{x['client_p99_ms']:.2f} ms** "
                f"| {x['client_max_ms']:.1f} ms | {x['server_p50_ms']:.3f} ms | {x['server_p99_ms']:.3f} ms "
                f"| {x['found']:,} |"
            )
        existing, unknown, pk = t["lookups"]
        worst = max(existing["client_p99_ms"], unknown["client_p99_ms"])
        worst_server = max(existing["server_p99_ms"], unknown["server_p99_ms"])
        ratio = existing["client_p50_ms"] / pk["client_p50_ms"] if pk["client_p50_ms"] else 0.0
        server_ratio = existing["server_p50_ms"] / pk["server_p50_ms"] if pk["server_p50_ms"] else 0.0
        limit = TARGETS["threading_ms"]

        def verdict(value: float) -> str:
            if t["subtasks"] >= 10_000_000:
                return _met(value <= limit)
            return f"{'within it' if value <= limit else 'over it'}, on a table smaller than the target's"

        lines += [
            "",
            f"Ratio to the primary-key reference (p50): client {ratio:.2f}, server {server_ratio:.2f}. Target "
            f"(issue 15): ≤ {limit:.0f} ms against 10,000,000 → client p99 {worst:.2f} ms: {verdict(worst)} (the "
            f"primary-key reference's client p99 in the same run: {pk['client_p99_ms']:.2f} ms, so the client's tail "
            f"is the machine's, not the index's); in PostgreSQL p99 {worst_server:.3f} ms: {verdict(worst_server)}; "
            f"client p50 {max(existing['client_p50_ms'], unknown['client_p50_ms']):.2f} ms.",
            "",
            "The statement (`match_thread`, literal values) and its plan:",
            "",
            "```sql",
            t["statement"],
            "```",
            "",
            "```",
            *t["plan"],
            "```",
            "",
        ]
    return lines


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    sizes = dict(QUICK if args.quick else FULL)
    for key in ("messages", "lookups"):
        if getattr(args, key) is not None:
            sizes[key] = getattr(args, key)
    if args.subtasks is not None:
        sizes["threading_subtasks"] = args.subtasks
    log(f"fresh database {infra.DB_NAME}; edm db upgrade")
    settings, engine, sm = infra.fresh_database(pool_size=2)
    try:
        result = await run(sm, settings, connections=args.connections, profile=args.profile, **sizes)
    finally:
        await engine.dispose()
    return asdict(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 messages, 200,000 SubTasks")
    parser.add_argument("--connections", type=int, default=CONNECTIONS, help="concurrent keep-alive connections")
    parser.add_argument("--messages", type=int, help="messages to post (0: no ingest part)")
    parser.add_argument("--subtasks", type=int, help="SubTasks of the threading table (0: no threading part)")
    parser.add_argument("--lookups", type=int, help="lookups of each kind")
    parser.add_argument("--profile", action="store_true", help="py-spy the server during the ingest load")
    args = parser.parse_args()
    res = asyncio.run(main_async(args))
    print()
    print("\n".join(report_lines(res, os.cpu_count() or 1)))
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    (RUN_DIR / "results-inbound-standalone.json").write_text(json.dumps(res, indent=2, default=str))


if __name__ == "__main__":
    main()
