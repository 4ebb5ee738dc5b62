"""Webhook ingest benchmark (issue 3): signed SendGrid batches posted to one `edm serve` process, beside a
trivial endpoint of the same server measured in the same run; then the `events` job's code applies them.

    .venv/bin/python -m bench.bench_webhooks [--quick] [--connections 8] [--events 200000]

(also `python -m bench.run_all --only webhooks`, which writes the figures into bench/RESULTS.md).

1. A fresh database (`EDM_BENCH_DB`, default `edm_bench_webhooks` here): a user, N contacts, a `fake` service
   and a task whose N SubTasks are already `sent` through it (inserted set-based, like bench/seed.py), and a
   `sendgrid` service whose webhook secret is the public key of an ECDSA P-256 key generated for the run.
2. Batches of 100 SendGrid events (processed, delivered, open, click, deferred, bounce, dropped, spamreport,
   unsubscribe: SendGrid's field names, our `subtask_id` / `task_id` custom args flattened in, a unique
   `sg_event_id`), 10 % of each batch being redeliveries of earlier events (same `sg_event_id`), are built and
   signed *before* timing: signing is the provider's cost, not ours. Signatures stay valid for 10 minutes.
3. One `edm serve` process (uvicorn, as in production). A load client in its own process (raw HTTP/1.1
   keep-alive over asyncio + uvloop, requests pre-encoded: httpx's pool tops out near 1,300 req/s,
   docs/performance.md, and would measure itself on the reference) keeps C connections busy:
   - reference: `GET /healthz` through the same server, client and connections. GET, not a POST of the same
     size: /healthz has no POST route, and a POST there is a 405 through the exception handler with the body
     never read, which is neither a 2xx nor cheaper-because-trivial. The figure is the framework's fixed cost
     per request (uvicorn + the request-id middleware + routing); a 30 KB body over loopback adds little.
   - the webhook load: every batch posted once; events/s counts 2xx answers only (× 100 events).
4. The `events` job's code (`edm.events.apply.drain` with the job's `EVENTS_BATCH` and `EVENTS_LOOPS`, one
   transaction per batch, in a heap settled as the worker's is) applies everything stored in this process:
   events/s of applying, CPU of this process and of PostgreSQL per 1,000 events, and applied/s ÷ ingested/s
   (issue 17: ≥ 1.0). `--profile` also records py-spy of the applying.
5. Checks: rows in `events` == unique `sg_event_id`s in acknowledged batches; every row processed; matched ==
   the unique non-engagement events, ignored == the unique opens/clicks (SendGrid's own tracking is ignored,
   docs/events.md#matching), unmatched == 0.

Target (issue 3): ≥ 10,000 events/s with p99 ≤ 200 ms, one API process, batches of 100. Target (issue 17):
applying keeps up, events applied/s ÷ events ingested/s ≥ 1.0 in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import pickle
import random
import resource
import socket
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __name__ == "__main__" and "EDM_BENCH_DB" not in os.environ:
    os.environ["EDM_BENCH_DB"] = "edm_bench_webhooks"  # never the shared edm_bench / edm_test databases

from bench import infra  # noqa: E402
from bench.infra import log  # noqa: E402

RUN_DIR = infra.ROOT / "var" / "bench"
BATCH = 100
DUPLICATES_PER_BATCH = 10  # ~10 % redeliveries (SendGrid retries whole batches)
FULL: dict[str, Any] = {"subtasks": 20_000, "events": 200_000, "ref_requests": 20_000}
QUICK: dict[str, Any] = {"subtasks": 2_000, "events": 20_000, "ref_requests": 4_000}
CONNECTIONS = 8
TARGETS = {"events_per_s": 10_000.0, "p99_ms": 200.0, "apply_ratio": 1.0}
SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
# SendGrid event names and how often each comes (a delivered campaign: processed + delivered for everyone,
# engagement for some, a few bounces and complaints).
EVENT_MIX = [
    ("processed", 24),
    ("delivered", 24),
    ("open", 26),
    ("click", 10),
    ("deferred", 5),
    ("bounce", 4),
    ("dropped", 2),
    ("spamreport", 1),
    ("unsubscribe", 4),
]
ENGAGEMENT = frozenset({"open", "click"})  # SendGrid's own tracking: stored, matched, then ignored (docs/events.md)
USER_AGENT = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0"


@dataclass
class LoadRun:
    """What the client saw: per-status counts, ack latencies of 2xx answers, the acknowledged request ids."""

    requests: int
    seconds: float
    statuses: dict[str, int]
    p50_ms: float
    p99_ms: float
    max_ms: float
    cpu_s: float = 0.0  # the client's own CPU (user + system), reported by itself
    p95_ms: float = 0.0
    acked: list[int] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return sum(n for s, n in self.statuses.items() if s.startswith("2"))

    @property
    def errors(self) -> int:
        return self.requests - self.ok


@dataclass
class WebhookResult:
    connections: int
    batch: int
    subtasks: int
    requests: int
    events_posted: int
    unique_events: int  # unique sg_event_ids in acknowledged batches: what `events` must hold
    acked_events: int
    errors: int
    statuses: dict[str, int]
    error_samples: list[str]
    seconds: float
    events_per_s: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    body_kb: float
    ref_requests: int
    ref_errors: int
    ref_seconds: float
    ref_per_s: float
    ref_p50_ms: float
    ref_p99_ms: float
    stored_rows: int
    apply_seconds: float
    apply_per_s: float
    applied: dict[str, int]
    expected_matched: int
    expected_ignored: int
    pending_after: int
    cpu: dict[str, float]
    cpu_wall: float
    ref_cpu: dict[str, float]
    ref_cpu_wall: float
    server_rss_mb: float
    checks: dict[str, bool]
    apply_loops: int = 1
    apply_batch: int = 0
    apply_cpu: dict[str, float] = field(default_factory=dict)  # CPU-s while applying: apply (this process), postgres

    @property
    def ratio(self) -> float:
        """Webhook requests/s ÷ /healthz requests/s: the share of the server's trivial-request rate kept."""
        return self.requests_per_s / self.ref_per_s if self.ref_per_s else 0.0


