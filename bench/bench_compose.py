"""CPU per message of each step a worker runs for one recipient, on the bench template (5 KB HTML, no text
part, personalised greeting and unsubscribe link), in one process, no I/O:

    .venv/bin/python -m bench.bench_compose [--n 3000]

render (Jinja subject + HTML, preheader, footer, derived text, click-tracking rewrite) · sign_token
(unsubscribe URL) · build_message (MIME bytes) · smtp_payload (CRLF + dot-stuffing) — and the sum, which
bounds one worker process at 1000 / sum messages per second of one core before any database or SMTP work.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

from bench.seed import TEMPLATE_HTML, TEMPLATE_SUBJECT
from edm.content.render import build_context, compile_template, html_to_text
from edm.dispatch.message import build_message
from edm.providers.smtp import smtp_payload
from edm.security.tokens import sign_token
from edm.tracking.links import LinkRewriter

KEY = b"bench-secret-key-0123456789abcdef0123456789abcdef"


def measure(fn: Callable[[int], Any], n: int, rounds: int = 3) -> float:
    """Median µs per call."""
    fn(0)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for i in range(n):
            fn(i)
        times.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000)
    args = parser.parse_args()
    template = compile_template(subject=TEMPLATE_SUBJECT, html=TEMPLATE_HTML)
    now = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.UTC)
    ids = [uuid.uuid4() for _ in range(args.n)]

    def url(i: int) -> str:
        return f"https://edm.bench.example/u/{sign_token('unsubscribe', ids[i], key=KEY)}"

    urls = [url(i) for i in range(args.n)]

    def context(i: int) -> dict[str, Any]:
        return build_context(
            contact={
                "email": f"person{i}@rcpt1.bench.example",
                "first_name": "Ada",
                "name": f"Ada Person{i}",
                "attributes": {"n": i},
                "tags": [],
            },
            sender={"display_name": "Example Shop", "email": "news@mail-a.bench.example"},
            task={"name": "bench", "scheduled_at": now},
            org={"name": "", "postal_address": ""},
            unsubscribe_url=urls[i],
            now=now,
        )

    contexts = [context(i) for i in range(args.n)]
    rendered = [template.render(contexts[i]) for i in range(args.n)]
    html_only = [r.html for r in rendered]

    def render_with_text_supplied(i: int) -> Any:
        # The same template with a text part: Jinja only, no html_to_text.
        return template_with_text.render(contexts[i])

    template_with_text = compile_template(
        subject=TEMPLATE_SUBJECT,
        html=TEMPLATE_HTML,
        text="Hello {{ contact.first_name }}\n\nSee what's new: "
        "https://shop.example.com/new\n\nUnsubscribe: {{ unsubscribe_url }}",
    )

    def message(i: int) -> bytes:
        out = build_message(
            key=str(ids[i]),
            task_id=1,
            user_id=1,
            domain="mail-a.bench.example",
            from_local="news",
            from_name="Example Shop",
            to_address=f"person{i}@rcpt1.bench.example",
            to_name=f"Ada Person{i}",
            reply_to="help@bench.example",
            content=rendered[i],
            unsubscribe_url=urls[i],
            with_mime=True,
        )
        assert out.mime is not None
        return out.mime

    def render_tracked(i: int) -> Any:
        # What a worker runs for a task with click tracking on (the default): links rewritten in both parts.
        rewriter = LinkRewriter(
            task_id=1,
            subtask_id=ids[i],
            key=KEY,
            base_url="https://edm.bench.example",
            keep=lambda link: link.startswith("https://edm.bench.example/u/"),
        )
        return template.render(contexts[i], postprocess=rewriter)

    mimes = [message(i) for i in range(min(args.n, 500))]
    steps = {
        "build_context": measure(context, args.n),
        "sign_token (unsubscribe URL)": measure(url, args.n),
        "render + click tracking (LinkRewriter, both parts)": measure(render_tracked, args.n),
        "  render without click tracking": measure(lambda i: template.render(contexts[i]), args.n),
        "  html_to_text(rendered HTML), per recipient (before 0f4ce7e)": measure(
            lambda i: html_to_text(html_only[i]), args.n
        ),
        "  render with a text part supplied (no html_to_text)": measure(render_with_text_supplied, args.n),
        "build_message (MIME bytes)": measure(message, args.n),
        "smtp_payload (CRLF, dot-stuffing)": measure(lambda i: smtp_payload(mimes[i % len(mimes)]), args.n),
    }
    print(f"bench template: HTML {len(TEMPLATE_HTML)} chars, message {len(mimes[0]):,} bytes")
    for name, us in steps.items():
        print(f"  {name:<55} {us:8.1f} µs")
    total = sum(v for k, v in steps.items() if not k.startswith("  "))
    print(f"  {'sum (one recipient, CPU only)':<55} {total:8.1f} µs → ≤ {1e6 / total:,.0f} msg/s per core")


if __name__ == "__main__":
    main()
