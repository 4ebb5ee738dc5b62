"""Every line EDM logs is named by a dotted event (docs/operations.md#logs): each logging call in `src/edm` passes a
literal such as "dispatch.reclaimed" as its message and its values as `extra` fields, never %-arguments (a value
pasted into the message would escape the field redaction and address masking of edm.observability)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "edm"
LEVELS = {"debug", "info", "warning", "error", "exception", "critical"}
DOTTED = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")
PREFIX = re.compile(r"[a-z][a-z0-9_]*\.")  # "alert." + kind
CALL = re.compile(r"\w*log(?:ger)?\.(?:debug|info|warning|error|exception|critical)\(|log_failure\(")


def _calls() -> list[tuple[str, ast.Call, ast.expr | None]]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if "migrations" in path.parts:
            continue  # a migration never changes once released; the one that logs uses alembic's logger
        if path.name == "availability.py" and path.parent.name == "db":
            continue  # log_failure itself: it logs the event its callers name (checked at each call below)
        text = path.read_text()
        if not CALL.search(text):
            continue  # parsing only the files that log keeps this test fast
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.Call):
                continue
            where = f"{path.relative_to(SRC)}:{node.lineno}"
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr in LEVELS and isinstance(func.value, ast.Name):
                if func.value.id.endswith("log") or func.value.id == "logger":
                    found.append((where, node, node.args[0] if node.args else None))
            elif isinstance(func, ast.Name) and func.id == "log_failure":
                found.append((where, node, node.args[1] if len(node.args) > 1 else None))
    return found


def test_every_logging_call_names_a_dotted_event_and_passes_no_arguments_into_the_message() -> None:
    calls = _calls()
    assert len(calls) > 40  # the walk finds the calls it is meant to check
    bad = []
    for where, node, message in calls:
        literal = (
            isinstance(message, ast.Constant) and isinstance(message.value, str) and DOTTED.fullmatch(message.value)
        )
        prefixed = (
            isinstance(message, ast.BinOp)
            and isinstance(message.left, ast.Constant)
            and isinstance(message.left.value, str)
            and PREFIX.fullmatch(message.left.value)
        )
        is_log_failure = isinstance(node.func, ast.Name)
        extra_args = len(node.args) > (3 if is_log_failure else 1)  # log_failure(logger, event, exc, **fields)
        if not (literal or prefixed) or extra_args:
            bad.append(f"{where}: {ast.unparse(node)[:100]}")
    assert bad == []