# ---- set-up -------------------------------------------------------------------------------------------


async def set_up(sm: Any, settings: Any, *, subtasks: int, public_key_b64: str) -> dict[str, Any]:
    """A user with `subtasks` contacts, a `fake` service, a task whose SubTasks are all `sent` through it, and
    the `sendgrid` service holding the verification key. Returns ids and the SubTasks' (public id, email)."""
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
            username="webhooks",
            email="webhooks@bench.example",
            password="bench password long enough",
            credit=1_000_000_000,
        )
        sender = await content.create_sender(
            session, user_id=user.id, values={"local_part": "wh-news", "display_name": "Example Shop"}
        )
        template = await content.create_template(
            session,
            user_id=user.id,
            values={"name": "webhooks", "subject": "Hello {{ contact.first_name }}", "html": "<p>Hello</p>"},
        )
        common = {"sending_interval_seconds": 0, "max_concurrency": 4, "daily_quota": 1_000_000_000, "options": {}}
        fake = await services.create_service(
            session,
            vault,
            values={"name": "wh-fake", "provider": "fake", "domain": "fake.bench.example", **common},
            credentials={},
            fake_allowed=True,
        )
        await services.map_user(session, user_id=user.id, service_id=fake.id)
        sendgrid = await services.create_service(
            session,
            vault,
            values={"name": "wh-sendgrid", "provider": "sendgrid", "domain": "sg.bench.example", **common},
            credentials={"api_key": "SG.bench", "webhook_secrets": [public_key_b64]},
            fake_allowed=True,
        )
        task = await tasks.create_task(
            session,
            user_id=user.id,
            actor="bench",
            values={
                "name": "webhooks",
                "sender_id": sender.id,
                "recipient_rule": {"type": "all_contacts"},
                "templates": [{"template_id": template.id, "weight": 1}],
            },
        )
        ids = {"user_id": user.id, "fake_id": fake.id, "sendgrid_id": sendgrid.id, "task_id": task.id}
    now = utc_now()
    async with unit_of_work(sm) as session:
        first = await session.scalar(text("SELECT coalesce(max(id), 0) FROM contacts"))
        await seed.insert_contacts(session, user_id=ids["user_id"], count=subtasks)
        # SubTasks already sent through the fake service (a batched API send: 100 share a provider id).
        await session.execute(
            text("""
            INSERT INTO subtasks (public_id, task_id, user_id, contact_id, recipient_email, seq, send_state,
                                  charged, attempts, retryable_failures, service_id, allocated_at, sent_at,
                                  provider_message_id, delivery_state, open_count, machine_open_count,
                                  click_count, machine_click_count)
            SELECT gen_random_uuid(), :task, :user, c.id, c.email, row_number() OVER (ORDER BY c.id), 'sent',
                   true, 1, 0, :svc, :now, :now, 'bench-x-message-' || (c.id / 100), 'none', 0, 0, 0, 0
            FROM contacts c WHERE c.user_id = :user AND c.id > :first
        """),
            {"task": ids["task_id"], "user": ids["user_id"], "svc": ids["fake_id"], "now": now, "first": first},
        )
        rows = (
            await session.execute(
                text("SELECT public_id, recipient_email FROM subtasks WHERE task_id = :t ORDER BY id"),
                {"t": ids["task_id"]},
            )
        ).all()
    async with sm() as session:
        for table in ("contacts", "subtasks"):
            await session.execute(text(f"ANALYZE {table}"))
        await session.commit()
    ids["subtasks"] = [(str(public_id), email) for public_id, email in rows]
    return ids


