"""CPU per message of the SMTP adapter alone, with and without PIPELINING, against Postfix's smtp-sink:

    .venv/bin/python -m bench.bench_smtp [--messages 4000] [--concurrency 50] [--rounds 3]

Two sinks: one as it is (it offers PIPELINING, RFC 2920), one started with `-p` (it does not, so the adapter
sends MAIL, RCPT and DATA one by one, as it did before pipelining). The same `SmtpAdapter` sends the same
messages to each (the bench template rendered with click tracking and built by `build_message`, ~10 KB), with
`--concurrency` transactions in flight, in alternating rounds; printed: process CPU µs per message (median
of the rounds) and msg/s, beside `smtp-source -d -s 1` against the pipelining sink in the same run. No
database; CPU per message is the figure to compare on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import time
import uuid

from bench import infra
from bench.seed import TEMPLATE_HTML, TEMPLATE_SUBJECT
from edm.content.render import build_context, compile_template
from edm.dispatch.message import build_message
from edm.providers.base import OutboundMessage, Outcome, ServiceConfig
from edm.providers.smtp import SmtpAdapter
from edm.security import tokens
from edm.tracking.links import LinkRewriter

KEY = b"bench-secret-key-0123456789abcdef0123456789abcdef"
BASE = "https://edm.bench.example"


def messages(count: int) -> list[OutboundMessage]:
    template = compile_template(subject=TEMPLATE_SUBJECT, html=TEMPLATE_HTML)
    now = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.UTC)
    out = []
    for i in range(count):
        public_id = uuid.uuid4()
        url = f"{BASE}/u/{tokens.sign_token('unsubscribe', public_id, key=KEY)}"
        contact = {"email": f"person{i}@rcpt1.bench.example", "first_name": "Ada", "name": f"Ada Person{i}"}
        context = build_context(
            contact=contact,
            sender={"display_name": "Example Shop", "email": "news@mail-a.bench.example"},
            task={"name": "bench"},
            org={},
            unsubscribe_url=url,
            now=now,
        )
        rewriter = LinkRewriter(
            task_id=1, subtask_id=public_id, key=KEY, base_url=BASE, keep=lambda u: u.startswith(f"{BASE}/u/")
        )
        out.append(
            build_message(
                key=str(public_id),
                task_id=1,
                user_id=1,
                domain="mail-a.bench.example",
                from_local="news",
                from_name="Example Shop",
                to_address=contact["email"],
                to_name=contact["name"],
                reply_to=None,
                content=template.render(context, postprocess=rewriter),
                unsubscribe_url=url,
                with_mime=True,
            )
        )
    return out


def config(port: int, concurrency: int) -> ServiceConfig:
    return ServiceConfig(
        service_id=1,
        provider="smtp",
        domain="mail-a.bench.example",
        credentials={},
        options={"host": "127.0.0.1", "port": port, "security": "none", "helo_name": "bench.example"},
        max_concurrency=concurrency,
        request_timeout_seconds=30.0,
    )


async def one_round(port: int, batch: list[OutboundMessage], total: int, concurrency: int) -> tuple[float, float]:
    """(CPU µs per message, msg/s) of `total` sends with `concurrency` loops, connections opened beforehand."""
    adapter = SmtpAdapter(config(port, concurrency))
    await asyncio.gather(*(adapter.send([batch[i]]) for i in range(concurrency)))  # dial the pool first
    per_loop = total // concurrency
    failed = 0

    async def loop(offset: int) -> None:
        nonlocal failed
        for i in range(per_loop):
            [result] = await adapter.send([batch[(offset + i * concurrency) % len(batch)]])
            failed += result.outcome is not Outcome.ACCEPTED

    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(loop(k) for k in range(concurrency)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    await adapter.aclose()
    if failed:
        raise RuntimeError(f"{failed} sends were not accepted")
    sent = per_loop * concurrency
    return 1e6 * cpu / sent, sent / wall


async def run(args: argparse.Namespace) -> str:
    sink_bin, source_bin = infra.ensure_postfix_tools()
    pipelining = infra.Sink(sink_bin).start()
    one_by_one = infra.Sink(sink_bin, options=("-p",)).start()
    try:
        batch = messages(500)
        results: dict[str, list[tuple[float, float]]] = {"pipelined": [], "one by one": []}
        for r in range(args.rounds):
            order = [("pipelined", pipelining), ("one by one", one_by_one)]
            for name, sink in order if r % 2 == 0 else order[::-1]:
                results[name].append(await one_round(sink.port, batch, args.messages, args.concurrency))
        reference = infra.smtp_source(source_bin, pipelining.port, messages=args.messages, sessions=1)
    finally:
        pipelining.stop()
        one_by_one.stop()
    size = len(batch[0].mime or b"")
    lines = [
        f"SmtpAdapter → smtp-sink: {args.messages:,} messages of {size:,} bytes per round, {args.concurrency} in "
        f"flight, {args.rounds} rounds (median); load average {', '.join(f'{x:.1f}' for x in _load())}",
        "",
        "| commands | CPU µs per message | msg/s | smtp-source -d -s 1 (same run) |",
        "|---|---|---|---|",
    ]
    for name, rows in results.items():
        cpu = statistics.median(r[0] for r in rows)
        rate = statistics.median(r[1] for r in rows)
        lines.append(f"| {name} | {cpu:,.0f} | {rate:,.0f} | {reference.rate:,.0f} |")
    return "\n".join(lines)


def _load() -> tuple[float, float, float]:
    import os

    return os.getloadavg()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    print(asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
