"""Tracking endpoints benchmark (docs/tracking.md#public-endpoints): the open pixel and the click redirect of one
`edm serve`, beside `GET /healthz` of the same server, client and connections in the same run; then the `events` job
applies the recorded hits.

    .venv/bin/python -m bench.bench_tracking [--quick] [--connections 8] [--seconds 15] [--profile]

(also `python -m bench.run_all --only tracking`, which writes the figures into bench/RESULTS.md).

1. A fresh database (`EDM_BENCH_DB`, default `edm_bench_tracking` here): a user, N contacts, a `fake` service,
   a task whose N SubTasks were `sent` two hours ago (inserted set-based, like bench/seed.py), and the task's
   tracked links (ids from `tracking.links.link_id`, as the composer stores them before sending).
2. Valid tokens for every SubTask, signed before timing with the server's key: one open token per SubTask
   and one click token per SubTask (a link of its task picked at random).
3. One `edm serve` process (uvicorn, as in production). The load client is `wrk` (C, closed loop, keep-alive;
   `apt-get install wrk` if missing) with a Lua script that walks the token list, so each request names a
   different SubTask; a browser User-Agent. Three timed runs of the same length: `GET /healthz`, `GET
   /t/o/{token}.gif`, `GET /t/c/{token}`. A 302 is a click's success; wrk counts ≥ 400 answers as errors.
4. The `events` job's code (`events.apply.drain`) applies what was recorded: hits/s of applying, and the
   classification (sent two hours ago, a browser, spread over many SubTasks: expected human).
5. Checks: stored events ≥ answered requests (wrk stops mid-request: at most `connections` more per run),
   no errors, every stored hit matched.

Target (issue 4): ≥ 3,000 req/s per process for each tracking endpoint.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from typing import Any

if __name__ == "__main__" and "EDM_BENCH_DB" not in os.environ:
    os.environ["EDM_BENCH_DB"] = "edm_bench_tracking"  # never the shared edm_bench / edm_test databases

from bench import infra  # noqa: E402
from bench.bench_webhooks import Server  # noqa: E402
from bench.infra import log  # noqa: E402

RUN_DIR = infra.ROOT / "var" / "bench"
FULL: dict[str, Any] = {"subtasks": 20_000, "seconds": 15.0}
QUICK: dict[str, Any] = {"subtasks": 2_000, "seconds": 5.0}
CONNECTIONS = 8
LINKS = [
    f"https://shop.example.com/spring/{name}?utm_campaign=spring"
    for name in ("new-arrivals", "sale", "shoes", "bags", "account")
]
BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"
TARGETS = {"req_per_s": 3000.0}

# wrk's Lua: each thread walks the path list from its own offset; `done` prints one JSON line.
WRK_SCRIPT = r"""
local paths = {}
local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  for line in io.lines(args[1]) do paths[#paths + 1] = line end
  counter = id * 7919
  wrk.headers["User-Agent"] = args[2]
end

function request()
  counter = counter + 1
  return wrk.format("GET", paths[(counter % #paths) + 1])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\n{"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


@dataclass
class LoadRun:
    """One wrk run against one endpoint."""

    name: str
    requests: int
    seconds: float
    errors: int  # ≥ 400 answers and socket errors
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    server_cpu_s: float
    client_cpu_s: float
    postgres_cpu_s: float
    machine_busy_s: float

    @property
    def per_s(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


@dataclass
class TrackingResult:
    connections: int
    subtasks: int
    links: int
    seconds_per_run: float
    healthz: dict[str, Any]
    opens: dict[str, Any]
    clicks: dict[str, Any]
    stored_opens: int
    stored_clicks: int
    apply_seconds: float
    apply_per_s: float
    applied: dict[str, int]
    human_opens: int
    machine_opens: int
    human_clicks: int
    machine_clicks: int
    server_rss_mb: float
    server_errors: list[str]
    checks: dict[str, bool]


# ---- set-up -------------------------------------------------------------------------------------------


async def set_up(sm: Any, settings: Any, *, subtasks: int) -> dict[str, Any]:
    """A user with `subtasks` contacts, a `fake` service, a task whose SubTasks were all sent through it two
    hours ago, and its tracked links. Returns ids, the SubTasks' public ids and the link ids."""
    import datetime as dt

    from sqlalchemy import text

    from bench import seed
    from edm.clock import utc_now
    from edm.content import service as content
    from edm.db.session import unit_of_work
    from edm.email_services import service as services
    from edm.security.crypto import Vault
    from edm.tasks import service as tasks
    from edm.tracking.links import link_id
    from edm.users.service import create_user

    vault = Vault.from_settings(settings)
    async with unit_of_work(sm) as session:
        user = await create_user(
            session,
            username="tracking",
            email="tracking@bench.example",
            password="bench password long enough",
            credit=1_000_000_000,
        )
        sender = await content.create_sender(
            session, user_id=user.id, values={"local_part": "tr-news", "display_name": "Example Shop"}
        )
        template = await content.create_template(
            session,
            user_id=user.id,
            values={"name": "tracking", "subject": "Hello", "html": "".join(f'<a href="{u}">x</a>' for u in LINKS)},
        )
        fake = await services.create_service(
            session,
            vault,
            values={
                "name": "tr-fake",
                "provider": "fake",
                "domain": "fake.bench.example",
                "sending_interval_seconds": 0,
                "max_concurrency": 4,
                "daily_quota": 1_000_000_000,
                "options": {},
            },
            credentials={},
            fake_allowed=True,
        )
        await services.map_user(session, user_id=user.id, service_id=fake.id)
        task = await tasks.create_task(
            session,
            user_id=user.id,
            actor="bench",
            values={
                "name": "tracking",
                "sender_id": sender.id,
                "recipient_rule": {"type": "all_contacts"},
                "templates": [{"template_id": template.id, "weight": 1}],
            },
        )
        ids = {"user_id": user.id, "fake_id": fake.id, "task_id": task.id}
    sent_at = utc_now() - dt.timedelta(hours=2)  # well outside the machine windows (docs/tracking.md)
    async with unit_of_work(sm) as session:
        first = await session.scalar(text("SELECT coalesce(max(id), 0) FROM contacts"))
        await seed.insert_contacts(session, user_id=ids["user_id"], count=subtasks)
        await session.execute(
            text("""
            INSERT INTO subtasks (public_id, task_id, user_id, contact_id, recipient_email, seq, send_state,
                                  charged, attempts, retryable_failures, service_id, allocated_at, sent_at,
                                  provider_message_id, delivery_state, open_count, machine_open_count,
                                  click_count, machine_click_count)
            SELECT gen_random_uuid(), :task, :user, c.id, c.email, row_number() OVER (ORDER BY c.id), 'sent',
                   true, 1, 0, :svc, :at, :at, 'bench-tr-' || c.id, 'none', 0, 0, 0, 0
            FROM contacts c WHERE c.user_id = :user AND c.id > :first
        """),
            {"task": ids["task_id"], "user": ids["user_id"], "svc": ids["fake_id"], "at": sent_at, "first": first},
        )
        link_ids = [link_id(ids["task_id"], url) for url in LINKS]
        await session.execute(
            text("INSERT INTO tracked_links (id, task_id, url, created_at) VALUES (:id, :task, :url, :at)"),
            [{"id": i, "task": ids["task_id"], "url": u, "at": sent_at} for i, u in zip(link_ids, LINKS, strict=True)],
        )
        rows = (
            (
                await session.execute(
                    text("SELECT public_id FROM subtasks WHERE task_id = :t ORDER BY id"), {"t": ids["task_id"]}
                )
            )
            .scalars()
            .all()
        )
    async with sm() as session:
        for table in ("contacts", "subtasks", "tracked_links"):
            await session.execute(text(f"ANALYZE {table}"))
        await session.commit()
    ids["public_ids"] = list(rows)
    ids["link_ids"] = link_ids
    return ids


def token_paths(
    settings: Any, public_ids: list[Any], link_ids: list[int], *, seed: int = 5
) -> tuple[list[str], list[str]]:
    """(open paths, click paths): one of each per SubTask, in a shuffled order."""
    from edm.security.tokens import sign_token

    rng = random.Random(seed)
    key = settings.signing_key
    opens = [f"/t/o/{sign_token('open', pid, key=key)}.gif" for pid in public_ids]
    clicks = [f"/t/c/{sign_token('click', pid, key=key, link_id=rng.choice(link_ids))}" for pid in public_ids]
    rng.shuffle(opens)
    rng.shuffle(clicks)
    return opens, clicks


# ---- load ---------------------------------------------------------------------------------------------


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    log("wrk missing: installing the wrk package")
    if os.geteuid() != 0:
        raise SystemExit("wrk is missing and we are not root: `apt-get install -y wrk` first")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], env=env, stdout=subprocess.DEVNULL).returncode:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, env=env, stdout=subprocess.DEVNULL)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("the wrk package is installed but `wrk` was not found")
    return found


def run_wrk(
    wrk: str, name: str, port: int, paths: list[str], *, connections: int, seconds: float, server_pid: int
) -> LoadRun:
    """`wrk -t1 -cC -dS` over `paths`; CPU of the server, PostgreSQL and wrk itself measured around it."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    script, path_file = RUN_DIR / "tracking.lua", RUN_DIR / f"tracking-{name}.paths"
    script.write_text(WRK_SCRIPT)
    path_file.write_text("\n".join(paths) + "\n")
    meter = infra.CpuMeter({"server": [server_pid]}).start()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        [
            wrk,
            "-t1",
            f"-c{connections}",
            f"-d{seconds:.0f}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}",
            "--",
            str(path_file),
            BROWSER,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    meter.stop()
    path_file.unlink(missing_ok=True)
    data = json.loads(next(line for line in reversed(out.splitlines()) if line.startswith("{")))
    client_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    errors = data["connect"] + data["read"] + data["write"] + data["status"] + data["timeout"]
    return LoadRun(
        name=name,
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        errors=errors,
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        server_cpu_s=meter.used.get("server", 0.0),
        client_cpu_s=client_cpu,
        postgres_cpu_s=meter.used.get("postgres", 0.0),
        machine_busy_s=meter.machine_busy,
    )


def _describe(run: LoadRun, ref: LoadRun | None = None) -> str:
    ratio = f", {run.per_s / ref.per_s:.2f} × /healthz" if ref and ref.per_s else ""
    return (
        f"{run.per_s:,.0f} req/s{ratio}, p50 {run.p50_ms:.1f} ms, p99 {run.p99_ms:.1f} ms, max "
        f"{run.max_ms:.0f} ms ({run.requests:,} answered, {run.errors:,} errors); server "
        f"{1e6 * run.server_cpu_s / max(1, run.requests):,.0f} µs CPU per request, PostgreSQL "
        f"{1e6 * run.postgres_cpu_s / max(1, run.requests):,.0f} µs"
    )


# ---- the run ------------------------------------------------------------------------------------------


async def run(
    sm: Any, settings: Any, *, subtasks: int, seconds: float, connections: int = CONNECTIONS, profile: bool = False
) -> TrackingResult:
    from sqlalchemy import text

    from edm.events import apply as event_apply

    wrk = ensure_wrk()
    t0 = time.perf_counter()
    world = await set_up(sm, settings, subtasks=subtasks)
    opens, clicks = token_paths(settings, world["public_ids"], world["link_ids"])
    log(
        f"tracking: {subtasks:,} sent SubTasks, {len(LINKS)} tracked links, {2 * subtasks:,} tokens "
        f"({time.perf_counter() - t0:.1f} s)"
    )
    server = Server(RUN_DIR / "tracking").start()
    spy = None
    try:
        log(
            f"  edm serve pid {server.pid} on 127.0.0.1:{server.port}; wrk, {connections} connections, "
            f"{seconds:.0f} s per endpoint"
        )
        common = {"connections": connections, "server_pid": server.pid}
        run_wrk(wrk, "warmup", server.port, ["/healthz", opens[-1], clicks[-1]], seconds=2, **common)
        healthz = run_wrk(wrk, "healthz", server.port, ["/healthz"], seconds=seconds, **common)
        log(f"  GET /healthz: {_describe(healthz)}")
        if profile:
            spy = infra.PySpy(server.pid, RUN_DIR / "pyspy-tracking-opens.txt").start()
        warm_events = await stored_hits(sm)  # the warm-up's hits are not the runs'
        open_run = run_wrk(wrk, "opens", server.port, opens[:-1], seconds=seconds, **common)
        if spy is not None:
            log(f"  py-spy written to {spy.stop()}")
            spy = infra.PySpy(server.pid, RUN_DIR / "pyspy-tracking-clicks.txt").start()
        log(f"  GET /t/o/{{token}}.gif: {_describe(open_run, healthz)}")
        click_run = run_wrk(wrk, "clicks", server.port, clicks[:-1], seconds=seconds, **common)
        if spy is not None:
            log(f"  py-spy written to {spy.stop()}")
            spy = None
        log(f"  GET /t/c/{{token}}: {_describe(click_run, healthz)}")
        rss = infra.vm_hwm_mb(server.pid) or 0.0
        server_errors = server.errors()
    finally:
        if spy is not None:
            spy.stop()
        server.stop()
    counts = await stored_hits(sm)
    stored_opens = counts.get("opened", 0) - warm_events.get("opened", 0)
    stored_clicks = counts.get("clicked", 0) - warm_events.get("clicked", 0)
    log(f"  stored {stored_opens:,} opens, {stored_clicks:,} clicks; applying")
    started = time.perf_counter()
    applied_counts = await event_apply.drain(sm, simulated_matches_any=settings.fake_provider_allowed, batch=1000)
    apply_s = time.perf_counter() - started
    applied = {name: getattr(applied_counts, name) for name in ("processed", "matched", "unmatched", "ignored")}
    async with sm() as session:
        sums = (
            await session.execute(
                text(
                    "SELECT coalesce(sum(open_count), 0), coalesce(sum(machine_open_count), 0),"
                    " coalesce(sum(click_count), 0),"
                    " coalesce(sum(machine_click_count), 0) FROM subtasks WHERE task_id = :t"
                ),
                {"t": world["task_id"]},
            )
        ).one()
    human_opens, machine_opens, human_clicks, machine_clicks = (int(v) for v in sums)
    apply_rate = applied["processed"] / apply_s if apply_s else 0.0
    log(
        f"  applied {applied['processed']:,} hits in {apply_s:.1f} s = {apply_rate:,.0f} hits/s; opens human "
        f"{human_opens:,} / machine {machine_opens:,}, clicks human {human_clicks:,} / machine {machine_clicks:,}"
    )
    slack = connections + 1  # wrk stops with requests in flight: the server may record them unanswered
    checks = {
        "opens stored ≈ answered": open_run.requests <= stored_opens <= open_run.requests + slack,
        "clicks stored ≈ answered": click_run.requests <= stored_clicks <= click_run.requests + slack,
        "no errors": open_run.errors == click_run.errors == healthz.errors == 0 and not server_errors,
        "every hit matched": applied["matched"] == applied["processed"] == sum(counts.values()),
        "counted on the SubTasks": human_opens + machine_opens == counts.get("opened", 0)
        and human_clicks + machine_clicks == counts.get("clicked", 0),
    }
    for name, passed in checks.items():
        log(f"  check {name}: {'ok' if passed else 'FAILED'}")
    return TrackingResult(
        connections=connections,
        subtasks=subtasks,
        links=len(LINKS),
        seconds_per_run=seconds,
        healthz=_as_dict(healthz),
        opens=_as_dict(open_run),
        clicks=_as_dict(click_run),
        stored_opens=stored_opens,
        stored_clicks=stored_clicks,
        apply_seconds=apply_s,
        apply_per_s=apply_rate,
        applied=applied,
        human_opens=human_opens,
        machine_opens=machine_opens,
        human_clicks=human_clicks,
        machine_clicks=machine_clicks,
        server_rss_mb=rss,
        server_errors=server_errors[:5],
        checks=checks,
    )


async def stored_hits(sm: Any) -> dict[str, int]:
    """Tracking events stored so far, by type."""
    from sqlalchemy import text

    async with sm() as session:
        rows = await session.execute(
            text("SELECT event_type, count(*) FROM events WHERE source = 'tracking' GROUP BY event_type")
        )
        return {kind: int(n) for kind, n in rows.all()}


def _as_dict(run: LoadRun) -> dict[str, Any]:
    return {**asdict(run), "per_s": run.per_s}


# ---- reporting ----------------------------------------------------------------------------------------


def report_lines(t: dict[str, Any], nproc: int) -> list[str]:
    """The Markdown section of one result (asdict of TrackingResult)."""
    ref = t["healthz"]
    lines = [
        f"### (e) Tracking endpoints (one `edm serve`, wrk with {t['connections']} keep-alive connections, "
        f"{t['seconds_per_run']:.0f} s per endpoint, tokens of {t['subtasks']:,} SubTasks)",
        "",
        "| endpoint | answered | errors | **req/s** | p50 | p90 | **p99** | max | ratio to /healthz "
        "| server CPU / req | PostgreSQL CPU / req | machine busy |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, run in (
        ("GET /healthz (reference)", ref),
        ("GET /t/o/{token}.gif", t["opens"]),
        ("GET /t/c/{token} (302)", t["clicks"]),
    ):
        busy = 100 * run["machine_busy_s"] / (run["seconds"] * nproc) if run["seconds"] else 0.0
        lines.append(
            f"| {label} | {run['requests']:,} | {run['errors']:,} | **{run['per_s']:,.0f}** "
            f"| {run['p50_ms']:.1f} ms | {run['p90_ms']:.1f} ms | **{run['p99_ms']:.1f} ms** "
            f"| {run['max_ms']:.0f} ms | {run['per_s'] / ref['per_s']:.2f} "
            f"| {1e6 * run['server_cpu_s'] / max(1, run['requests']):,.0f} µs "
            f"| {1e6 * run['postgres_cpu_s'] / max(1, run['requests']):,.0f} µs | {busy:.0f} % |"
        )
    lines.append("")
    checks = "; ".join(f"{name} {'✅' if passed else '❌'}" for name, passed in t["checks"].items())
    lines.append(
        f"Stored {t['stored_opens']:,} opens and {t['stored_clicks']:,} clicks; the `events` job applied "
        f"{t['applied']['processed']:,} hits in {t['apply_seconds']:.1f} s "
        f"(**{t['apply_per_s']:,.0f} hits/s**): opens human {t['human_opens']:,} / machine "
        f"{t['machine_opens']:,}, clicks human {t['human_clicks']:,} / machine {t['machine_clicks']:,}. "
        f"Server peak RSS {t['server_rss_mb']:.0f} MB. Checks: {checks}."
    )
    lines.append("")
    met = {name: t[key]["per_s"] >= TARGETS["req_per_s"] for name, key in (("opens", "opens"), ("clicks", "clicks"))}
    lines.append(
        f"Target (issue 4): ≥ {TARGETS['req_per_s']:,.0f} req/s per process → opens "
        f"{t['opens']['per_s']:,.0f}: {'✅ met' if met['opens'] else '❌ missed'}; clicks "
        f"{t['clicks']['per_s']:,.0f}: {'✅ met' if met['clicks'] else '❌ missed'}."
    )
    if t["server_errors"]:
        lines.append("")
        lines.append("Server errors: " + " | ".join(s[:200] for s in t["server_errors"][:3]))
    lines.append("")
    return lines


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    sizes = dict(QUICK if args.quick else FULL)
    if args.seconds:
        sizes["seconds"] = args.seconds
    log(f"fresh database {infra.DB_NAME}; edm db upgrade")
    settings, engine, sm = infra.fresh_database(pool_size=2)
    try:
        result = await run(
            sm,
            settings,
            subtasks=sizes["subtasks"],
            seconds=sizes["seconds"],
            connections=args.connections,
            profile=args.profile,
        )
    finally:
        await engine.dispose()
    return asdict(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 SubTasks, 5 s per endpoint")
    parser.add_argument("--connections", type=int, default=CONNECTIONS, help="concurrent keep-alive connections")
    parser.add_argument("--seconds", type=float, help="seconds per endpoint")
    parser.add_argument("--profile", action="store_true", help="py-spy the server during the open and click runs")
    args = parser.parse_args()
    res = asyncio.run(main_async(args))
    print()
    print("\n".join(report_lines(res, os.cpu_count() or 1)))
    (RUN_DIR / f"results-tracking-{'quick' if args.quick else 'full'}.json").write_text(
        json.dumps(res, indent=2, default=str)
    )


if __name__ == "__main__":
    main()