def new_key() -> tuple[Any, str]:
    """An ECDSA P-256 key for the run and its public half as SendGrid shows it (base64 DER SPKI)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return key, base64.b64encode(public).decode()


# ---- the batches --------------------------------------------------------------------------------------


def sg_event(rng: random.Random, subtask: tuple[str, str], task_id: int, n: int, now: int) -> dict[str, Any]:
    """One SendGrid event as their Event Webhook posts it, our custom args flattened at the top level."""
    public_id, email = subtask
    name = rng.choices([e for e, _ in EVENT_MIX], weights=[w for _, w in EVENT_MIX])[0]
    x_message_id = f"{uuid.UUID(public_id).hex[:22]}"
    event: dict[str, Any] = {
        "email": email,
        "timestamp": now - rng.randint(0, 3600),
        "event": name,
        "sg_event_id": base64.urlsafe_b64encode(f"{name}-{n}-{rng.getrandbits(64):x}".encode()).decode(),
        "sg_message_id": f"{x_message_id}.filterdrecv-7bf9c8b7f-abcde-1-6656C9A3-{n % 97}.0",
        "smtp-id": f"<{x_message_id}@ismtpd0001p1lon1.sendgrid.net>",
        "category": ["newsletter"],
        "subtask_id": public_id,
        "task_id": str(task_id),
    }
    if name == "delivered":
        event.update(
            response="250 2.0.0 OK  1716963747 a640c23a62f3a-a5a1c9d2bb0si123456466b.42 - gsmtp",
            ip="149.72.123.24",
            tls=1,
        )
    elif name in ENGAGEMENT:
        event.update(useragent=USER_AGENT, ip=f"203.0.113.{n % 250}", sg_machine_open=False)
        if name == "click":
            event.update(
                url=f"https://shop.example.com/spring?utm_campaign=spring&item={n % 40}",
                url_offset={"index": n % 3, "type": "html"},
            )
    elif name == "deferred":
        event.update(response="451 4.7.1 Please try again later", attempt=str(1 + n % 5))
    elif name == "bounce":
        event.update(
            reason="550 5.1.1 The email account that you tried to reach does not exist.",
            status="5.1.1",
            type="bounce",
            bounce_classification="Invalid Address",
        )
    elif name == "dropped":
        event.update(reason="Bounced Address", status="5.0.0")
    elif name == "unsubscribe":
        event.update(asm_group_id=1)
    return event


def build_batches(
    subtasks: list[tuple[str, str]], task_id: int, *, events: int, seed: int = 3
) -> tuple[list[bytes], list[list[str]], set[str]]:
    """Bodies of `events / 100` batches, each with its sg_event_ids; and the engagement ids (open/click)."""
    rng = random.Random(seed)
    now = int(time.time())
    posted: list[dict[str, Any]] = []
    bodies, ids = [], []
    engagement: set[str] = set()
    n = 0
    for _ in range(max(1, events // BATCH)):
        batch = []
        for _ in range(BATCH - DUPLICATES_PER_BATCH):
            event = sg_event(rng, subtasks[rng.randrange(len(subtasks))], task_id, n, now)
            n += 1
            batch.append(event)
            if event["event"] in ENGAGEMENT:
                engagement.add(event["sg_event_id"])
        pool = posted if posted else batch
        batch += [rng.choice(pool) for _ in range(DUPLICATES_PER_BATCH)]  # redeliveries of earlier events
        rng.shuffle(batch)
        posted += batch[: BATCH - DUPLICATES_PER_BATCH]
        bodies.append(_dumps(batch))
        ids.append([e["sg_event_id"] for e in batch])
    return bodies, ids, engagement


def _dumps(value: Any) -> bytes:
    import orjson

    return orjson.dumps(value)


def signed_requests(bodies: list[bytes], key: Any, port: int, path: str) -> list[bytes]:
    """Complete HTTP/1.1 requests, signed as SendGrid signs: ECDSA P-256 / SHA-256 over timestamp + body."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    timestamp = str(int(time.time()))
    out = []
    for body in bodies:
        signature = base64.b64encode(key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))).decode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: SendGrid Event API\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"{SIGNATURE_HEADER}: {signature}\r\n{TIMESTAMP_HEADER}: {timestamp}\r\n\r\n"
        )
        out.append(head.encode() + body)
    return out


