"""Account commands: users, tokens, credit."""

from __future__ import annotations

from typing import Annotated

import typer
from sqlalchemy import select

from edm.cli.common import emit, read_password, run, session_scope
from edm.errors import BadInput
from edm.users.credit import admin_adjust
from edm.users.models import Role, User
from edm.users.service import create_token, create_user, find_user

user_app = typer.Typer(help="User accounts.", no_args_is_help=True)
token_app = typer.Typer(help="Personal API tokens.", no_args_is_help=True)
credit_app = typer.Typer(help="Credit operations (admin).", no_args_is_help=True)


@user_app.command("create")
@run
async def user_create(
    username: Annotated[str, typer.Option(help="3–64 chars a-z 0-9 . _ -")],
    email: Annotated[str, typer.Option()],
    admin: Annotated[bool, typer.Option("--admin", help="create an admin")] = False,
    role: Annotated[str, typer.Option(help="user, read_only or admin")] = "user",
    credit: Annotated[int, typer.Option(help="initial credit")] = 0,
    password_stdin: Annotated[bool, typer.Option("--password-stdin")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Create a user (the password is prompted twice, or read from stdin)."""
    if credit < 0:
        raise BadInput.field("credit", "must be ≥ 0")
    password = read_password(password_stdin)
    async with session_scope() as session:
        user = await create_user(session, username=username, email=email, password=password,
                                 role=Role.ADMIN if admin else role, credit=credit)
        data = {"id": user.id, "username": user.username, "role": user.role, "credit": user.credit_balance}
    emit(data, as_json=as_json, text=f"created {data['role']} {data['username']} (id {data['id']})")


@user_app.command("list")
@run
async def user_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    async with session_scope() as session:
        users = [{"id": u.id, "username": u.username, "email": u.email, "role": u.role, "active": u.is_active,
                  "credit": u.credit_balance} for u in await session.scalars(select(User).order_by(User.id))]
    emit(users, as_json=as_json, text="\n".join(
        f"{u['id']:>5}  {u['username']:<20} {u['role']:<9} credit {u['credit']}" for u in users))


@user_app.command("set-password")
@run
async def user_set_password(
    user: Annotated[str, typer.Argument(help="username, email or id")],
    password_stdin: Annotated[bool, typer.Option("--password-stdin")] = False,
) -> None:
    from edm.security.passwords import check_password_rules, hash_password

    password = read_password(password_stdin)
    async with session_scope() as session:
        row = await find_user(session, user)
        check_password_rules(password, username=row.username)
        row.password_hash = hash_password(password)
    typer.echo("password changed")


@token_app.command("create")
@run
async def token_create(
    user: Annotated[str, typer.Argument(help="username, email or id")],
    name: Annotated[str, typer.Option()],
    scope: Annotated[str, typer.Option(help="read or write")] = "write",
) -> None:
    """Create a personal API token; it is printed once and stored only as a hash."""
    async with session_scope() as session:
        row = await find_user(session, user)
        token, _ = await create_token(session, user_id=row.id, name=name, scope=scope)
    typer.echo(token)


@credit_app.command("adjust")
@run
async def credit_adjust(
    user: Annotated[str, typer.Argument(help="username, email or id")],
    operation: Annotated[str, typer.Argument(help="add, subtract or set")],
    amount: Annotated[int, typer.Argument()],
    reason: Annotated[str, typer.Option()],
) -> None:
    async with session_scope() as session:
        row = await find_user(session, user)
        await admin_adjust(session, user_id=row.id, operation=operation, amount=amount, reason=reason,
                           actor_user_id=None)
        balance = row.credit_balance
    typer.echo(f"{row.username}: balance {balance}")
