"""Summarise a `py-spy record --format raw --idle` file: where a worker's wall time goes.

    .venv/bin/python -m bench.pyspy_summary var/bench/pyspy-dispatch-1w.txt [--top 25]

Raw lines are `frame;frame;…;leaf COUNT`, a frame `function (path/file.py:line)`. Printed: idle share (the
event loop waiting in select/epoll), self time by leaf function, and inclusive time by EDM function and by
library area (SQLAlchemy, asyncpg, aiosmtplib, jinja2, email, …).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::(?P<line>\d+))?\)$")
IDLE_LEAVES = (
    "select (selectors.py",
    "poll (selectors.py",
    "_run_once (asyncio/base_events.py",
    "Runner.run (asyncio/runners.py",  # uvloop: the loop itself is C, waiting shows as its caller
)
AREAS = [
    ("sqlalchemy", "sqlalchemy/"),
    ("asyncpg", "asyncpg/"),
    ("aiosmtplib", "aiosmtplib/"),
    ("jinja2", "jinja2/"),
    ("email (stdlib)", "email/"),
    ("edm.content.render", "edm/content/render"),
    ("edm.dispatch.message", "edm/dispatch/message"),
    ("edm.dispatch.compose", "edm/dispatch/compose"),
    ("edm.dispatch.queue", "edm/dispatch/queue"),
    ("edm.providers.smtp", "edm/providers/smtp"),
    ("edm.security (tokens)", "edm/security/"),
    ("asyncio", "asyncio/"),
    ("logging", "logging/"),
]


def parse(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def name(frame: str) -> str:
    m = FRAME.match(frame)
    if not m:
        return frame
    file = m.group("file")
    for marker in ("site-packages/", "python3.11/", "src/"):
        if marker in file:
            file = file.split(marker, 1)[1]
    return f"{m.group('func')} ({file})"


def is_idle(frames: list[str]) -> bool:
    leaf = frames[-1]
    return any(marker in leaf for marker in IDLE_LEAVES) or "epoll" in leaf


def summarise(path: Path, top: int = 25) -> str:
    # Helper threads parked on their queues (asyncio's default executor, used for getaddrinfo and the
    # like) are not the event loop: leave them out so the shares are of the loop thread's time.
    stacks = [(f, c) for f, c in parse(path) if not (f[-1].startswith("_worker (") and "thread.py" in f[-1])]
    total = sum(c for _, c in stacks)
    if not total:
        return f"{path}: no samples"
    idle = sum(c for f, c in stacks if is_idle(f))
    busy = total - idle
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    for frames, count in stacks:
        if is_idle(frames):
            continue
        self_time[name(frames[-1])] += count
        seen = set()
        for frame in frames:
            n = name(frame)
            if " (edm/" in n and n not in seen:
                inclusive[n] += count
                seen.add(n)
        hit = set()
        for area, marker in AREAS:
            if any(marker in f for f in frames) and area not in hit:
                areas[area] += count
                hit.add(area)
    out = [
        f"{path.name}: {total} samples, idle (event loop waiting) {100 * idle / total:.0f} %, "
        f"busy {100 * busy / total:.0f} %",
        "",
        "Inclusive share of busy samples by area:",
    ]
    out += [f"  {100 * c / busy:5.1f} %  {a}" for a, c in areas.most_common()]
    out += ["", f"Top {top} EDM functions, inclusive (% of busy):"]
    out += [f"  {100 * c / busy:5.1f} %  {n}" for n, c in inclusive.most_common(top)]
    out += ["", f"Top {top} leaf functions, self (% of busy):"]
    out += [f"  {100 * c / busy:5.1f} %  {n}" for n, c in self_time.most_common(top)]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    print(summarise(args.path, args.top))


if __name__ == "__main__":
    main()
