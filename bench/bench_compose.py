"""CPU per message of each step a worker runs for one recipient, on the bench template (5 KB HTML, no text
part, personalised greeting and unsubscribe link), in one process, no I/O, each beside a reference timed in
the same run:

    .venv/bin/python -m bench.bench_compose [--n 3000] [--rounds 5]

(also `python -m bench.run_all --only compose`, which writes the figures into bench/RESULTS.md).

Steps: build_context · sign_token (unsubscribe URL) · render (guarded Jinja sandbox: subject + HTML,
preheader, footer, derived text, click-tracking rewrite) · build_message (MIME bytes) · smtp_payload (CRLF +
dot-stuffing); the sum bounds one worker process at 1000 / sum messages per second of one core before any
database or SMTP work. References: the same work done without EDM's guards or shortcuts — copies of the
context's inputs, a bare HMAC, plain `jinja2.Environment` (and Jinja's stock sandbox) on the same sources,
the standard library's `EmailMessage`, the regex pass `smtp_payload` skips. Each step and its reference run
in alternating rounds of N recipients (median µs per recipient of each), so a noisy machine moves both.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import email.policy
import hmac
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from email.message import EmailMessage
from email.utils import format_datetime, formataddr
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from bench.seed import TEMPLATE_HTML, TEMPLATE_SUBJECT
from edm.content.render import build_context, compile_template, html_to_text
from edm.dispatch.message import build_message
from edm.providers import smtp
from edm.security import tokens
from edm.tracking.links import LinkRewriter

KEY = b"bench-secret-key-0123456789abcdef0123456789abcdef"
FULL: dict[str, Any] = {"n": 3000, "rounds": 5}
QUICK: dict[str, Any] = {"n": 500, "rounds": 3}
CLOCK = time.perf_counter  # `--cpu`: time.process_time, which a busy machine's other processes do not inflate
TEXT_PART = (
    "Hello {{ contact.first_name }}\n\nSee what's new: https://shop.example.com/new\n\n"
    "Unsubscribe: {{ unsubscribe_url }}"
)


@dataclass
class Step:
    name: str
    us: float  # median µs per recipient
    reference: str
    ref_us: float
    in_sum: bool  # a step of the worker's path (the others break one of them down)

    @property
    def ratio(self) -> float:
        return self.us / self.ref_us if self.ref_us else 0.0


@dataclass
class ComposeResult:
    n: int
    rounds: int
    html_chars: int
    message_bytes: int
    steps: list[Step]
    sum_us: float
    sum_ref_us: float
    sum_ref: str


def measure_pair(fn: Callable[[int], Any], ref: Callable[[int], Any], n: int, rounds: int) -> tuple[float, float]:
    """Median µs per call of `fn` and of `ref`, timed in alternating rounds of n calls (the order swapped every
    round), so both see the same machine."""
    fn(0), ref(0)
    times: dict[int, list[float]] = {0: [], 1: []}
    for r in range(rounds):
        for which in (0, 1) if r % 2 == 0 else (1, 0):
            call = fn if which == 0 else ref
            start = CLOCK()
            for i in range(n):
                call(i)
            times[which].append((CLOCK() - start) / n * 1e6)
    return statistics.median(times[0]), statistics.median(times[1])


def run(*, n: int, rounds: int) -> ComposeResult:
    template = compile_template(subject=TEMPLATE_SUBJECT, html=TEMPLATE_HTML)
    template_with_text = compile_template(subject=TEMPLATE_SUBJECT, html=TEMPLATE_HTML, text=TEXT_PART)
    now = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.UTC)
    ids = [uuid.uuid4() for _ in range(n)]

    def url(i: int) -> str:
        return f"https://edm.bench.example/u/{tokens.sign_token('unsubscribe', ids[i], key=KEY)}"

    def bare_hmac_url(i: int) -> str:
        payload = bytes((tokens.TOKEN_VERSION, 1)) + ids[i].bytes
        raw = payload + hmac.digest(KEY, payload, "sha256")[: tokens.MAC_BYTES]
        return f"https://edm.bench.example/u/{base64.urlsafe_b64encode(raw).rstrip(b'=').decode('ascii')}"

    urls = [url(i) for i in range(n)]
    contacts: list[dict[str, Any]] = [
        {
            "email": f"person{i}@rcpt1.bench.example",
            "first_name": "Ada",
            "name": f"Ada Person{i}",
            "attributes": {"n": i},
            "tags": [],
        }
        for i in range(n)
    ]
    sender: dict[str, Any] = {"display_name": "Example Shop", "email": "news@mail-a.bench.example"}
    task: dict[str, Any] = {"name": "bench", "scheduled_at": now}
    org: dict[str, Any] = {"name": "", "postal_address": ""}

    def context(i: int) -> dict[str, Any]:
        return build_context(contact=contacts[i], sender=sender, task=task, org=org, unsubscribe_url=urls[i], now=now)

    def context_copies(i: int) -> dict[str, Any]:
        contact = dict(contacts[i])
        contact["attributes"], contact["tags"] = dict(contact["attributes"]), list(contact["tags"])
        return {
            "contact": contact,
            "name": contact["name"],
            "email": contact["email"],
            "sender": dict(sender),
            "task": dict(task),
            "org": dict(org),
            "unsubscribe_url": urls[i],
            "now": now,
        }

    contexts = [context(i) for i in range(n)]
    rendered = [template.render(contexts[i]) for i in range(n)]

    # The references render the same sources: subject, HTML and the text template EDM derives from the HTML.
    derived_text_source = html_to_text(TEMPLATE_HTML)

    def plain_renderer(text_source: str, factory: type[jinja2.Environment]) -> Callable[[int], tuple[str, ...]]:
        html_env, text_env = factory(autoescape=True), factory(autoescape=False)
        parts = (
            text_env.from_string(TEMPLATE_SUBJECT),
            html_env.from_string(TEMPLATE_HTML),
            text_env.from_string(text_source),
        )
        return lambda i: tuple(part.render(contexts[i]) for part in parts)

    plain = plain_renderer(derived_text_source, jinja2.Environment)
    stock_sandbox = plain_renderer(derived_text_source, ImmutableSandboxedEnvironment)
    plain_with_text = plain_renderer(TEXT_PART, jinja2.Environment)

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

    def stdlib_message(i: int) -> bytes:
        msg = EmailMessage()
        msg["Message-ID"] = f"<{ids[i]}@mail-a.bench.example>"
        msg["Date"] = format_datetime(dt.datetime.now(dt.UTC))
        msg["From"] = formataddr(("Example Shop", "news@mail-a.bench.example"))
        msg["To"] = formataddr((f"Ada Person{i}", f"person{i}@rcpt1.bench.example"))
        msg["Reply-To"] = "help@bench.example"
        msg["Subject"] = rendered[i].subject
        msg["List-Unsubscribe"] = f"<{urls[i]}>"
        msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        msg["X-EDM-SubTask-Id"] = str(ids[i])
        msg["Feedback-ID"] = "1:1:edm"
        msg.set_content(rendered[i].text)
        msg.add_alternative(rendered[i].html, subtype="html")
        return msg.as_bytes(policy=email.policy.SMTP)

    mimes = [message(i) for i in range(min(n, 500))]

    def payload(i: int) -> bytes:
        return smtp.smtp_payload(mimes[i % len(mimes)], crlf=True)  # as the adapter calls it (mime_crlf)

    def regex_payload(i: int) -> bytes:
        data = smtp._LINE_ENDINGS_RE.sub(b"\r\n", mimes[i % len(mimes)])
        return smtp._LEADING_DOT_RE.sub(b"..", data) + b".\r\n"

    plan: list[tuple[str, Callable[[int], Any], str, Callable[[int], Any], bool]] = [
        ("build_context", context, "copies of the same inputs (no field list)", context_copies, True),
        (
            "sign_token (unsubscribe URL)",
            url,
            "bare HMAC-SHA256 + base64url of the same payload",
            bare_hmac_url,
            True,
        ),
        (
            "render + click tracking (LinkRewriter, both parts)",
            render_tracked,
            "EDM render without click tracking",
            lambda i: template.render(contexts[i]),
            True,
        ),
        (
            "render without click tracking (guarded sandbox, pipeline)",
            lambda i: template.render(contexts[i]),
            "plain jinja2.Environment, same 3 sources, no guards",
            plain,
            False,
        ),
        (
            "Jinja2's stock ImmutableSandboxedEnvironment, same 3 sources",
            stock_sandbox,
            "plain jinja2.Environment, same 3 sources",
            plain,
            False,
        ),
        (
            "html_to_text(rendered HTML) per recipient (before 0f4ce7e)",
            lambda i: html_to_text(rendered[i].html),
            "EDM render without click tracking (text derived once)",
            lambda i: template.render(contexts[i]),
            False,
        ),
        (
            "render with a text part supplied (no derived text)",
            lambda i: template_with_text.render(contexts[i]),
            "plain jinja2.Environment, same 3 sources",
            plain_with_text,
            False,
        ),
        (
            "build_message (MIME bytes)",
            message,
            "stdlib EmailMessage, same headers/parts, as_bytes",
            stdlib_message,
            True,
        ),
        ("smtp_payload (CRLF, dot-stuffing)", payload, "the regex passes it skips on clean CRLF", regex_payload, True),
    ]
    steps = []
    for name, fn, ref_name, ref, in_sum in plan:
        us, ref_us = measure_pair(fn, ref, n, rounds)
        steps.append(Step(name, us, ref_name, ref_us, in_sum))
    by_name = {s.name: s for s in steps}
    # The sum's reference: the same message composed with unguarded tools (plain Jinja2 instead of the guarded
    # render, so no click tracking either).
    bare = ("build_context", "sign_token (unsubscribe URL)", "build_message (MIME bytes)")
    sum_ref = sum(by_name[k].ref_us for k in bare)
    sum_ref += by_name["render without click tracking (guarded sandbox, pipeline)"].ref_us
    sum_ref += by_name["smtp_payload (CRLF, dot-stuffing)"].ref_us
    return ComposeResult(
        n=n,
        rounds=rounds,
        html_chars=len(TEMPLATE_HTML),
        message_bytes=len(mimes[0]),
        steps=steps,
        sum_us=sum(s.us for s in steps if s.in_sum),
        sum_ref_us=sum_ref,
        sum_ref="context copies + bare HMAC + plain Jinja2 render + stdlib EmailMessage + regex payload",
    )


def report_lines(r: dict[str, Any]) -> list[str]:
    lines = [
        f"### (j) Compose: CPU per recipient, bench template (HTML {r['html_chars']:,} chars, message "
        f"{r['message_bytes']:,} bytes), one process, no I/O",
        "",
        f"Median µs per recipient over {r['rounds']} rounds of {r['n']:,} recipients, each step alternating with "
        "its reference. Rows marked ↳ break the step above down and are not in the sum.",
        "",
        "| step | µs | reference (same run) | µs | ratio |",
        "|---|---|---|---|---|",
    ]
    for s in r["steps"]:
        ratio = s["us"] / s["ref_us"] if s["ref_us"] else 0.0
        name = s["name"] if s["in_sum"] else f"↳ {s['name']}"
        lines.append(f"| {name} | {s['us']:,.1f} | {s['reference']} | {s['ref_us']:,.1f} | {ratio:.2f}× |")
    total, ref = r["sum_us"], r["sum_ref_us"]
    lines.append(
        f"| **sum (one recipient, CPU only)** | **{total:,.1f}** | {r['sum_ref']} | {ref:,.1f} | "
        f"{total / ref if ref else 0:.2f}× |"
    )
    lines += [
        "",
        f"One core composes at most {1e6 / total:,.0f} messages/s this way (the reference path "
        f"{1e6 / ref if ref else 0:,.0f}/s), before any database or SMTP work.",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=FULL["n"], help="recipients per round")
    parser.add_argument("--rounds", type=int, default=FULL["rounds"])
    parser.add_argument(
        "--cpu", action="store_true", help="time with the process's CPU clock instead of the wall (a shared machine)"
    )
    args = parser.parse_args()
    if args.cpu:
        global CLOCK
        CLOCK = time.process_time
    print("\n".join(report_lines(asdict(run(n=args.n, rounds=args.rounds)))))


if __name__ == "__main__":
    main()