def get_request(port: int, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: bench\r\n\r\n".encode()


# ---- the load client (its own process) ----------------------------------------------------------------


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, server closes) of one HTTP/1.1 response."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length, chunked, close = None, False, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value:
            chunked = True
        elif name == b"connection" and value == b"close":
            close = True
    if chunked:
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            parts.append(await reader.readexactly(size + 2))
            if size == 0:
                break
        return status, b"".join(p[:-2] for p in parts), close
    if length is not None:
        return status, await reader.readexactly(length), close
    return status, await reader.read(), True


async def _connection(
    port: int, requests: list[bytes], order: Any, out: list[tuple[int, int, float, bytes]], repeat: bool
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        for i in order:
            request = requests[0] if repeat else requests[i]
            started = time.perf_counter()
            writer.write(request)
            try:
                status, body, close = await _read_response(reader)
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                status, body, close = 0, repr(exc).encode(), True
            out.append((i, status, time.perf_counter() - started, body[:300] if not 200 <= status < 300 else b""))
            if close:
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _client(port: int, requests: list[bytes], connections: int, count: int) -> dict[str, Any]:
    """`count` requests over `connections` keep-alive connections, each taking the next request as soon as its
    previous answer is in (closed loop, like wrk). One request repeated `count` times when only one is given."""
    repeat = len(requests) == 1
    order = iter(range(count))  # shared by the connections: one event loop, no locking needed
    out: list[tuple[int, int, float, bytes]] = []
    started = time.perf_counter()
    await asyncio.gather(*(_connection(port, requests, order, out, repeat) for _ in range(connections)))
    seconds = time.perf_counter() - started
    statuses: dict[str, int] = {}
    for _, status, _, _ in out:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    ok = sorted(lat for _, status, lat, _ in out if 200 <= status < 300)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    samples = [f"{status}: {body.decode(errors='replace')}" for _, status, _, body in out if body][:5]
    q = statistics.quantiles(ok, n=100, method="inclusive") if len(ok) >= 2 else [0.0] * 99
    return {
        "requests": len(out),
        "seconds": seconds,
        "statuses": statuses,
        "p50_ms": 1000 * q[49],
        "p95_ms": 1000 * q[94],
        "p99_ms": 1000 * q[98],
        "max_ms": 1000 * (ok[-1] if ok else 0.0),
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "acked": [] if repeat else sorted(i for i, status, _, _ in out if 200 <= status < 300),
        "error_samples": samples,
    }


def client_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench.bench_webhooks client")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--file", type=Path, required=True, help="pickled list of complete HTTP requests")
    parser.add_argument("--connections", type=int, default=CONNECTIONS)
    parser.add_argument("--count", type=int, help="requests to make (default: each request once)")
    args = parser.parse_args(argv)
    requests = pickle.loads(args.file.read_bytes())
    count = args.count or len(requests)
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    print(json.dumps(asyncio.run(_client(args.port, requests, args.connections, count))), flush=True)


