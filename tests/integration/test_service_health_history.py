"""A service's health history (docs/providers.md#the-health-view): attempts, accept rate, average latency and errors
by class per hour over 24 hours and per six hours over 7 days, checked against send attempts the test writes (another
service's and ones older than the window left out) on SQLite (aggregated from the rows) and PostgreSQL (the trigger-
kept `service_attempt_hours`, after inserts, an update, a delete and a fold), through the service function, the API
(a bad window is a 422), the console's service page, `edm service health --window` and `edm stats verify`."""

from __future__ import annotations

import asyncio
import datetime as dt
import html
import json
from typing import Any

from alembic import command
from sqlalchemy import delete, func, select, update

from edm.clock import utc_now
from edm.db.session import unit_of_work
from edm.email_services import history
from edm.migrations.migrate import alembic_config, upgrade
from edm.models.email_services import ServiceAttemptHour
from edm.models.tasks import SendAttempt
from edm.tasks.stats import fold_counter_stripes
from tests.helpers import api_client, console_log_in, expect_error, run_cli
from tests.integration.test_service_health import _admin, _attempt, _world

ADMIN = "/api/v1/admin/services"


def _hours_ago(now: dt.datetime, hours: int, minutes: int = 0) -> dt.datetime:
    """A moment `hours` whole hours before `now`'s hour, `minutes` into it (so it never crosses into another hour)."""
    start = now.replace(minute=0, second=0, microsecond=0)
    return start - dt.timedelta(hours=hours) + dt.timedelta(minutes=minutes)


async def _write_attempts(sessionmaker: Any, alpha: int, beta: int, subtasks: list[int], now: dt.datetime) -> None:
    rows = [
        # this hour: 2 accepted, a transient failure, a refusal without a duration; and one of the other service
        (alpha, "accepted", 100, _hours_ago(now, 0)),
        (alpha, "accepted", 100, _hours_ago(now, 0)),
        (alpha, "transient", 300, _hours_ago(now, 0)),
        (alpha, "permanent", None, _hours_ago(now, 0)),
        (beta, "accepted", 5, _hours_ago(now, 0)),
        # three hours before: a throttle and an acceptance
        (alpha, "throttled", 50, _hours_ago(now, 3, 20)),
        (alpha, "accepted", 200, _hours_ago(now, 3, 40)),
        # the first hour of the 24 h window, and the one before it (in the 7 d window only)
        (alpha, "auth_config", 70, _hours_ago(now, 23, 5)),
        (alpha, "accepted", 10, _hours_ago(now, 24, 30)),
        # older than any window
        (alpha, "maybe_sent", 9999, _hours_ago(now, 24 * 8)),
    ]
    async with unit_of_work(sessionmaker) as session:
        for i, (service, outcome, duration, at) in enumerate(rows):
            row = _attempt(subtasks[i % len(subtasks)], service, outcome, duration or 0, at)
            row.duration_ms = duration
            session.add(row)


def _errors(**counts: int) -> dict[str, int]:
    return {c: counts.get(c, 0) for c in history.ERROR_CLASSES}


async def test_the_history_matches_the_rows_and_leaves_out_older_attempts(
    db_url: str, engine: Any, sessionmaker: Any
) -> None:
    alpha, beta, subtasks = await _world(db_url, sessionmaker)
    now = utc_now()
    await _write_attempts(sessionmaker, alpha, beta, subtasks, now)

    async with sessionmaker() as session:
        day = await history.health_history(session, alpha, window="24h", now=now)
        week = await history.health_history(session, alpha, window="7d", now=now)
    assert len(day.points) == 24 and day.step_hours == 1
    assert day.points[-1].start == _hours_ago(now, 0) and day.points[0].start == _hours_ago(now, 23)
    assert day.end == _hours_ago(now, -1)
    current, three_ago = day.points[-1], day.points[-4]
    assert (current.attempts, current.accepted, current.accept_rate) == (4, 2, 0.5)
    assert current.latency_ms_avg == 166.7, "(100 + 100 + 300) ÷ 3: the refusal had no duration"
    assert current.errors == _errors(transient=1, permanent=1)
    assert (three_ago.attempts, three_ago.errors) == (2, _errors(throttled=1))
    assert day.points[0].errors == _errors(auth_config=1)
    assert sum(p.attempts for p in day.points) == day.totals.attempts == 7, "the 24 h window excludes the 25th hour"
    assert day.totals.accepted == 3 and day.totals.errors == _errors(
        transient=1, permanent=1, throttled=1, auth_config=1
    )
    assert day.totals.latency_ms_avg == round((100 + 100 + 300 + 50 + 200 + 70) / 6, 1)

    assert len(week.points) == 28 and week.step_hours == 6
    assert week.points[-1].start.hour % 6 == 0 and week.points[-1].start <= now < week.end
    assert week.totals.attempts == 8, "the hour before the day counts in the week; 8 days ago does not"
    assert week.totals.errors["maybe_sent"] == 0

    async with sessionmaker() as session:
        other = await history.health_history(session, beta, window="24h", now=now)
    assert other.totals.attempts == 1 and other.totals.accepted == 1


