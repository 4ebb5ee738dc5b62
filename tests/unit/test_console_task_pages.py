"""The pure parts of the campaign pages: which template of an A/B test leads, and the send rate."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from typing import Any

from edm.console.task_detail import _leader, _rate_per_minute


def _row(task_template_id: int, sent: int, click: float | None, open_human: float | None) -> dict[str, Any]:
    return {"task_template_id": task_template_id, "sent": sent, "rates": {"click": click, "open_human": open_human}}


def test_the_leader_has_the_best_click_rate_then_open_rate_once_two_templates_sent() -> None:
    assert _leader([_row(1, 10, 0.1, 0.5), _row(2, 10, 0.2, 0.3)]) == 2
    assert _leader([_row(1, 10, 0.2, 0.5), _row(2, 10, 0.2, 0.3)]) == 1, "a tie on clicks: the opens decide"
    assert _leader([_row(1, 10, 0.2, 0.5), _row(2, 0, None, None)]) is None, "only one template sent"
    assert _leader([_row(1, 10, 0.0, 0.0), _row(2, 10, 0.0, 0.0)]) is None, "nobody opened: no leader"
    assert _leader([_row(1, 10, 0.3, 0.5)]) is None


def test_the_send_rate_counts_from_the_first_send_to_the_end_or_now() -> None:
    start = dt.datetime(2026, 1, 1, 9, 0, tzinfo=dt.UTC)
    running = SimpleNamespace(first_sent_at=start, completed_at=None, cancelled_at=None)
    assert _rate_per_minute(running, 600, start + dt.timedelta(minutes=10)) == 60.0
    done = SimpleNamespace(first_sent_at=start, completed_at=start + dt.timedelta(minutes=2), cancelled_at=None)
    assert _rate_per_minute(done, 600, start + dt.timedelta(hours=5)) == 300.0
    assert _rate_per_minute(SimpleNamespace(first_sent_at=None), 0, start) is None
