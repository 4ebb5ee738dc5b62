"""Messages per second: `build_message(with_mime=True)` vs the stdlib email package, in the same run.

    .venv/bin/python -m bench.bench_message [--n 5000] [--rounds 3]

Both sides build the same message (7+ headers, multipart/alternative text + 5 KB HTML, UTF-8, quoted-
printable, CRLF) for a different recipient each time, as a task does. The figure that matters is the ratio,
since absolute rates drift between machines (docs/performance.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import time
from collections.abc import Callable
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime

from edm.content.render import RenderedContent, html_to_text
from edm.dispatch.message import build_message

UNSUB = "https://edm.example.com/u/AAAAbbbbCCCCddddEEEEffffGGGGhhhhIIIIjjjj"
DATE = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)


def _html_5kb() -> str:
    paragraph = (
        '<p style="margin:0 0 12px;font-family:Arial,sans-serif;color:#333">Spring is here, and so are our '
        'new arrivals. <a href="https://shop.example.com/new?utm_source=edm&amp;utm_medium=email">See what'
        "&#8217;s new</a> and save 20% this week only.</p>\n"
    )
    body = paragraph * (5000 // len(paragraph) + 1)
    return f"<html><body><h1>Hello Ann</h1>\n{body}</body></html>"[:5120]


HTML = _html_5kb()
CONTENT = RenderedContent(subject="Spring sale: 20% off new arrivals", preheader="", html=HTML, text=html_to_text(HTML))


def fast(i: int) -> bytes:
    out = build_message(
        key=f"0d8c0a3e-1f7a-4a5b-9c1e-{i:012d}",
        task_id=12,
        user_id=7,
        domain="mail.example.com",
        from_local="news",
        from_name="Example Shop",
        to_address=f"user{i}@example.org",
        to_name=f"User {i}",
        reply_to="help@example.com",
        content=CONTENT,
        unsubscribe_url=UNSUB,
        with_mime=True,
        date=DATE,
    )
    assert out.mime is not None
    return out.mime


def stdlib(i: int) -> bytes:
    key = f"0d8c0a3e-1f7a-4a5b-9c1e-{i:012d}"
    msg = EmailMessage()
    msg["From"] = Address("Example Shop", "news", "mail.example.com")
    msg["To"] = Address(f"User {i}", f"user{i}", "example.org")
    msg["Reply-To"] = "help@example.com"
    msg["Subject"] = CONTENT.subject
    msg["Date"] = format_datetime(DATE)
    msg["Message-ID"] = f"<{key}@mail.example.com>"
    msg["List-Unsubscribe"] = f"<{UNSUB}>"
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg["X-EDM-SubTask-Id"] = key
    msg["Feedback-ID"] = "12:7:edm"
    msg.set_content(CONTENT.text, cte="quoted-printable")
    msg.add_alternative(CONTENT.html, subtype="html", cte="quoted-printable")
    return msg.as_bytes(policy=policy.SMTP)


def rate(build: Callable[[int], bytes], n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        build(i)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="messages per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median is reported")
    args = parser.parse_args()

    sizes = len(fast(0)), len(stdlib(0))
    rate(fast, 200), rate(stdlib, 200)  # warm caches and imports
    fast_rates, std_rates = [], []
    for _ in range(args.rounds):  # alternate so drift hits both sides alike
        fast_rates.append(rate(fast, args.n))
        std_rates.append(rate(stdlib, args.n))
    f, s = statistics.median(fast_rates), statistics.median(std_rates)
    print(f"HTML {len(HTML)} bytes; message size fast {sizes[0]} B, stdlib {sizes[1]} B")
    print(f"fast path (build_message, with_mime=True): {f:10,.0f} msg/s  ({1e6 / f:6.1f} µs/msg)")
    print(f"stdlib EmailMessage + as_bytes():          {s:10,.0f} msg/s  ({1e6 / s:6.1f} µs/msg)")
    print(f"ratio: {f / s:.1f}x  (median of {args.rounds} rounds of {args.n})")


if __name__ == "__main__":
    main()