async def test_counters_follow_updates_deletes_and_the_fold(db_url: str, engine: Any, sessionmaker: Any) -> None:
    alpha, beta, subtasks = await _world(db_url, sessionmaker)
    now = utc_now()
    await _write_attempts(sessionmaker, alpha, beta, subtasks, now)
    async with unit_of_work(sessionmaker) as session:
        transient = await session.scalar(select(SendAttempt.id).where(SendAttempt.outcome == "transient"))
        await session.execute(update(SendAttempt).where(SendAttempt.id == transient).values(outcome="accepted"))
        await session.execute(delete(SendAttempt).where(SendAttempt.outcome == "throttled"))
    async with sessionmaker() as session:
        day = await history.health_history(session, alpha, window="24h", now=now)
        assert await history.verify(session) == [
            {"service_id": s, "ok": True, "differences": {}} for s in sorted((alpha, beta))
        ]
    assert (day.totals.attempts, day.totals.accepted) == (6, 4)
    assert day.totals.errors == _errors(permanent=1, auth_config=1)

    async with unit_of_work(sessionmaker) as session:
        await fold_counter_stripes(session)
    async with sessionmaker() as session:
        assert (await history.health_history(session, alpha, window="24h", now=now)) == day
        stripes = set(await session.scalars(select(ServiceAttemptHour.stripe)))
        counted = await session.scalar(select(ServiceAttemptHour.n).limit(1))
    if db_url.startswith("postgresql"):
        assert stripes == {0} and counted, "folded into stripe 0"
    else:
        assert stripes == set(), "SQLite reads the rows: the table stays empty"


async def test_the_api_serves_the_history_and_refuses_a_bad_window(db_url: str, engine: Any, sessionmaker: Any) -> None:
    alpha, beta, subtasks = await _world(db_url, sessionmaker)
    admin = await _admin(sessionmaker)
    now = utc_now()
    await _write_attempts(sessionmaker, alpha, beta, subtasks, now)
    async with api_client(db_url, engine) as client:
        r = await client.get(f"{ADMIN}/{alpha}/health/history", headers=admin.headers)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["window"] == "24h" and len(body["points"]) == 24 and body["totals"]["attempts"] == 7
        week = (await client.get(f"{ADMIN}/{alpha}/health/history?window=7d", headers=admin.headers)).json()
        assert week["step_hours"] == 6 and week["totals"]["attempts"] == 8
        bad = await client.get(f"{ADMIN}/{alpha}/health/history?window=30d", headers=admin.headers)
        assert "window" in json.dumps(expect_error(bad, 422, "validation_error"))
        missing = await client.get(f"{ADMIN}/999999/health/history", headers=admin.headers)
        expect_error(missing, 404, "not_found")

        # The console's service page: the totals of the window chosen; an unknown window shows the last 24 hours.
        await console_log_in(client, admin)
        page = (await client.get(f"/admin/services/{alpha}?window=7d")).text
        assert 'id="history-attempts">8<' in page and 'aria-current="page">Last 7 days<' in page
        assert 'id="chart-attempts-data"' in page and 'id="chart-latency-data"' in page
        fallback = await client.get(f"/admin/services/{alpha}?window=30d")
        assert fallback.status_code == 200 and 'id="history-attempts">7<' in fallback.text
        errors = html.unescape(fallback.text.split('id="history-errors"', 1)[1].split("</table>", 1)[0])
        assert '<tr data-class="throttled"><td>Throttled</td><td class="num">1</td>' in errors


async def test_the_cli_prints_the_history_and_stats_verify_checks_it(db_url: str, sessionmaker: Any) -> None:
    alpha, beta, subtasks = await _world(db_url, sessionmaker)
    await _write_attempts(sessionmaker, alpha, beta, subtasks, utc_now())
    shown = run_cli(db_url, "service", "health", "alpha", "--window", "7d", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["totals"]["attempts"] == 8
    text = run_cli(db_url, "service", "health", "alpha", "--window", "24h")
    assert text.returncode == 0 and "total" in text.stdout and "7 attempts" in text.stdout
    refused = run_cli(db_url, "service", "health", "alpha", "--window", "1y")
    assert refused.returncode != 0 and "window" in refused.stderr
    verified = run_cli(db_url, "stats", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"service {alpha}: ok" in verified.stdout and f"service {beta}: ok" in verified.stdout


async def test_the_migration_counts_the_attempts_already_there(db_url: str, engine: Any, sessionmaker: Any) -> None:
    """0012 on a database that has attempts (an upgrade of a live deployment): backfilled on PostgreSQL, so the
    history equals the rows; the downgrade puts the 0007 trigger back and the upgrade is repeatable."""
    alpha, beta, subtasks = await _world(db_url, sessionmaker)
    now = utc_now()
    await engine.dispose()  # the migration runs on connections of its own
    await asyncio.to_thread(command.downgrade, alembic_config(db_url), "0011")
    try:
        await _write_attempts(sessionmaker, alpha, beta, subtasks, now)  # counted by the 0007 trigger only
    finally:
        await engine.dispose()
        await asyncio.to_thread(upgrade, db_url)
    async with sessionmaker() as session:
        day = await history.health_history(session, alpha, window="24h", now=now)
        assert all(r["ok"] for r in await history.verify(session))
        counters = await session.scalar(select(func.count()).select_from(ServiceAttemptHour))
    assert day.totals.attempts == 7 and day.totals.accepted == 3
    # alpha's 8 (hour, outcome) groups, the one older than any window included, and beta's one: all in stripe 0
    assert counters == (9 if db_url.startswith("postgresql") else 0)
