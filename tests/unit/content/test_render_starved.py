"""The render time limit counts the time a render spends, not the time it waits for the CPU.

On a busy host (or with other threads of the worker holding the GIL) a render can wait seconds for the CPU while
doing almost nothing; failing it would pause the task (`render_limit`) for no fault of its template. The wall-clock
deadline stays the cheap check, and once it passes the rendering thread's CPU time decides. A wait is simulated
here by sleeping inside the render's scope (no CPU used), spending by a busy loop."""

from __future__ import annotations

import contextvars
import datetime as dt
import threading
import time

import pytest

from edm.content import sandbox
from edm.content.render import RenderLimitExceeded, build_context, compile_template, time_limit

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def _ctx() -> dict[str, object]:
    person = {"email": "ann@example.org", "first_name": "Ann"}
    return build_context(contact=person, sender={}, task={"name": "Spring"}, org={}, unsubscribe_url="u", now=NOW)


def _spend(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_a_render_that_waited_for_the_cpu_is_not_timed_out() -> None:
    template = compile_template(subject="Hi {{ contact.first_name }}", html="<p>{{ contact.first_name }}</p>")
    with sandbox.allowance(0.05):
        time.sleep(0.15)  # the wall-clock deadline passes while the thread uses no CPU
        assert template.render(_ctx(), compliance_footer=False).html.startswith("<p>Ann</p>")


def test_a_render_that_spends_its_time_is_still_stopped() -> None:
    with sandbox.allowance(0.05):
        time.sleep(0.1)
        sandbox.checkpoint()  # waited, not spent: goes on
        _spend(0.06)
        with pytest.raises(sandbox.LimitExceeded, match="rendering took too long"):
            sandbox.checkpoint()


def test_a_busy_template_still_hits_the_limit() -> None:
    template = compile_template(
        subject="Hi", html="{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    )
    with sandbox.allowance(0.1), pytest.raises(RenderLimitExceeded) as err:
        template.render(_ctx())
    assert err.value.limit == "time"


def test_a_scope_begun_on_another_thread_keeps_its_wall_clock_deadline() -> None:
    """CPU clocks are per thread: a scope entered on one thread is judged by wall clock on another."""
    caught: list[BaseException] = []
    with sandbox.allowance(0.05):
        time.sleep(0.1)
        context = contextvars.copy_context()

        def elsewhere() -> None:
            try:
                context.run(sandbox.checkpoint)
            except BaseException as exc:  # handed to the test's thread
                caught.append(exc)

        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join()
    assert len(caught) == 1 and isinstance(caught[0], sandbox.LimitExceeded)


def test_a_preview_keeps_its_clock_deadline() -> None:
    """Someone waits for a preview: its scope (`time_limit`) ends on the clock, busy host or not."""
    template = compile_template(subject="Hi", html="<p>{{ contact.first_name }}</p>")
    with time_limit(0.05), pytest.raises(RenderLimitExceeded) as err:
        time.sleep(0.1)
        template.render(_ctx())
    assert err.value.limit == "time"
