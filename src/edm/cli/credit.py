"""`edm credit`: admin credit operations and a user's ledger (docs/admin.md#credit).

Same rules as the API: an amount ≥ 0 (> 0 for add and subtract) and a reason; subtracting more than the
balance is refused (exit 2, nothing written). Each operation is one transaction with the user row locked,
one ledger entry, and a `credit.adjust` audit row (actor `cli`).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from edm.cli.common import emit, run, session_scope
from edm.errors import BadInput
from edm.models.users import LedgerKind, QuotaLedgerEntry
from edm.system.service import CLI
from edm.users import credit
from edm.users.credit import LedgerFilter
from edm.users.schemas import LedgerEntryOut
from edm.users.service import find_user

credit_app = typer.Typer(help="Credit operations and ledgers (admin).", no_args_is_help=True)

UserArg = Annotated[str, typer.Argument(help="username, email or id")]
AmountArg = Annotated[int, typer.Argument(help="credits (≥ 0; > 0 for add and subtract)")]
ReasonOpt = Annotated[str, typer.Option("--reason", help="why (required; kept in the ledger and audit log)")]
JsonOpt = Annotated[bool, typer.Option("--json")]


def _entry(entry: QuotaLedgerEntry) -> dict[str, Any]:
    """A ledger entry as the API shows it (`--json`)."""
    return LedgerEntryOut.model_validate(entry).model_dump()


async def _adjust(user: str, operation: str, amount: int, reason: str, as_json: bool) -> None:
    async with session_scope() as session:
        row = await find_user(session, user)
        done = await credit.adjust(
            session, user_id=row.id, operation=operation, amount=amount, reason=reason, actor=CLI
        )
        data = {
            "user_id": row.id,
            "username": row.username,
            "balance": done.balance,
            "entry": _entry(done.entry) if done.entry else None,
        }
    change = f"{done.entry.amount:+d}" if done.entry else "unchanged"
    emit(data, as_json=as_json, text=f"{row.username}: {change}, balance {done.balance}")


@credit_app.command("add")
@run
async def credit_add(user: UserArg, amount: AmountArg, reason: ReasonOpt, as_json: JsonOpt = False) -> None:
    """Grant credits."""
    await _adjust(user, "add", amount, reason, as_json)


@credit_app.command("subtract")
@run
async def credit_subtract(user: UserArg, amount: AmountArg, reason: ReasonOpt, as_json: JsonOpt = False) -> None:
    """Revoke credits (refused when the balance is smaller: no silent floor at zero)."""
    await _adjust(user, "subtract", amount, reason, as_json)


@credit_app.command("set")
@run
async def credit_set(user: UserArg, amount: AmountArg, reason: ReasonOpt, as_json: JsonOpt = False) -> None:
    """Set the balance (the ledger records the difference)."""
    await _adjust(user, "set", amount, reason, as_json)


@credit_app.command("adjust")
@run
async def credit_adjust(
    user: UserArg,
    operation: Annotated[str, typer.Argument(help="add, subtract or set")],
    amount: AmountArg,
    reason: ReasonOpt,
    as_json: JsonOpt = False,
) -> None:
    """add / subtract / set in one command (same as the three commands)."""
    await _adjust(user, operation, amount, reason, as_json)


@credit_app.command("ledger")
@run
async def credit_ledger(
    user: UserArg,
    kind: Annotated[
        list[str] | None, typer.Option(help="grant, revoke, set, reserve, charge, refund (repeatable)")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    as_json: JsonOpt = False,
) -> None:
    """The user's balance and latest ledger entries (newest first)."""
    kinds = tuple(kind or ())
    if any(k not in set(LedgerKind) for k in kinds):
        raise BadInput.field("kind", "one of " + ", ".join(LedgerKind))
    async with session_scope() as session:
        row = await find_user(session, user)
        entries = await credit.list_ledger(session, LedgerFilter(user_id=row.id, kinds=kinds), limit=limit)
        data = {
            "user_id": row.id,
            "username": row.username,
            "balance": row.credit_balance,
            "ledger": [_entry(e) for e in entries],
        }
    lines = [f"{row.username}: balance {row.credit_balance}"]
    lines += [
        f"{e.id:>8}  {e.created_at:%Y-%m-%d %H:%M:%S}Z  {e.kind:<7} {e.amount:>+10d} → {e.balance_after:<10d}"
        f" {'task ' + str(e.task_id) + '  ' if e.task_id else ''}{e.reason}"
        for e in entries
    ]
    emit(data, as_json=as_json, text="\n".join(lines))