class Client:
    """The load client as a subprocess (its CPU is measured apart from the server's)."""

    def __init__(self, port: int, requests: list[bytes], connections: int, count: int | None, name: str) -> None:
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        self.file = RUN_DIR / f"webhooks-{name}.requests"
        self.file.write_bytes(pickle.dumps(requests))
        argv = [
            sys.executable,
            "-m",
            "bench.bench_webhooks",
            "client",
            "--port",
            str(port),
            "--file",
            str(self.file),
            "--connections",
            str(connections),
        ] + (["--count", str(count)] if count else [])
        self.proc = subprocess.Popen(argv, cwd=infra.ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait(self, timeout: float) -> LoadRun:
        try:
            stdout, stderr = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            stdout, stderr = self.proc.communicate()
            raise RuntimeError(f"the load client took over {timeout:.0f} s") from None
        finally:
            self.file.unlink(missing_ok=True)
        if self.proc.returncode != 0:
            raise RuntimeError(f"the load client failed ({self.proc.returncode}): {stderr.decode()[-2000:]}")
        data = json.loads(stdout)
        return LoadRun(**data)


def _client_cpu(meter: infra.CpuMeter, run: LoadRun) -> None:
    """The client has exited when the meter stops: take its CPU from its own report, out of `other`."""
    meter.used["client"] = run.cpu_s
    meter.used["other"] = max(0.0, meter.used.get("other", 0.0) - run.cpu_s)


def _cpu_note(meter: infra.CpuMeter, count: int, unit: str) -> str:
    server, wall = meter.used.get("server", 0.0), meter.wall or 1.0
    return (
        f"{1e6 * server / max(1, count):,.0f} µs CPU per {unit}, {100 * server / wall:.0f} % of a core; "
        f"PostgreSQL {100 * meter.used.get('postgres', 0.0) / wall:.0f} %, client "
        f"{100 * meter.used.get('client', 0.0) / wall:.0f} %, other (not ours) "
        f"{100 * meter.used.get('other', 0.0) / wall:.0f} %"
    )


# ---- the server ---------------------------------------------------------------------------------------


class Server:
    """One `edm serve` process (uvicorn, 1 worker, as production runs it), stopped by pid."""

    def __init__(self, log_dir: Path) -> None:
        self.port = infra.free_port()
        self.log_path = log_dir / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [str(infra.BIN / "edm"), "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                env=infra.edm_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"edm serve exited with {self.proc.returncode}: {self.log_path.read_text(errors='replace')[-2000:]}"
                )
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(get_request(self.port, "/healthz"))
                if s.recv(100).startswith(b"HTTP/1.1 200"):
                    return self
            time.sleep(0.1)
        raise RuntimeError("edm serve did not answer /healthz within 30 s")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        infra.stop_process(self.proc, timeout=15)
        self.proc = None

    def errors(self) -> list[str]:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return [ln for ln in text.splitlines() if "ERROR" in ln or "Traceback" in ln][:10]


# ---- applying -----------------------------------------------------------------------------------------


async def apply_all(sm: Any, settings: Any, *, profile: bool = False) -> tuple[float, dict[str, int], dict[str, float]]:
    """The `events` job's loop (edm.events.apply.drain with the job's batch and loops, in a heap settled as the
    worker's is): seconds, counts, and the CPU-s this process and PostgreSQL used meanwhile."""
    from edm.cli.ops import settle_heap
    from edm.events import apply as event_apply
    from edm.worker.jobs import EVENTS_BATCH, EVENTS_LOOPS

    settle_heap()
    meter = infra.CpuMeter({"apply": [os.getpid()]}).start()
    spy = infra.PySpy(os.getpid(), RUN_DIR / "pyspy-events-apply.txt", idle=False).start() if profile else None
    started = time.perf_counter()
    counts = await event_apply.drain(
        sm, simulated_matches_any=settings.fake_provider_allowed, batch=EVENTS_BATCH, loops=EVENTS_LOOPS
    )
    seconds = time.perf_counter() - started
    meter.stop()
    if spy is not None:
        log(f"  py-spy of applying written to {spy.stop()}")
    names = ("processed", "matched", "unmatched", "ignored", "reconciled")
    return seconds, {name: getattr(counts, name) for name in names}, dict(meter.used)


# ---- the run ------------------------------------------------------------------------------------------


async def run(
    sm: Any,
    settings: Any,
    *,
    subtasks: int,
    events: int,
    ref_requests: int,
    connections: int = CONNECTIONS,
    profile: bool = False,
) -> WebhookResult:
    from sqlalchemy import text

    key, public_b64 = new_key()
    t0 = time.perf_counter()
    world = await set_up(sm, settings, subtasks=subtasks, public_key_b64=public_b64)
    log(f"webhooks: {subtasks:,} sent SubTasks, a fake and a sendgrid service ({time.perf_counter() - t0:.1f} s)")
    bodies, batch_ids, engagement = build_batches(world["subtasks"], world["task_id"], events=events)
    server = Server(RUN_DIR / "webhooks").start()
    try:
        t0 = time.perf_counter()
        requests = signed_requests(bodies, key, server.port, "/webhooks/sendgrid")
        body_kb = statistics.mean(len(b) for b in bodies) / 1024
        log(
            f"  {len(requests):,} batches of {BATCH} ({body_kb:.1f} KB each) signed in "
            f"{time.perf_counter() - t0:.1f} s; edm serve pid {server.pid} on 127.0.0.1:{server.port}; "
            f"{connections} connections"
        )
        # Warm-up: the first requests load the target cache, the key and the pool; not counted.
        warm = Client(server.port, [get_request(server.port, "/healthz")], connections, 500, "warmup")
        warm.wait(timeout=60)

        ref_client = Client(server.port, [get_request(server.port, "/healthz")], connections, ref_requests, "ref")
        ref_meter = infra.CpuMeter({"server": [server.pid], "client": [ref_client.pid]}).start()
        ref = ref_client.wait(timeout=300)
        ref_meter.stop()
        _client_cpu(ref_meter, ref)
        ref_rate = ref.ok / ref.seconds
        log(
            f"  reference GET /healthz: {ref_rate:,.0f} req/s, p50 {ref.p50_ms:.1f} ms, p99 {ref.p99_ms:.1f} ms "
            f"({ref.ok:,} ok, {ref.errors:,} errors); server {_cpu_note(ref_meter, ref.ok, 'request')}"
        )

        spy = None
        load = Client(server.port, requests, connections, None, "load")
        meter = infra.CpuMeter({"server": [server.pid], "client": [load.pid]}).start()
        if profile:
            spy = infra.PySpy(server.pid, RUN_DIR / "pyspy-webhooks.txt").start()
        result = load.wait(timeout=600)
        meter.stop()
        _client_cpu(meter, result)
        if spy is not None:
            log(f"  py-spy written to {spy.stop()}")
        rss = infra.vm_hwm_mb(server.pid) or 0.0
        server_errors = server.errors()
    finally:
        server.stop()
    acked_events = result.ok * BATCH
    rate = acked_events / result.seconds
    log(
        f"  webhooks: {rate:,.0f} events/s ({result.ok / result.seconds:,.0f} req/s), p50 {result.p50_ms:.1f} ms, "
        f"p99 {result.p99_ms:.1f} ms, max {result.max_ms:.0f} ms; {result.ok:,} requests ok, "
        f"{result.errors:,} errors {result.statuses if result.errors else ''}".rstrip()
    )
    for sample in result.error_samples + server_errors:
        log(f"  error: {sample[:300]}")
    log(f"  server {_cpu_note(meter, result.ok, 'request')}")
    log(
        f"  ratio webhook req/s ÷ /healthz req/s = {(result.ok / result.seconds) / ref_rate:.3f} "
        f"(a /healthz request carrying 100 events would be {100 * ref_rate:,.0f} events/s)"
    )

    unique = {i for b in result.acked for i in batch_ids[b]}
    async with sm() as session:
        stored = int(await session.scalar(text("SELECT count(*) FROM events WHERE source = 'sendgrid'")))
    log(f"  events stored {stored:,} (unique in acknowledged batches {len(unique):,}); applying")
    apply_s, applied, apply_cpu = await apply_all(sm, settings, profile=profile)
    async with sm() as session:
        pending = int(await session.scalar(text("SELECT count(*) FROM events WHERE processed_at IS NULL")))
    apply_rate = applied["processed"] / apply_s if apply_s else 0.0
    expected_ignored = len(unique & engagement)
    expected_matched = len(unique) - expected_ignored
    from edm.worker.jobs import EVENTS_BATCH, EVENTS_LOOPS

    per_k = 1e6 / max(1, applied["processed"])
    log(
        f"  applied {applied['processed']:,} in {apply_s:.1f} s = {apply_rate:,.0f} events/s "
        f"(matched {applied['matched']:,}, ignored {applied['ignored']:,}, unmatched {applied['unmatched']:,}); "
        f"CPU ms per 1,000 events: apply {apply_cpu.get('apply', 0) * per_k:.0f}, PostgreSQL "
        f"{apply_cpu.get('postgres', 0) * per_k:.0f}, other (not ours) {apply_cpu.get('other', 0) * per_k:.0f}; "
        f"applied/s ÷ ingested/s = {apply_rate / rate if rate else 0:.2f}"
    )
    checks = {
        "rows == unique events posted": stored == len(unique),
        "every row processed": pending == 0 and applied["processed"] == stored,
        "matched == unique non-engagement events": applied["matched"] == expected_matched,
        "ignored == unique opens/clicks": applied["ignored"] == expected_ignored,
        "nothing unmatched": applied["unmatched"] == 0,
        "no errors": result.errors == 0 and ref.errors == 0,
    }
    for name, passed in checks.items():
        log(f"  check {name}: {'ok' if passed else 'FAILED'}")
    return WebhookResult(
        connections=connections,
        batch=BATCH,
        subtasks=subtasks,
        requests=result.requests,
        events_posted=len(bodies) * BATCH,
        unique_events=len(unique),
        acked_events=acked_events,
        errors=result.errors,
        statuses=result.statuses,
        error_samples=(result.error_samples + server_errors)[:5],
        seconds=result.seconds,
        events_per_s=rate,
        requests_per_s=result.ok / result.seconds,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        max_ms=result.max_ms,
        body_kb=body_kb,
        ref_requests=ref.requests,
        ref_errors=ref.errors,
        ref_seconds=ref.seconds,
        ref_per_s=ref_rate,
        ref_p50_ms=ref.p50_ms,
        ref_p99_ms=ref.p99_ms,
        stored_rows=stored,
        apply_seconds=apply_s,
        apply_per_s=apply_rate,
        applied=applied,
        expected_matched=expected_matched,
        expected_ignored=expected_ignored,
        pending_after=pending,
        cpu=dict(meter.used),
        cpu_wall=meter.wall,
        ref_cpu=dict(ref_meter.used),
        ref_cpu_wall=ref_meter.wall,
        server_rss_mb=rss,
        checks=checks,
        apply_loops=EVENTS_LOOPS,
        apply_batch=EVENTS_BATCH,
        apply_cpu=apply_cpu,
    )


# ---- reporting ----------------------------------------------------------------------------------------


def report_lines(w: dict[str, Any], nproc: int) -> list[str]:
    """The Markdown section of one result (asdict of WebhookResult)."""
    ratio = w["requests_per_s"] / w["ref_per_s"] if w["ref_per_s"] else 0.0
    lines = [
        f"### (d) Webhook ingest (one `edm serve`, SendGrid batches of {w['batch']}, {w['connections']} "
        "keep-alive connections, signed before timing)",
        "",
        "| events posted | unique | requests ok / errors | **events/s (2xx)** | req/s | p50 | **p99** | max "
        "| GET /healthz (same run) | ratio (req/s ÷ healthz req/s) | apply (events job) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {w['events_posted']:,} | {w['unique_events']:,} | {w['requests'] - w['errors']:,} / {w['errors']:,} "
        f"| **{w['events_per_s']:,.0f}** | {w['requests_per_s']:,.0f} | {w['p50_ms']:.1f} ms "
        f"| **{w['p99_ms']:.1f} ms** | {w['max_ms']:.0f} ms | {w['ref_per_s']:,.0f} req/s (p50 "
        f"{w['ref_p50_ms']:.1f} ms, p99 {w['ref_p99_ms']:.1f} ms) | **{ratio:.3f}** "
        f"| **{w['apply_per_s']:,.0f} events/s** ({w['applied']['processed']:,} in {w['apply_seconds']:.1f} s) |",
        "",
    ]
    c, wall = w["cpu"], w["cpu_wall"]
    if c and wall:
        k = 1000 / max(1, w["acked_events"])
        busy = sum(c.values())
        per = {g: c.get(g, 0) * k * 1000 for g in ("server", "postgres", "client", "other")}
        lines.append(
            f"CPU ms per 1,000 events while posting: server {per['server']:.0f}, PostgreSQL "
            f"{per['postgres']:.0f}, load client {per['client']:.0f}, other (not ours) {per['other']:.0f}; "
            f"machine busy {busy:.1f} of "
            f"{wall * nproc:.1f} CPU-s ({100 * busy / (wall * nproc):.0f} %); server process "
            f"{100 * c.get('server', 0) / wall:.0f} % of a core. Server peak RSS {w['server_rss_mb']:.0f} MB;"
            f" batch body {w['body_kb']:.1f} KB."
        )
        lines.append("")
    rc, rwall = w["ref_cpu"], w["ref_cpu_wall"]
    if rc and rwall:
        lines.append(
            f"Reference run: server {1e6 * rc.get('server', 0) / max(1, w['ref_requests']):,.0f} µs CPU per "
            f"/healthz request ({100 * rc.get('server', 0) / rwall:.0f} % of a core), load client "
            f"{100 * rc.get('client', 0) / rwall:.0f} %, other (not ours) "
            f"{100 * rc.get('other', 0) / rwall:.0f} % of a core; per webhook request: server "
            f"{1e6 * c.get('server', 0) / max(1, w['requests']):,.0f} µs CPU."
        )
        lines.append("")
    a = w["applied"]
    checks = "; ".join(f"{name} {'✅' if ok_ else '❌'}" for name, ok_ in w["checks"].items())
    lines.append(
        f"Stored rows {w['stored_rows']:,} (unique events in acknowledged batches {w['unique_events']:,}); "
        f"applied: matched {a['matched']:,} (expected {w['expected_matched']:,}), ignored {a['ignored']:,} "
        f"(SendGrid opens/clicks, expected {w['expected_ignored']:,}), unmatched {a['unmatched']:,}. "
        f"Checks: {checks}."
    )
    lines.append("")
    ac = w.get("apply_cpu") or {}
    if ac:
        k = 1e6 / max(1, a["processed"])
        lines.append(
            f"Applying (the `events` job's code in the bench process, as one worker runs it: "
            f"{w.get('apply_loops', 1)} loop(s), batches of {w.get('apply_batch', 0):,}): CPU ms per 1,000 events "
            f"applied: applying process {ac.get('apply', 0) * k:.0f}, PostgreSQL {ac.get('postgres', 0) * k:.0f}, "
            f"other (not ours) {ac.get('other', 0) * k:.0f}."
        )
        lines.append("")
    met_rate, met_p99 = w["events_per_s"] >= TARGETS["events_per_s"], w["p99_ms"] <= TARGETS["p99_ms"]
    lines.append(
        f"Target (issue 3): ≥ {TARGETS['events_per_s']:,.0f} events/s → {w['events_per_s']:,.0f}: "
        f"{'✅ met' if met_rate else '❌ missed'}; p99 ≤ {TARGETS['p99_ms']:.0f} ms → {w['p99_ms']:.0f} ms: "
        f"{'✅ met' if met_p99 else '❌ missed'}. Applying keeps up with ingest: "
        f"{'yes' if w['apply_per_s'] >= w['events_per_s'] else 'no'} ({w['apply_per_s']:,.0f} vs "
        f"{w['events_per_s']:,.0f} events/s)."
    )
    apply_ratio = w["apply_per_s"] / w["events_per_s"] if w["events_per_s"] else 0.0
    lines.append("")
    lines.append(
        f"Target (issue 17): events applied/s ÷ events ingested/s (same run) ≥ {TARGETS['apply_ratio']:.1f} → "
        f"{apply_ratio:.2f}: {'✅ met' if apply_ratio >= TARGETS['apply_ratio'] else '❌ missed'}."
    )
    if w["error_samples"]:
        lines.append("")
        lines.append("Errors: " + " | ".join(s[:200] for s in w["error_samples"][:3]))
    lines.append("")
    return lines


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    sizes = dict(QUICK if args.quick else FULL)
    if args.events:
        sizes["events"] = args.events
    log(f"fresh database {infra.DB_NAME}; edm db upgrade")
    settings, engine, sm = infra.fresh_database(pool_size=2)
    try:
        result = await run(
            sm,
            settings,
            subtasks=sizes["subtasks"],
            events=sizes["events"],
            ref_requests=sizes["ref_requests"],
            connections=args.connections,
            profile=args.profile,
        )
    finally:
        await engine.dispose()
    return asdict(result)


def main() -> None:
    if sys.argv[1:2] == ["client"]:
        client_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20,000 events over 2,000 SubTasks")
    parser.add_argument("--connections", type=int, default=CONNECTIONS, help="concurrent keep-alive connections")
    parser.add_argument("--events", type=int, help="events to post (multiple of 100)")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the server while the batches are posted, and the applying"
    )
    args = parser.parse_args()
    res = asyncio.run(main_async(args))
    print()
    print("\n".join(report_lines(res, os.cpu_count() or 1)))


if __name__ == "__main__":
    main()
